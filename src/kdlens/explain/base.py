"""What every explainer shares: the registry, the ``attribute`` contract, targets and chunking."""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Literal, TypeVar, Union

import torch
from torch import Tensor, nn

from kdlens.explain.errors import ExplainError, require_autograd  # noqa: F401  (re-exported)
from kdlens.explain.layers import default_layer
from kdlens.models import resolve_module
from kdlens.models.modes import eval_mode  # noqa: F401  (re-exported: the one eval_mode)
from kdlens.registry import EXPLAINERS as _EXPLAINERS
from kdlens.registry import Registry

TargetName = Literal["label", "pred", "teacher"]
TARGET_NAMES: tuple[str, ...] = ("label", "pred", "teacher")
"""The targets a command line names (``--target``): the true class, the explained model's own
top-1, the teacher's top-1."""

Target = Union[Tensor, int, TargetName, nn.Module]
"""Which class to explain: per-sample class indices (LongTensor of shape (B,)), one class for the
whole batch (int), ``"label"`` (the true class; needs the labels), ``"pred"`` (the explained
model's top-1), ``"teacher"`` (the teacher's top-1; needs the teacher) or another model (its top-1,
e.g. the teacher's when explaining a student). Resolved in one place: :func:`resolve_target`."""

Reduce = Literal["sum", "abs_sum", "none"]

DEFAULT_CHUNK_SIZE = 256
"""Expanded inputs per forward pass (IG steps, SmoothGrad samples, ScoreCAM/AblationCAM channel
copies, LIME/KernelSHAP samples, occlusion windows) when ``chunk_size`` is not given."""


