"""Optimisers and learning-rate schedules of the recipes in REFERENCE §2."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from kdlens.config import CosineSchedule, RecipeConfig, StepSchedule

_NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def parameter_groups(modules: Iterable[nn.Module], recipe: RecipeConfig, backbone: nn.Module | None = None,
                     head: str | None = None) -> list[dict]:
    """All trainable parameters; with ``no_decay_norm_bias`` normalisation weights and biases go to
    a group without weight decay (decaying them only shrinks scales the next layer undoes). With
    ``recipe.backbone_lr_scale``, the parameters of ``backbone`` outside its submodule ``head`` go
    to groups whose ``lr_scale`` :func:`build_optimizer` applies."""
    head_params = set(backbone.get_submodule(head).parameters()) if backbone is not None and head else set()
    backbone_params = set(backbone.parameters()) - head_params if backbone is not None and recipe.backbone_lr_scale else set()
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for module in modules:
        for sub in module.modules():
            for name, param in sub.named_parameters(recurse=False):
                if not param.requires_grad:
                    continue
                exempt = recipe.no_decay_norm_bias and (isinstance(sub, _NORM_LAYERS) or name == "bias")
                groups.setdefault((param in backbone_params, exempt), []).append(param)
    result = []
    for (in_backbone, exempt), params in sorted(groups.items()):
        group: dict = {"params": params}
        if exempt:
            group["weight_decay"] = 0.0
        if in_backbone:
            group["lr_scale"] = recipe.backbone_lr_scale
        result.append(group)
    return result or [{"params": []}]


def build_optimizer(groups: list[dict], recipe: RecipeConfig, global_batch: int | None = None) -> torch.optim.Optimizer:
    opt = recipe.optimizer
    lr = scaled_lr(recipe, global_batch)
    groups = [{**{k: v for k, v in g.items() if k != "lr_scale"}, "lr": lr * g["lr_scale"]} if "lr_scale" in g else g for g in groups]
    if opt.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=opt.momentum, weight_decay=opt.weight_decay, nesterov=opt.nesterov)
    optimizer_class = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "radam": torch.optim.RAdam}[opt.name]
    return optimizer_class(groups, lr=lr, weight_decay=opt.weight_decay)


def scaled_lr(recipe: RecipeConfig, global_batch: int | None) -> float:
    """The configured lr, scaled linearly with the global batch when ``lr_reference_batch`` is set."""
    if recipe.lr_reference_batch is None or global_batch is None:
        return recipe.optimizer.lr
    return recipe.optimizer.lr * global_batch / recipe.lr_reference_batch


def lr_factor(recipe: RecipeConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The learning-rate multiplier at optimiser step ``step`` (the schedule is stepped every batch
    so that warm-up is smooth; step schedules still change only at epoch boundaries)."""
    schedule = recipe.schedule
    total = recipe.epochs * steps_per_epoch
    if isinstance(schedule, StepSchedule):
        return lambda step: schedule.gamma ** sum(step // steps_per_epoch >= m for m in schedule.milestones)
    if isinstance(schedule, CosineSchedule):
        warmup = schedule.warmup_epochs * steps_per_epoch

        def cosine(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        return cosine
    return lambda step: 1.0
