"""Loss terms: one per method, composed with weights (torchdistill style).

A term is an ``nn.Module`` so that trainable connectors it owns (regressors, adapters) are trained
with the model and counted as extra parameters, but never enter the exported model. Each term has a
pydantic config subclassing :class:`LossConfigBase` with ``name: Literal[...]``; the experiment
config's ``losses`` list is the discriminated union of all registered term configs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from kdlens.registry import Registry


class LossConfigBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    weight: float = 1.0


@dataclass
class DistillBatch:
    """Everything a loss term may read for one training step."""

    images: Tensor
    labels: Tensor
    student_logits: Tensor
    teacher_logits: Tensor | None = None
    student_features: dict[str, Tensor] = field(default_factory=dict)
    teacher_features: dict[str, Tensor] = field(default_factory=dict)
    epoch: int = 0


class LossTerm(nn.Module):
    """One unweighted loss; the :class:`DistillLoss` applies the weight."""

    needs_teacher: ClassVar[bool] = False

    def __init__(self, config: LossConfigBase) -> None:
        super().__init__()
        self.config = config

    def forward(self, batch: DistillBatch) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


LOSSES: Registry[type[LossTerm]] = Registry("loss term")
LOSS_CONFIGS: dict[str, type[LossConfigBase]] = {}


def register_loss(config: type[LossConfigBase]):
    """Register a term class under its config's ``name`` literal."""
    name = config.model_fields["name"].annotation.__args__[0]

    def add(term: type[LossTerm]) -> type[LossTerm]:
        LOSSES.register(name)(term)
        LOSS_CONFIGS[name] = config
        return term

    return add


class DistillLoss(nn.Module):
    """Weighted sum of loss terms; returns the total and each weighted term for logging."""

    def __init__(self, configs: list[LossConfigBase]) -> None:
        super().__init__()
        self.terms = nn.ModuleList(LOSSES[c.name](c) for c in configs)
        self.weights = [c.weight for c in configs]
        self.log_names = _unique_names([c.name for c in configs])

    @property
    def needs_teacher(self) -> bool:
        return any(term.needs_teacher for term in self.terms)

    def forward(self, batch: DistillBatch) -> tuple[Tensor, dict[str, Tensor]]:
        parts = {
            log_name: weight * term(batch)
            for log_name, weight, term in zip(self.log_names, self.weights, self.terms)
        }
        return torch.stack(list(parts.values())).sum(), parts


def _unique_names(names: list[str]) -> list[str]:
    """Two terms of the same method (e.g. AT at two stages) log as ``at`` and ``at_1``."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        count = seen.get(name, 0)
        out.append(name if count == 0 else f"{name}_{count}")
        seen[name] = count + 1
    return out
