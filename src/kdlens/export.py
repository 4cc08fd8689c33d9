"""Export a trained model (never the loss terms' connectors) to ONNX, checked against onnxruntime,
with a model card beside it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdlens.io import atomic_write_text, write_json
from kdlens.runs.checkpoints import CheckpointInfo, load_model
from kdlens.runs.layout import RunFolder, RunFolderError

ONNX_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """The exported model does not reproduce the PyTorch model."""


@dataclass
class ExportResult:
    onnx_path: Path
    card_path: Path
    max_abs_difference: float


def export_onnx(
    checkpoint: str | Path, out: str | Path | None = None, check_batch: int = 8, device: str | torch.device | None = None
) -> ExportResult:
    """Write ``out`` (default: the checkpoint's name with .onnx) with a dynamic batch axis, run it in
    onnxruntime on a random batch, and fail unless logits match PyTorch's within 1e-4. The graph is
    traced on the CPU (the file does not depend on a device); PyTorch's reference logits are
    computed on ``device`` (:func:`~kdlens.device.resolve_device`), without TF32."""
    import onnxruntime

    from kdlens.device import resolve_device

    checkpoint = Path(checkpoint)
    out = Path(out) if out else checkpoint.with_suffix(".onnx")
    model, info = load_model(checkpoint)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(check_batch, info.in_channels, *info.image_size, generator=generator)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        (images,),
        str(out),
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
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
    if difference > ONNX_TOLERANCE:
        out.unlink()
        raise ExportError(f"ONNX logits differ from PyTorch's by {difference:.2e} (> {ONNX_TOLERANCE}); nothing was written")
    card = model_card(checkpoint, info, out, difference)
    card_path = out.with_suffix(".card.json")
    write_json(card_path, card)
    atomic_write_text(out.with_suffix(".card.md"), card_markdown(card))
    return ExportResult(out, card_path, difference)


def model_card(checkpoint: Path, info: CheckpointInfo, onnx_path: Path, difference: float) -> dict[str, Any]:
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
        f"- onnxruntime vs PyTorch max |Δlogit|: {card['onnxruntime_max_abs_difference']:.2e}",
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
