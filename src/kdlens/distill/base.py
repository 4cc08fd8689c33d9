"""Loss terms: one per method, composed with weights (torchdistill style).

A term is an ``nn.Module`` so that trainable connectors it owns (regressors, adapters) are trained
with the model and counted as extra parameters, but never enter the exported model. Each term has a
pydantic config subclassing :class:`LossConfigBase` with ``name: Literal[...]``, registered with
the term (``@LOSSES.register("kd", config=KDConfig)``); each item of the experiment config's
``losses`` list validates against the config registered for its ``name``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from kdlens.models import ModelSpec

if TYPE_CHECKING:
    from kdlens.distill.frozen import FrozenTeacherSpec
from kdlens.registry import LOSSES


class LossConfigBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    weight: float = 1.0
    active_epochs: tuple[int, int | None] | None = None
    """[first, last) epochs (0-based, last None = to the end) in which the term counts; e.g. FitNet's
    two-stage training: the hint term in [0, 20), CE and KD in [20, None)."""

    def is_active(self, epoch: int) -> bool:
        if self.active_epochs is None:
            return True
        first, last = self.active_epochs
        return first <= epoch and (last is None or epoch < last)


@dataclass
class DistillBatch:
    """Everything a loss term may read for one training step.

    ``student_features``/``teacher_features`` hold the outputs of the module paths the terms asked
    for (:meth:`LossTerm.feature_paths`); teacher outputs come from a no-grad forward. ``extras``
    carries per-sample data the dataset attached (e.g. frozen teacher explanations)."""

    images: Tensor
    labels: Tensor
    student_logits: Tensor
    teacher_logits: Tensor | None = None
    student_features: dict[str, Tensor] = field(default_factory=dict)
    teacher_features: dict[str, Tensor] = field(default_factory=dict)
    epoch: int = 0
    step: int = 0
    extras: dict[str, Tensor] = field(default_factory=dict)
    teacher_graph: dict[str, Tensor] | None = None
    """Only when a term sets ``needs_teacher_graph``: the teacher's ``logits`` and tapped features
    still attached to its forward (parameters frozen), for gradients with respect to activations.
    ``teacher_logits``/``teacher_features`` are always detached."""


@dataclass
class TermContext:
    """The models a term works with. Terms that run extra passes (explanations, reinforced inputs)
    call the models; terms that read features resolve default module paths from the specs."""

    student: nn.Module
    student_spec: ModelSpec
    teacher: nn.Module | None = None
    teacher_spec: ModelSpec | None = None


class LossTerm(nn.Module):
    """One unweighted loss; the :class:`DistillLoss` applies the weight.

    A term that needs intermediate features lists their module paths in :meth:`feature_paths`.
    A term with trainable connectors whose sizes depend on feature shapes creates them in
    :meth:`build_connectors`, called once with a probe batch before training (so that the
    optimiser and checkpoint restore see them)."""

    needs_teacher: ClassVar[bool] = False
    needs_teacher_graph: bool = False
    """Whether the term differentiates the teacher's outputs with respect to its activations."""

    def __init__(self, config: LossConfigBase, context: TermContext | None = None) -> None:
        super().__init__()
        self.config = config
        # Kept outside the module tree: the models are owned by the training module, and their
        # parameters must not be counted or optimised twice through the term.
        self.__dict__["context"] = context

    def feature_paths(self) -> tuple[list[str], list[str]]:
        """(student module paths, teacher module paths) whose outputs this term reads."""
        return [], []

    @classmethod
    def reads_features(cls, config: LossConfigBase) -> bool:
        """Whether a term of ``config`` reads intermediate features (non-empty
        :meth:`feature_paths`), known from the config alone: the config refuses such terms with
        ``trainer.compile``, as compiled forwards do not run the forward hooks that read them."""
        return False

    def build_connectors(self, batch: DistillBatch) -> None:
        """Create trainable modules from the probe batch's feature shapes (default: none)."""

    def frozen_teacher_spec(self) -> FrozenTeacherSpec | None:
        """The teacher explanation this term wants precomputed once (default: none)."""
        return None

    def forward(self, batch: DistillBatch) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def register_loss(config: type[LossConfigBase]):
    """Shorthand for ``LOSSES.register(name, config=config)`` with the name of ``config``'s
    ``name`` literal."""
    return LOSSES.register(config.model_fields["name"].default, config=config)


class DistillLoss(nn.Module):
    """Weighted sum of loss terms; returns the total and each weighted term for logging. Its
    parameters are the terms' connectors: trained with the student, never exported with it."""

    def __init__(self, configs: list[LossConfigBase], context: TermContext | None = None) -> None:
        super().__init__()
        self.terms = nn.ModuleList(LOSSES[c.name](c, context) for c in configs)
        self.weights = [c.weight for c in configs]
        self.log_names = _unique_names([c.name for c in configs])

    @property
    def needs_teacher(self) -> bool:
        return any(term.needs_teacher for term in self.terms)

    @property
    def needs_teacher_graph(self) -> bool:
        return any(term.needs_teacher_graph for term in self.terms)

    def feature_paths(self) -> tuple[list[str], list[str]]:
        """Every module path any term reads, without repeats, for the student and the teacher."""
        student, teacher = [], []
        for term in self.terms:
            term_student, term_teacher = term.feature_paths()
            student += term_student
            teacher += term_teacher
        return list(dict.fromkeys(student)), list(dict.fromkeys(teacher))

    def build_connectors(self, batch: DistillBatch) -> None:
        for term in self.terms:
            term.build_connectors(batch)

    def frozen_teacher_spec(self) -> FrozenTeacherSpec | None:
        """What the terms want precomputed: one explanation (with the logits), or the logits only."""
        specs = {spec for term in self.terms if (spec := term.frozen_teacher_spec()) is not None}
        with_maps = {spec for spec in specs if spec.method is not None}
        if len(with_maps) > 1:
            raise ValueError(f"loss terms ask for different frozen teacher explanations {with_maps}; use one")
        return (with_maps or specs).pop() if specs else None

    def forward(self, batch: DistillBatch) -> tuple[Tensor, dict[str, Tensor]]:
        parts = {
            log_name: weight * term(batch)
            for log_name, weight, term in zip(self.log_names, self.weights, self.terms)
            if term.config.is_active(batch.epoch)
        }
        if not parts:
            raise RuntimeError(f"no loss term is active in epoch {batch.epoch}: check the terms' active_epochs")
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
