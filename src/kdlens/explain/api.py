"""The functional front: ``explain`` one batch, ``explain_dataset`` a whole split."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from kdlens.explain.base import EXPLAINERS, Explainer, ExplainError, LayerExplainer, Target, eval_mode, resolve_target

TTA_BRIGHTNESS = (0.9, 1.0, 1.1)


def make_explainer(model: nn.Module, method: str, layer: str | None = None) -> Explainer:
    """The registered explainer ``method`` bound to ``model`` (and ``layer`` for the CAM family)."""
    cls = EXPLAINERS[method]
    if issubclass(cls, LayerExplainer):
        return cls(model, layer)
    if layer is not None:
        raise ExplainError(f"'{method}' attributes to the input and takes no layer; layers are for the CAM family")
    return cls(model)


def explain(
    model: nn.Module,
    x: Tensor,
    target: Target,
    method: str = "gradcam",
    *,
    layer: str | None = None,
    create_graph: bool = False,
    chunk_size: int | None = None,
    tta: bool = False,
    **options: Any,
) -> Tensor:
    """Explanation maps (B, 1, H, W) of ``model`` on the batch ``x``, on ``x``'s device.

    ``target``: per-sample class indices (LongTensor (B,)), an int, ``"pred"`` (the model's top-1)
    or another model (its top-1, e.g. the teacher's). ``method``: a name in ``EXPLAINERS``.
    ``layer``: module path for the CAM family (default: see :class:`LayerExplainer`).
    ``create_graph``: keep the graph so a loss on the maps trains the model (CAM family, B-cos).
    ``chunk_size``: most expanded inputs per forward for methods that expand the batch.
    ``tta``: average over horizontal flip × brightness {0.9, 1, 1.1} (pytorch-grad-cam's
    ``aug_smooth``: the normalised input is multiplied, maps are un-flipped before averaging); the
    target is resolved once, on the un-augmented input. ``options``: the method's own keyword
    options (``EXPLAINERS[method].option_names()``).

    The model is used in the mode it is in (call ``model.eval()`` unless explaining inside a
    training step: train-mode batch norm mixes samples and updates its running statistics).
    """
    explainer = make_explainer(model, method, layer)
    return attribute_with_tta(explainer, x, target, tta, create_graph=create_graph, chunk_size=chunk_size, **options)


def attribute_with_tta(explainer: Explainer, x: Tensor, target: Target, tta: bool, **kwargs: Any) -> Tensor:
    """``explainer.attribute``, averaged over the test-time augmentations if ``tta``."""
    if not tta:
        return explainer.attribute(x, target, **kwargs)
    target = resolve_target(explainer.model, x, target)
    maps = []
    for flip in (False, True):
        for brightness in TTA_BRIGHTNESS:
            augmented = (x.flip(-1) if flip else x) * brightness
            augmented_maps = explainer.attribute(augmented, target, **kwargs)
            maps.append(augmented_maps.flip(-1) if flip else augmented_maps)
    return torch.stack(maps).mean(0)


def explain_dataset(
    model: nn.Module,
    dataset: Dataset,
    method: str = "gradcam",
    *,
    target: Target = "pred",
    layer: str | None = None,
    tta: bool = False,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    **options: Any,
) -> Tensor:
    """Maps (N, 1, H, W) (float32, CPU) for every sample of a kdlens split, row i being the sample
    whose ``index`` is i. ``target``: as in :func:`~kdlens.explain.base.resolve_target`, e.g.
    ``"label"`` (the true class), ``"pred"`` (the model's top-1) or another model (its top-1),
    resolved per batch on the un-augmented images. The model runs in eval mode (restored afterwards) on ``device``
    (default: where its parameters are); ``layer``, ``tta`` and ``options`` (``chunk_size`` and the
    method's options) are as in :func:`explain`.

    Pass splits without augmentation (frozen teacher explanations are computed once on
    un-augmented images, REFERENCE §1), e.g. built with ``augment=False``.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    maps: Tensor | None = None
    filled = torch.zeros(len(dataset), dtype=torch.bool)
    explainer = make_explainer(model, method, layer)
    with eval_mode(model):
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            x = batch["image"].to(device)
            batch_target = resolve_target(model, x, target, labels=batch["label"].to(device))
            batch_maps = attribute_with_tta(explainer, x, batch_target, tta, **options).detach().float().cpu()
            if maps is None:
                maps = torch.empty(len(dataset), *batch_maps.shape[1:])
            maps[batch["index"]] = batch_maps
            filled[batch["index"]] = True
    if maps is None or not bool(filled.all()):
        raise ExplainError("the dataset's 'index' values do not cover 0..N-1 exactly; pass a kdlens split")
    return maps
