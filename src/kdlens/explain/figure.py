"""Figures of explanations: one row per image; the image, then each method's maps of each model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from kdlens.explain.api import explain
from kdlens.explain.base import TargetName, resolve_target
from kdlens.io import atomic_write

_CELL_INCHES = 1.6


def write_explanations(
    out: str | Path,
    models: Sequence[nn.Module],
    model_names: Sequence[str],
    sources: Sequence[str],
    x: Tensor,
    labels: Tensor,
    methods: Sequence[str],
    target: TargetName,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    class_names: list[str],
) -> tuple[Path, Path]:
    """Explain ``x`` with every model (the first being the teacher) and method; write
    ``out/explanations.png`` (:func:`save_explanation_grid`) and ``out/explanations.npz``: the raw
    maps ``maps_<method>`` (M, N, H, W), ``images`` (un-normalised with ``mean``/``std``, in [0, 1]),
    ``labels``, ``predictions`` and ``targets`` (M, N), ``models`` (``sources``), ``class_names``.

    ``target``: ``label`` (the true class), ``pred`` (each model's own top-1) or ``teacher`` (the
    teacher's top-1 for every model, as e²KD compares them)."""
    out = Path(out)
    with torch.no_grad():
        predictions = torch.stack([model(x).argmax(1) for model in models])
    targets = torch.stack([resolve_target(model, x, target, labels=labels, teacher=models[0]) for model in models])
    maps = {
        method: torch.stack([explain(model, x, t, method)[:, 0] for model, t in zip(models, targets)]).cpu().numpy()
        for method in methods
    }
    images = (x.cpu() * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]).clamp(0, 1).numpy()
    png = save_explanation_grid(out / "explanations.png", images, labels.cpu().numpy(), class_names, list(model_names),
                                predictions.cpu().numpy(), maps)
    arrays = {"images": images, "labels": labels.cpu().numpy(), "predictions": predictions.cpu().numpy(),
              "targets": targets.cpu().numpy(), "models": np.array(sources), "class_names": np.array(class_names),
              **{f"maps_{method}": value for method, value in maps.items()}}
    npz = atomic_write(out / "explanations.npz", lambda f: np.savez_compressed(f, **arrays))
    return png, npz


def save_explanation_grid(
    path: str | Path,
    images: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    model_names: list[str],
    predictions: np.ndarray,
    maps: dict[str, np.ndarray],
) -> Path:
    """Write the grid as a PNG (Agg, no display needed).

    ``images`` (N, C, H, W) in [0, 1]; ``labels`` (N,); ``predictions`` (M, N) for the M models;
    ``maps[method]`` (M, N, H, W). Each method has one colour scale for all its maps (so models
    compare by colour), symmetric around 0 for signed maps, up to the 99.5th percentile of |map|
    so that a few extreme pixels do not wash out the rest.
    """
    rows, columns = len(images), 1 + len(maps) * len(model_names)
    figure = Figure(figsize=(_CELL_INCHES * columns + 1.0 * len(maps), _CELL_INCHES * rows + 0.6), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    for row in range(rows):
        axes[row, 0].imshow(_displayable(images[row]), cmap="gray" if images.shape[1] < 3 else None, vmin=0, vmax=1)
        axes[row, 0].set_title(f"true: {class_names[labels[row]]}", fontsize=8)
    for index, (method, method_maps) in enumerate(maps.items()):
        limit = max(float(np.percentile(np.abs(method_maps), 99.5)), 1e-12)
        signed = bool((method_maps < 0).any())
        style = dict(cmap="RdBu_r", vmin=-limit, vmax=limit) if signed else dict(cmap="inferno", vmin=0.0, vmax=limit)
        method_axes = axes[:, 1 + index * len(model_names): 1 + (index + 1) * len(model_names)]
        for model, model_name in enumerate(model_names):
            for row in range(rows):
                image = method_axes[row, model].imshow(method_maps[model, row], **style)
                heading = f"{method} · {model_name}\n" if row == 0 else ""
                method_axes[row, model].set_title(f"{heading}pred: {class_names[predictions[model, row]]}", fontsize=8)
        figure.colorbar(image, ax=method_axes.ravel().tolist(), shrink=0.6, label=method)
    for axis in axes.ravel():
        axis.set_xticks([])
        axis.set_yticks([])
    return atomic_write(path, lambda f: figure.savefig(f, format="png", dpi=100))


def _displayable(image: np.ndarray) -> np.ndarray:
    """(C, H, W) -> what imshow shows: RGB from the first three channels, else the first in grey."""
    return image[0] if image.shape[0] < 3 else np.moveaxis(image[:3], 0, -1)
