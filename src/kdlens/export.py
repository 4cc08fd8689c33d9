"""Export a trained model (never the loss terms' connectors) to ONNX, checked against onnxruntime,
with a model card beside it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdlens.io import atomic_write_text, write_json
from kdlens.runs.checkpoints import load_model

ONNX_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """The exported model does not reproduce the PyTorch model."""


@dataclass
class ExportResult:
    onnx_path: Path
    card_path: Path
    max_abs_difference: float


def export_onnx(checkpoint: str | Path, out: str | Path | None = None, check_batch: int = 8) -> ExportResult:
    """Write ``out`` (default: the checkpoint's name with .onnx) with a dynamic batch axis, run it in
    onnxruntime on a random batch, and fail unless logits match PyTorch's within 1e-4."""
    import onnxruntime

    checkpoint = Path(checkpoint)
    out = Path(out) if out else checkpoint.with_suffix(".onnx")
    model, info = load_model(checkpoint)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(check_batch, info["in_channels"], *info["image_size"], generator=generator)
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
    with torch.no_grad():
        difference = float(np.abs(onnx_logits - model(images).numpy()).max())
    if difference > ONNX_TOLERANCE:
        out.unlink()
        raise ExportError(f"ONNX logits differ from PyTorch's by {difference:.2e} (> {ONNX_TOLERANCE}); nothing was written")
    card = model_card(checkpoint, info, out, difference)
    card_path = out.with_suffix(".card.json")
    write_json(card_path, card)
    atomic_write_text(out.with_suffix(".card.md"), card_markdown(card))
    return ExportResult(out, card_path, difference)


def model_card(checkpoint: Path, info: dict[str, Any], onnx_path: Path, difference: float) -> dict[str, Any]:
    """Architecture, classes, input normalisation and the accuracy the run measured."""
    config = info.get("config") or {}  # imported checkpoints record their data at most
    return {
        "model": info["model"],
        "onnx": onnx_path.name,
        "input": {
            "name": "images",
            "shape": ["batch", info["in_channels"], *info["image_size"]],
            "normalisation": {"mean": info["mean"], "std": info["std"], "note": "x = (pixel/255 - mean) / std"},
        },
        "output": {"name": "logits", "classes": info["class_names"]},
        "trained_on": config.get("data"),
        "teacher": config.get("teacher"),
        "losses": config.get("losses"),
        "weights_source": info.get("source"),
        "test_accuracy": _run_accuracy(checkpoint),
        "source_checkpoint": str(checkpoint),
        "onnxruntime_max_abs_difference": difference,
    }


def _run_accuracy(checkpoint: Path) -> dict[str, Any] | None:
    """The test report of this checkpoint from its run's results.json (best.ckpt -> "best")."""
    results_file = checkpoint.parent.parent / "results.json"
    if not results_file.is_file():
        return None
    results = json.loads(results_file.read_text())
    return results.get(checkpoint.stem, {}).get("test")


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
