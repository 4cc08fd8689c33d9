"""The explanation-metric interface, and the evaluation context the metrics of one call share.

A metric is called as ``metric(model, x, y, a, s=None, explain_fn=None) -> Tensor`` of shape ``(B,)``
(float64, NaN where the score is undefined for that sample). ``x`` is an image batch ``(B, C, H, W)``,
``y`` the explained classes ``(B,)``, ``a`` attributions ``(B, 1, H, W)`` or ``(B, C, H, W)``, ``s``
binary masks ``(B, 1, H, W)`` and ``explain_fn(model, x, y) -> a`` recomputes attributions (robustness
and randomisation metrics). Which of them a metric reads is in its ``requires``.

Metrics evaluated together through :func:`kdlens.metrics.evaluate_metrics` share one
:class:`EvaluationContext`: the clean forward pass, the prepared attributions and every perturbed
forward pass (keyed by :class:`Sweep` and step) are computed once for all of them.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar, dataclass_transform

import numpy as np
import torch
from torch import Tensor, nn

from kdlens.engine import inference_forward
from kdlens.metrics.functional import flatten, prepare_attributions
from kdlens.models.modes import eval_mode  # noqa: F401  (re-exported: the one eval_mode)
from kdlens.registry import METRICS, Registry

SWEEP_PRECISIONS: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The precisions the metrics' forward passes can run in (:class:`EvaluationContext`), by name;
None: float32, without autocast."""

ExplainFn = Callable[[nn.Module, Tensor, Tensor], Tensor]
"""``explain_fn(model, x, y) -> a``: attributions of ``model`` for the classes ``y`` on inputs ``x``."""

Requirement = str
"""One of ``"model"`` (with ``y``), ``"mask"`` or ``"explain_fn"``."""


class NanReason(str, Enum):
    """Why a metric has no score (NaN) for a sample; :meth:`ExplanationMetric.nan_reasons` gives
    one per sample and the summaries count them (:func:`kdlens.aggregate.describe_missing`)."""

    EMPTY_MASK = "empty mask"
    FULL_MASK = "mask covers the whole image"
    ZERO_MAP = "all-zero map"
    NO_POSITIVE = "no positive attribution"
    RATIO_ABOVE_ONE = "mass ratio above 1"
    UNDEFINED = "undefined"
    """No specific reason known (e.g. a correlation with a constant input)."""

    @property
    def for_every_sample(self) -> str:
        """The reason said of a whole set of samples (a summary row whose every score is NaN)."""
        return _FOR_EVERY_SAMPLE[self]

    def __str__(self) -> str:
        return self.value


_FOR_EVERY_SAMPLE = {
    NanReason.EMPTY_MASK: "no sample has a mask (every mask is empty)",
    NanReason.FULL_MASK: "every mask covers the whole image",
    NanReason.ZERO_MAP: "all maps are zero",
    NanReason.NO_POSITIVE: "no map has a positive attribution",
    NanReason.RATIO_ABOVE_ONE: "every mass ratio is above 1",
    NanReason.UNDEFINED: "undefined for every sample",
}


def zero_maps(context: EvaluationContext) -> Tensor:
    """``(B,)``: whether each sample's attribution map is zero everywhere."""
    if context.a is None:
        return torch.zeros(len(context), dtype=torch.bool, device=context.device)
    return ~flatten(context.a.to(context.device)).any(1)


@dataclass(frozen=True)
class Readout:
    """What the metrics read from the model's outputs; every field has the same shape."""

    logit: Tensor
    """Logit of the explained class."""
    prob: Tensor
    """Softmax probability of the explained class."""
    prob_predicted: Tensor
    """Softmax probability of the class the model predicts on the clean input."""
    correct: Tensor
    """Whether the top-1 class is the explained class."""

    def score(self, softmax: bool) -> Tensor:
        return self.prob if softmax else self.logit

    def values(self) -> tuple[Tensor, ...]:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    @staticmethod
    def stack(readouts: Sequence[Readout], dim: int) -> Readout:
        return Readout(*(torch.stack(values, dim) for values in zip(*(r.values() for r in readouts), strict=True)))

    @staticmethod
    def cat(readouts: Sequence[Readout]) -> Readout:
        return Readout(*(torch.cat(values) for values in zip(*(r.values() for r in readouts), strict=True)))

    def select(self, index: slice | Tensor) -> Readout:
        return Readout(*(value[index] for value in self.values()))


