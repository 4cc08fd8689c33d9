"""Distillation loss terms, composable with weights."""

from kdlens.distill import kd  # noqa: F401  (registers ce and kd)
from kdlens.distill.base import (
    LOSS_CONFIGS,
    LOSSES,
    DistillBatch,
    DistillLoss,
    LossConfigBase,
    LossTerm,
    TermContext,
    register_loss,
)
from kdlens.distill.kd import kd_divergence


def loss_config_types() -> list[type[LossConfigBase]]:
    return list(LOSS_CONFIGS.values())


__all__ = [
    "LOSSES",
    "LOSS_CONFIGS",
    "DistillBatch",
    "DistillLoss",
    "LossConfigBase",
    "LossTerm",
    "TermContext",
    "kd_divergence",
    "loss_config_types",
    "register_loss",
]
