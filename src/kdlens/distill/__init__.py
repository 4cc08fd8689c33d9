"""Distillation loss terms, composable with weights."""

from kdlens.distill import kd  # noqa: F401  (registers ce and kd)
from kdlens.distill import at, dkd, e2kd, expkd, feature_matching, fitnet, oracle_kd, sp  # noqa: F401  (register their terms)
from kdlens.distill.at import attention_map, attention_transfer
from kdlens.distill.base import (
    LOSSES,
    DistillBatch,
    DistillLoss,
    LossConfigBase,
    LossTerm,
    TermContext,
    register_loss,
)
from kdlens.distill.dkd import dkd_parts, dkd_warmup
from kdlens.distill.expkd import class_activation_maps, normalize_over_space
from kdlens.distill.fitnet import conv_regressor
from kdlens.distill.kd import kd_divergence
from kdlens.distill.oracle_kd import reinforced_inputs
from kdlens.distill.sp import batch_similarity, similarity_preserving


def loss_config_types() -> list[type[LossConfigBase]]:
    """Every registered loss term's config class (kdlens's and plugins')."""
    return [LOSSES.config(name) for name in LOSSES.names()]


__all__ = [
    "LOSSES",
    "DistillBatch",
    "DistillLoss",
    "LossConfigBase",
    "LossTerm",
    "TermContext",
    "attention_map",
    "attention_transfer",
    "batch_similarity",
    "class_activation_maps",
    "conv_regressor",
    "dkd_parts",
    "dkd_warmup",
    "kd_divergence",
    "loss_config_types",
    "normalize_over_space",
    "reinforced_inputs",
    "register_loss",
    "similarity_preserving",
]