class Explainer(ABC):
    """One attribution method bound to one model, Captum style: construct once, then call
    :meth:`attribute` on batches. Subclasses implement ``_attribute`` with their own keyword
    options; ``attribute`` validates the call and passes ``create_graph`` only to differentiable
    methods and ``chunk_size`` only to methods that expand the batch."""

    name: ClassVar[str]
    differentiable: ClassVar[bool] = False
    """``create_graph=True`` gives maps that backpropagate into the model's parameters."""
    differentiable_options: ClassVar[dict[str, Any]] = {}
    """The options with which ``create_graph=True`` works where they are not the defaults (LRP:
    ``canonize=False``); an explanation loss passes them for the model it trains and for the
    reference model alike, so that both maps have one definition."""
    expands_batch: ClassVar[bool] = False
    """Evaluates many perturbed/interpolated copies per input, ``chunk_size`` at a time."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def attribute(
        self,
        x: Tensor,
        target: Target,
        *,
        create_graph: bool = False,
        chunk_size: int | None = None,
        **options: Any,
    ) -> Tensor:
        """Maps of shape (B, 1, H, W) (or (B, C, H, W) with ``reduce="none"``) on ``x``'s device.

        ``create_graph``: keep the maps in the autograd graph (differentiable methods only).
        ``chunk_size``: most expanded inputs per forward pass (default :data:`DEFAULT_CHUNK_SIZE`);
        methods that run one pass per batch do not need it and ignore it."""
        if x.ndim != 4:
            raise ExplainError(f"expected a batch of images (B, C, H, W), got shape {tuple(x.shape)}")
        self._check_options(options)
        if create_graph and not self.differentiable:
            differentiable = [n for n in EXPLAINERS.names() if EXPLAINERS[n].differentiable]
            raise ExplainError(
                f"'{self.name}' is not differentiable; create_graph=True works with {', '.join(differentiable)}"
            )
        if chunk_size is not None and chunk_size < 1:
            raise ExplainError(f"chunk_size must be >= 1, got {chunk_size}")
        if self.differentiable:
            options["create_graph"] = create_graph
        if self.expands_batch:
            options["chunk_size"] = chunk_size or DEFAULT_CHUNK_SIZE
        return self._attribute(x, resolve_target(self.model, x, target), **options)

    @abstractmethod
    def _attribute(self, x: Tensor, target: Tensor, **options: Any) -> Tensor: ...

    @classmethod
    def option_names(cls) -> list[str]:
        """The method-specific keyword options of :meth:`attribute`."""
        hidden = {"self", "x", "target", "create_graph", "chunk_size"}
        return [p for p in inspect.signature(cls._attribute).parameters if p not in hidden]

    def _check_options(self, options: dict[str, Any]) -> None:
        unknown = sorted(set(options) - set(self.option_names()))
        if unknown:
            valid = ", ".join(self.option_names()) or "none"
            raise ExplainError(f"unknown option(s) {', '.join(unknown)} for '{self.name}'; its options: {valid}")


class LayerExplainer(Explainer):
    """An explainer of one intermediate layer's activations (the CAM family).

    ``layer`` is a module path as in ``model.named_modules()``. Without one, the layer is found
    by :func:`kdlens.explain.layers.default_layer` on the first batch: the last module returning
    a 4-D feature map before global pooling, which for every model of ``kdlens.models`` is the
    last stage of its ModelSpec. Pass ``layer`` explicitly in training loops to skip that probe.
    """

    def __init__(self, model: nn.Module, layer: str | None = None) -> None:
        super().__init__(model)
        if layer is not None:
            resolve_module(model, layer)  # fail now, with the valid paths, on a typo
        self._layer_path = layer

    def layer_path(self, x: Tensor) -> str:
        if self._layer_path is None:
            self._layer_path = default_layer(self.model, x)
        return self._layer_path


EXPLAINERS: Registry[type[Explainer]] = _EXPLAINERS
"""Every explanation method by name (:data:`kdlens.registry.EXPLAINERS`); built-in methods are
imported when first looked up, plugins (entry points ``kdlens.explainers``) likewise."""

E = TypeVar("E", bound=type[Explainer])


def register_explainer(name: str) -> Callable[[E], E]:
    """``EXPLAINERS.register(name)``, also naming the class (``cls.name``, used in its messages)."""

    def add(cls: E) -> E:
        cls.name = name
        return EXPLAINERS.register(name, cls)

    return add


def check_target(target: str, has_teacher: bool = True) -> None:
    """Fail before any work on a ``--target`` that is not a :data:`TARGET_NAMES` or on ``teacher``
    without a teacher."""
    if target not in TARGET_NAMES:
        raise ExplainError(f"--target must be {', '.join(TARGET_NAMES[:-1])} or {TARGET_NAMES[-1]}, got '{target}'")
    if target == "teacher" and not has_teacher:
        raise ExplainError("--target teacher needs --teacher")


def resolve_target(
    model: nn.Module, x: Tensor, target: Target, *, labels: Tensor | None = None, teacher: nn.Module | None = None
) -> Tensor:
    """The LongTensor of per-sample classes (shape (B,), on ``x``'s device) that ``target`` means;
    ``labels`` are the batch's true classes (for ``"label"``, -1 marks an unlabelled sample) and
    ``teacher`` the model whose top-1 ``"teacher"`` means. The one target resolver: explainers,
    ``explain_dataset``, ``kdlens explain``, ``kdlens evaluate``, the report and the tables use it."""
    if isinstance(target, str):
        if target == "label":
            if labels is None:
                raise ExplainError("target 'label' needs the samples' labels; give class indices, 'pred' or a model")
            if (labels < 0).any():
                raise ExplainError("this split has unlabelled samples: explain --target pred or teacher")
            target = labels.long()
        elif target == "teacher":
            if teacher is None:
                raise ExplainError("--target teacher needs --teacher")
            target = teacher
        elif target == "pred":
            target = model
        else:
            raise ExplainError(f"target must be class indices, 'label', 'pred', 'teacher' or a model, got '{target}'")
    if isinstance(target, nn.Module):
        with torch.no_grad():
            return target(x).argmax(1)
    if isinstance(target, int):
        return torch.full((len(x),), target, dtype=torch.long, device=x.device)
    if not isinstance(target, Tensor) or target.dtype != torch.long or target.shape != (len(x),):
        got = f"{target.dtype} of shape {tuple(target.shape)}" if isinstance(target, Tensor) else type(target).__name__
        raise ExplainError(f"target must be a LongTensor of shape ({len(x)},) (one class per sample), got {got}")
    return target.to(x.device)


def reduce_channels(attribution: Tensor, reduce: Reduce) -> Tensor:
    """(B, C, H, W) input-space attributions to one map per sample: ``sum`` keeps the sign and
    the completeness of IG/SHAP-style attributions, ``abs_sum`` shows magnitude, ``none`` keeps
    every channel."""
    if reduce == "sum":
        return attribution.sum(1, keepdim=True)
    if reduce == "abs_sum":
        return attribution.abs().sum(1, keepdim=True)
    if reduce == "none":
        return attribution
    raise ExplainError(f"reduce must be 'sum', 'abs_sum' or 'none', got '{reduce}'")


def grid_chunks(rows: int, cols: int, chunk_size: int, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    """The (row, col) index pairs of a rows × cols grid in row-major order, ``chunk_size`` pairs at
    a time: e.g. (sample, channel) for ScoreCAM, (sample, perturbation) for LIME."""
    for start in range(0, rows * cols, chunk_size):
        flat = torch.arange(start, min(start + chunk_size, rows * cols), device=device)
        yield flat.div(cols, rounding_mode="floor"), flat % cols


def per_sample_chunks(batch_size: int, chunk_size: int) -> int:
    """Copies of each sample per forward pass when a chunk holds copies of the whole batch."""
    return max(1, chunk_size // batch_size)