class Sweep(ABC):
    """A family of perturbed copies of the batch, one per (step, sample).

    Two sweeps with equal ``key`` on one context give equal images for equal steps, so the
    context runs each (key, step) once, however many metrics ask for it.
    """

    key: Hashable
    steps: tuple[Hashable, ...]

    def is_identity(self, step: Hashable) -> bool:
        """Whether the step leaves every input unchanged (its readout is the clean forward pass)."""
        return False

    @abstractmethod
    def perturb(self, steps: Tensor, samples: Tensor) -> Tensor:
        """The perturbed inputs ``(n, C, H, W)`` for positions in ``self.steps`` and in the batch."""


class RandomDraws:
    """The random numbers of one metric evaluation, from one of two sources behind one interface:

    * torch (default): stream ``k`` is a ``torch.Generator`` on ``device`` seeded with
      ``(seed << 32) + k``. A metric draws each independent part (a perturbation draw, a run, a
      step) from its own stream, so results do not depend on how the work is chunked.
    * ``quantus_compat=True``: one ``numpy.random.RandomState(seed)`` drawn sequentially (``stream``
      is ignored). A metric that asks in Quantus's order gets Quantus's numbers, as after
      ``np.random.seed(seed)``; they come back as float64 / int64 tensors on ``device``.
    """

    def __init__(self, seed: int, device: torch.device, quantus_compat: bool = False) -> None:
        self.seed = seed
        self.device = device
        self.state = np.random.RandomState(seed) if quantus_compat else None

    @property
    def quantus_compat(self) -> bool:
        return self.state is not None

    def generator(self, stream: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed((self.seed << 32) + stream)

    def _tensor(self, values: np.ndarray) -> Tensor:
        return torch.from_numpy(values).to(self.device)

    def uniform(self, shape: Sequence[int], low: float = 0.0, high: float = 1.0, *, stream: int = 0) -> Tensor:
        """U[low, high) draws of ``shape``."""
        if self.state is not None:
            return self._tensor(self.state.uniform(low, high, size=tuple(shape)))
        values = torch.rand(tuple(shape), generator=self.generator(stream), device=self.device)
        return values if (low, high) == (0.0, 1.0) else values * (high - low) + low

    def normal(self, shape: Sequence[int], mean: float = 0.0, std: float = 1.0, *, stream: int = 0) -> Tensor:
        """N(mean, std²) draws of ``shape``."""
        if self.state is not None:
            return self._tensor(self.state.normal(mean, std, size=tuple(shape)))
        values = torch.randn(tuple(shape), generator=self.generator(stream), device=self.device)
        if std != 1.0:
            values = values * std
        return values + mean if mean != 0.0 else values

    def integers(self, high: int, shape: Sequence[int], *, stream: int = 0) -> Tensor:
        """Uniform integers in [0, high) of ``shape``."""
        if self.state is not None:
            return self._tensor(self.state.randint(0, high, size=tuple(shape)))
        return torch.randint(0, high, tuple(shape), generator=self.generator(stream), device=self.device)

    def permutations(self, rows: int, n: int, *, stream: int = 0) -> Tensor:
        """``(rows, n)``: a random permutation of 0..n-1 per row."""
        if self.state is not None:
            state = self.state
            return self._tensor(np.stack([state.permutation(n) for _ in range(rows)]))
        return torch.rand(rows, n, generator=self.generator(stream), device=self.device).argsort(1)

    def subsets(self, rows: int, n: int, k: int, *, stream: int = 0) -> Tensor:
        """``(rows, k)``: ``k`` distinct indices of 0..n-1 per row."""
        if self.state is not None:
            state = self.state
            return self._tensor(np.stack([state.choice(n, k, replace=False) for _ in range(rows)]))
        return torch.rand(rows, n, generator=self.generator(stream), device=self.device).topk(k, dim=1).indices

    def skip_unused(self, n: int) -> None:
        """Advance past ``n`` uniform draws that Quantus makes and never uses (torch streams are
        independent: nothing to skip)."""
        if self.state is not None:
            self.state.random_sample(n)


class EvaluationContext:
    """One model, batch, attribution and mask, and the work already done on them."""

    def __init__(
        self,
        model: nn.Module | None,
        x: Tensor,
        y: Tensor | None,
        a: Tensor | None,
        s: Tensor | None = None,
        explain_fn: ExplainFn | None = None,
        *,
        max_batch: int = 256,
        memory_format: torch.memory_format | None = None,
        precision: torch.dtype | None = None,
    ) -> None:
        """``max_batch`` bounds the images per forward (and explain) call; ``memory_format`` (e.g.
        ``torch.channels_last``) is applied to every batch given to the model; ``precision``
        (``torch.bfloat16`` or ``torch.float16``) runs the forward-only passes (clean and perturbed)
        under autocast in that precision: for GPUs; docs/benchmarks/precision.md measures how far
        it moves each metric, and those it changes (:attr:`ExplanationMetric.precision_sensitive`)
        are evaluated in float32 all the same (:meth:`in_float32`)."""
        if x.ndim != 4:
            raise ValueError(f"x must be an image batch (B, C, H, W), got shape {tuple(x.shape)}")
        if a is not None and (
            len(a) != len(x) or a.ndim != 4 or a.shape[1] not in (1, x.shape[1]) or a.shape[2:] != x.shape[2:]
        ):
            raise ValueError(f"a must have shape (B, 1 or C, H, W) matching x {tuple(x.shape)}, got {tuple(a.shape)}")
        if s is not None and (s.shape != (len(x), 1, *x.shape[2:])):
            raise ValueError(f"s must have shape (B, 1, H, W) matching x {tuple(x.shape)}, got {tuple(s.shape)}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if precision not in (torch.float32, *SWEEP_PRECISIONS.values()):
            raise ValueError(f"precision must be torch.bfloat16, torch.float16 or None (float32), got {precision}")
        self.model = model
        # Forward-only passes run on kdlens.engine's backend for the model (same logits, faster).
        self._model_forward = None if model is None else inference_forward(model)
        self.x = x
        self.y = None if y is None else y.to(x.device).long()
        self.a = a
        self.s = None if s is None else s.to(x.device).bool()
        self.explain_fn = explain_fn
        self.max_batch = max_batch
        self.memory_format = memory_format
        self.precision = None if precision == torch.float32 else precision
        self._float32: EvaluationContext | None = None
        self._attributions: dict[tuple[bool, bool, bool], Tensor] = {}
        self._clean: Readout | None = None
        self._predicted: Tensor | None = None
        self._num_classes: int | None = None
        self._readouts: dict[tuple[Hashable, Hashable], Readout] = {}

    @property
    def device(self) -> torch.device:
        return self.x.device

    def in_float32(self) -> EvaluationContext:
        """This context with its forward passes in float32: itself, or a sibling made once that
        shares its prepared attributions (its own clean and perturbed passes)."""
        if self.precision is None:
            return self
        if self._float32 is None:
            self._float32 = EvaluationContext(self.model, self.x, self.y, self.a, self.s, self.explain_fn,
                                              max_batch=self.max_batch, memory_format=self.memory_format)
            self._float32._attributions = self._attributions
        return self._float32

    def __len__(self) -> int:
        return len(self.x)

    def attributions(self, abs: bool, normalise: bool, batch_wide: bool = False) -> Tensor:
        """The attributions as a metric reads them: divided by their max ``|a|`` per sample (or over
        the whole batch with ``batch_wide``, as Quantus does), then made absolute; float32 or wider."""
        key = (abs, normalise, batch_wide and normalise)
        if key not in self._attributions:
            if self.a is None:
                raise ValueError("this metric needs attributions a")
            group = len(self) if batch_wide else 1
            self._attributions[key] = prepare_attributions(self.a.to(self.device), abs, normalise, group)
        return self._attributions[key]

    def clean(self) -> Readout:
        """The model's readout on the unperturbed batch, shape ``(B,)``."""
        if self._clean is None:
            readouts, top1 = [], []
            for start in range(0, len(self), self.max_batch):
                samples = torch.arange(start, min(start + self.max_batch, len(self)), device=self.device)
                readout, predicted = self._forward(self.x[samples], samples, predicted=None)
                readouts.append(readout)
                top1.append(predicted)
            self._clean = Readout.cat(readouts)
            self._predicted = torch.cat(top1)
        return self._clean

    @property
    def predicted(self) -> Tensor:
        """The class the model predicts on each clean input."""
        self.clean()
        assert self._predicted is not None
        return self._predicted

    @property
    def num_classes(self) -> int:
        self.clean()
        assert self._num_classes is not None
        return self._num_classes

    def sweep(self, sweep: Sweep) -> Readout:
        """The readout of every step of ``sweep``, shape ``(B, len(sweep.steps))``, running only
        the (key, step) pairs no earlier sweep of this context has run."""
        missing = [
            i
            for i, step in enumerate(sweep.steps)
            if (sweep.key, step) not in self._readouts and not sweep.is_identity(step)
        ]
        if missing:
            self._run(sweep, missing)
        clean = self.clean()
        per_step = [clean if sweep.is_identity(step) else self._readouts[(sweep.key, step)] for step in sweep.steps]
        return Readout.stack(per_step, dim=1)

    def explain(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """``explain_fn`` on ``x`` in chunks of ``max_batch``, detached."""
        if self.explain_fn is None:
            raise ValueError("this metric needs an explain_fn(model, x, y) -> a")
        chunks = [
            self.explain_fn(model, x[i : i + self.max_batch], y[i : i + self.max_batch]).detach()
            for i in range(0, len(x), self.max_batch)
        ]
        return torch.cat(chunks)

    def _run(self, sweep: Sweep, missing: list[int]) -> None:
        # (step, sample) pairs in step-major order, so a chunk of B pairs is one step of the whole
        # batch, as Quantus forwards it.
        n_samples = len(self)
        steps = torch.tensor(missing, device=self.device)
        total = len(missing) * n_samples
        chunks = []
        for start in range(0, total, self.max_batch):
            pairs = torch.arange(start, min(start + self.max_batch, total), device=self.device)
            samples = pairs % n_samples
            batch = sweep.perturb(steps[pairs // n_samples], samples)
            chunks.append(self._forward(batch, samples, self.predicted[samples])[0])
        per_pair = Readout.cat(chunks)
        for row, index in enumerate(missing):
            self._readouts[(sweep.key, sweep.steps[index])] = per_pair.select(
                slice(row * n_samples, (row + 1) * n_samples)
            )

    @torch.inference_mode()
    def _forward(self, batch: Tensor, samples: Tensor, predicted: Tensor | None) -> tuple[Readout, Tensor]:
        """The readout of ``batch`` (images of ``samples``) and its top-1 classes; ``predicted`` are
        the clean predictions of those samples, or None for the clean pass itself."""
        if self._model_forward is None or self.y is None:
            raise ValueError("this metric needs a model and the explained classes y")
        if self.memory_format is not None:
            batch = batch.contiguous(memory_format=self.memory_format)
        with torch.autocast(self.device.type, dtype=self.precision, enabled=self.precision is not None):
            logits = self._model_forward(batch).float()
        self._num_classes = logits.shape[1]  # the same for every batch
        probs = logits.softmax(1)
        top1 = logits.argmax(1)
        predicted = top1 if predicted is None else predicted
        target = self.y[samples, None]
        readout = Readout(
            logit=logits.gather(1, target)[:, 0],
            prob=probs.gather(1, target)[:, 0],
            prob_predicted=probs.gather(1, predicted[:, None])[:, 0],
            correct=top1 == target[:, 0],
        )
        return readout, top1


@dataclass_transform(kw_only_default=True, eq_default=False)
@dataclass(kw_only=True, eq=False)
class ExplanationMetric(ABC):
    """One explanation-quality metric; see the module docstring for the call convention.

    Parameters are keyword-only dataclass fields, each declared once: here the options every
    metric shares, in intermediate classes those a family shares (e.g. the perturbation baseline),
    in a metric its own. A subclass is made a dataclass when it is defined; it adds fields, or
    redeclares one to change its default (``normalise: bool = True``). Mixins that declare fields
    (:class:`Seeded`, :class:`CurveMetric`) go last among the bases, so that they never reset a
    default an earlier base changed.
    """

    requires: ClassVar[frozenset[Requirement]] = frozenset({"model"})
    higher_is_better: ClassVar[bool] = True
    """Whether larger scores mean better explanations (some metrics decide per instance)."""
    precision_sensitive: ClassVar[bool] = False
    """Whether reduced precision in the forward passes (:class:`EvaluationContext` ``precision``)
    measurably changes the scores (docs/benchmarks/precision.md: a pass/fail test of close
    outputs); such a metric is evaluated in float32 whatever the context's precision."""
    mask_key: ClassVar[str] = "mask"
    """The sample key of the mask ``s`` the metric scores against, when it requires one: the object
    (``mask``), or e.g. a decoy cue (``decoy_mask``)."""

    abs: bool = False
    """Take ``|a|`` after normalising (Quantus's order)."""
    normalise: bool = False
    """Divide ``a`` by its largest ``|a|``: per sample (Quantus: over the batch)."""
    quantus_compat: bool = False
    """Reproduce Quantus 0.6 where kdlens deliberately differs and that is meaningful: batch-wide
    normalisation, Quantus's random draws (:class:`RandomDraws`); each metric documents what it
    changes."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        dataclass(kw_only=True, eq=False)(cls)

    def __call__(
        self,
        model: nn.Module | None,
        x: Tensor,
        y: Tensor | None,
        a: Tensor | None,
        s: Tensor | None = None,
        explain_fn: ExplainFn | None = None,
        *,
        max_batch: int = 256,
        memory_format: torch.memory_format | None = None,
        precision: torch.dtype | None = None,
    ) -> Tensor:
        context = EvaluationContext(model, x, y, a, s, explain_fn, max_batch=max_batch, memory_format=memory_format,
                                    precision=precision)
        with eval_mode(model):
            return self.evaluate(context)

    def evaluate(self, context: EvaluationContext) -> Tensor:
        """Scores ``(B,)`` on a context that other metrics may share."""
        given = {
            "model": context.model is not None and context.y is not None,
            "mask": context.s is not None,
            "explain_fn": context.explain_fn is not None,
        }
        missing = sorted(r for r in self.requires if not given[r])
        if missing:
            raise ValueError(f"{type(self).__name__} needs {', '.join(missing)}")
        return self.compute(context.in_float32() if self.precision_sensitive else context)

    @abstractmethod
    def compute(self, context: EvaluationContext) -> Tensor:
        """Scores ``(B,)``, float64."""

    def attributions(self, context: EvaluationContext) -> Tensor:
        return context.attributions(self.abs, self.normalise, batch_wide=self.quantus_compat)

    def undefined_when(self, context: EvaluationContext) -> list[tuple[Tensor, NanReason]]:
        """The conditions ``(B,)`` under which this metric's score is NaN, each with its reason, in
        order of precedence (a metric that declares them NaNs its score where any holds)."""
        return []

    def nan_reasons(self, context: EvaluationContext, scores: Tensor) -> list[NanReason | None]:
        """Why each NaN in ``scores`` (this metric's result on ``context``) is NaN; None for the
        samples with a score. The first of :meth:`undefined_when` that holds, else an all-zero map
        (which leaves most scores undefined), else :attr:`NanReason.UNDEFINED`."""
        missing = scores.isnan().cpu()
        if not missing.any():
            return [None] * len(scores)
        reasons: list[NanReason | None] = [None] * len(scores)
        for condition, reason in [*self.undefined_when(context), (zero_maps(context), NanReason.ZERO_MAP)]:
            for i in (missing & condition.cpu()).nonzero()[:, 0].tolist():
                if reasons[i] is None:
                    reasons[i] = reason
        return [NanReason.UNDEFINED if m and r is None else r for m, r in zip(missing.tolist(), reasons, strict=True)]


class CurveMetric(ExplanationMetric):
    """A metric summarising a per-sample curve (one value per perturbation step)."""

    def curve(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        a: Tensor,
        *,
        max_batch: int = 256,
        memory_format: torch.memory_format | None = None,
        precision: torch.dtype | None = None,
    ) -> Tensor:
        """The curve ``(B, steps)`` the score summarises."""
        context = EvaluationContext(model, x, y, a, max_batch=max_batch, memory_format=memory_format, precision=precision)
        with eval_mode(model):
            return self.compute_curve(context)

    @abstractmethod
    def compute_curve(self, context: EvaluationContext) -> Tensor:
        """The curve ``(B, steps)``, float64."""


class Seeded(ExplanationMetric):
    """A metric with random draws: ``seed``, and :meth:`draws`, the one source of its random numbers
    (torch streams, or Quantus's NumPy order with ``quantus_compat``)."""

    seed: int = 0

    def draws(self, device: torch.device) -> RandomDraws:
        """A fresh source of this metric's draws (the same numbers at every call)."""
        return RandomDraws(self.seed, device, self.quantus_compat)


EXPLANATION_METRICS: Registry[type[ExplanationMetric]] = METRICS
"""Every explanation metric class by name (:data:`kdlens.registry.METRICS`, plugins' included:
entry points ``kdlens.metrics``); presets and suites live in :mod:`kdlens.metrics.suite`."""
