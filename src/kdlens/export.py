"""Export a trained model (never the loss terms' connectors) to ONNX, checked against onnxruntime,
with a model card beside it."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdlens.errors import OutputError, UserError
from kdlens.io import atomic_write_text, write_json
from kdlens.runs.checkpoints import CheckpointInfo, load_model
from kdlens.runs.layout import RunFolder, RunFolderError

ONNX_TOLERANCE = 1e-4
"""Relative to the logits' scale: the export passes when max |Δlogit| ≤ ONNX_TOLERANCE · max(1, max |logit|)
(float32 rounding grows with the logits' size, so an absolute bound fails large-logit models)."""
TOLERANCE_RULE = "max |Δlogit| ≤ 1e-4 · max(1, max |logit|)"


class ExportError(UserError, RuntimeError):
    """The exported model does not reproduce the PyTorch model; nothing was written."""


@dataclass
class ExportResult:
    onnx_path: Path
    card_path: Path
    max_abs_difference: float
    tolerance: float = ONNX_TOLERANCE
    """The bound the difference was checked against: ONNX_TOLERANCE · max(1, max |logit|)."""


def onnx_tolerance(reference: np.ndarray) -> float:
    """The largest max |Δlogit| an export may show against PyTorch's ``reference`` logits."""
    scale = float(np.abs(reference).max()) if reference.size else 0.0
    return ONNX_TOLERANCE * max(1.0, scale)


def export_onnx(
    checkpoint: str | Path, out: str | Path | None = None, check_batch: int = 8, device: str | torch.device | None = None
) -> ExportResult:
    """Write ``out`` (default: the checkpoint's name with .onnx) with a dynamic batch axis, run it in
    onnxruntime on a random batch, and fail unless logits match PyTorch's: max |Δlogit| ≤ 1e-4 ·
    max(1, max |logit|). The graph is traced on the CPU (the file does not depend on a device);
    PyTorch's reference logits are computed on ``device`` (:func:`~kdlens.device.resolve_device`),
    without TF32. The ONNX file and its weights file (``<out>.data``) are written into a temporary
    folder beside ``out`` and moved in place only once verified: on any failure nothing is left
    and an earlier export at ``out`` is untouched (:class:`ExportError`, :class:`OutputError`)."""
    checkpoint = Path(checkpoint)
    out = Path(out) if out else checkpoint.with_suffix(".onnx")
    model, info = load_model(checkpoint)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(check_batch, info.in_channels, *info.image_size, generator=generator)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as err:
        raise OutputError(out, err) from None
    try:
        difference, tolerance = _export_and_check(model, images, staging / out.name, out, device)
        _move_in_place(staging / out.name, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    card = model_card(checkpoint, info, out, difference, tolerance)
    card_path = out.with_suffix(".card.json")
    write_json(card_path, card)
    atomic_write_text(out.with_suffix(".card.md"), card_markdown(card))
    return ExportResult(out, card_path, difference, tolerance)


def _export_and_check(
    model: torch.nn.Module, images: torch.Tensor, staged: Path, out: Path, device: str | torch.device | None
) -> tuple[float, float]:
    """Export ``model`` to ``staged`` and compare onnxruntime's logits with PyTorch's; the largest
    difference and the tolerance it passed. An ExportError on a mismatch, an OutputError when the
    file system refuses the files."""
    import onnxruntime

    from kdlens.device import resolve_device
    from kdlens.verbosity import is_verbose, library_output_hidden

    # torch.onnx prints its steps ("[torch.onnx] Obtain model graph ...") and the exporters log and
    # warn as they go: hidden unless `kdlens --verbose`.
    try:
        with library_output_hidden(("torch.onnx", "torch.export", "onnxscript", "onnx_ir")):
            torch.onnx.export(
                model,
                (images,),
                str(staged),
                input_names=["images"],
                output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                verbose=None if is_verbose() else False,
            )
    except OSError as err:
        raise OutputError(out, err) from None
    session = onnxruntime.InferenceSession(str(staged), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    reference_device = resolve_device(device)
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            reference = model.to(reference_device)(images.to(reference_device)).cpu().numpy()
        finally:
            torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
            model.cpu()
        difference = float(np.abs(onnx_logits - reference).max())
    tolerance = onnx_tolerance(reference)
    if not difference <= tolerance:  # NaN fails too
        raise ExportError(
            f"the ONNX model's logits differ from PyTorch's by {difference:.2e}, more than the tolerance "
            f"{tolerance:.2e} ({TOLERANCE_RULE}, max |logit| {float(np.abs(reference).max()):.3g}); nothing was "
            f"written to {out}. Try again with --device cpu (reference logits on the CPU); if it persists, the "
            "architecture uses an operation ONNX does not export faithfully: use the checkpoint with PyTorch"
        )
    return difference, tolerance


def _move_in_place(staged: Path, out: Path) -> None:
    """Move the verified export (and its external weights file, if any) over ``out``: the weights
    first, so that ``out`` never names weights it was not exported with; a stale weights file of
    an earlier export is removed."""
    data, staged_data = out.with_name(out.name + ".data"), staged.with_name(staged.name + ".data")
    try:
        for file in (staged_data, staged):
            if file.exists():
                with open(file, "rb") as handle:
                    os.fsync(handle.fileno())
        if staged_data.exists():
            os.replace(staged_data, data)
        else:
            data.unlink(missing_ok=True)
        os.replace(staged, out)
    except OSError as err:
        raise OutputError(out, err) from None


def model_card(
    checkpoint: Path, info: CheckpointInfo, onnx_path: Path, difference: float, tolerance: float = ONNX_TOLERANCE
) -> dict[str, Any]:
    """Architecture, classes, input normalisation and the accuracy the run measured."""
    config = info.config or {}  # imported checkpoints record their data at most
    return {
        "model": info.model,
        "onnx": onnx_path.name,
        "input": {
            "name": "images",
            "shape": ["batch", info.in_channels, *info.image_size],
            "normalisation": {"mean": info.mean, "std": info.std, "note": "x = (pixel/255 - mean) / std"},
        },
        "output": {"name": "logits", "classes": info.class_names},
        "trained_on": config.get("data"),
        "teacher": config.get("teacher"),
        "losses": config.get("losses"),
        "weights_source": info.source,
        "test_accuracy": _run_accuracy(checkpoint),
        "source_checkpoint": str(checkpoint),
        "onnxruntime_max_abs_difference": difference,
        "onnxruntime_tolerance": tolerance,
        "onnxruntime_check": TOLERANCE_RULE,
    }


def _run_accuracy(checkpoint: Path) -> dict[str, Any] | None:
    """The test report of this checkpoint from its run's results (best.ckpt -> best); None for a
    checkpoint outside a finished run."""
    found = RunFolder.of_checkpoint(checkpoint)
    if found is None or not found[0].finished:
        return None
    folder, which = found
    try:
        return folder.read_results().checkpoint(which).test or None
    except RunFolderError:
        return None


def card_markdown(card: dict[str, Any]) -> str:
    accuracy = card["test_accuracy"]
    lines = [
        f"# {card['model']} ({card['onnx']})",
        "",
        f"- input `images`: {card['input']['shape']}, normalised with mean {card['input']['normalisation']['mean']} "
        f"and std {card['input']['normalisation']['std']}",
        f"- output `logits`: {len(card['output']['classes'])} classes: {', '.join(map(str, card['output']['classes'][:20]))}"
        + (" …" if len(card["output"]["classes"]) > 20 else ""),
        _provenance(card),
        f"- test top-1: {accuracy['top1']:.4f}" if accuracy else "- test accuracy: not recorded",
        f"- onnxruntime vs PyTorch max |Δlogit|: {card['onnxruntime_max_abs_difference']:.2e} "
        f"(tolerance {card.get('onnxruntime_tolerance', ONNX_TOLERANCE):.2e}: {TOLERANCE_RULE}, on a random batch)",
    ]
    return "\n".join(lines) + "\n"


def _provenance(card: dict[str, Any]) -> str:
    """Where the weights come from: a kdlens run (data, teacher, loss terms) or an import."""
    if card["losses"] is None:
        source = card["weights_source"] or {}
        origin = f"weights {source['weights']}" if "weights" in source else f"{source.get('format', 'a')} checkpoint {source.get('file', '')}"
        data = f" for `{card['trained_on']['name']}`" if card["trained_on"] else ""
        return f"- imported from {origin}{data}"
    return (
        f"- trained on `{card['trained_on']['name']}`"
        + (f", distilled from `{card['teacher']['name']}`" if card["teacher"] else "")
        + f" with {', '.join(loss['name'] for loss in card['losses'])}"
    )
