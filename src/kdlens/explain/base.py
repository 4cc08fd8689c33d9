"""What every explainer shares: the registry, the ``attribute`` contract, targets and chunking."""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Literal, TypeVar, Union

import torch
from torch import Tensor, nn

from kdlens.models import resolve_module
from kdlens.registry import Registry

Target = Union[Tensor, int, Literal["pred"], nn.Module]
"""Which class to explain: per-sample class indices (LongTensor of shape (B,)), one class for the
whole batch (int), ``"pred"`` (the explained model's top-1) or another model (its top-1, e.g. the
teacher's when explaining a student)."""

Reduce = Literal["sum", "abs_sum", "none"]

DEFAULT_CHUNK_SIZE = 256
"""Expanded inputs per forward pass (IG steps, SmoothGrad samples, ScoreCAM/AblationCAM channel
copies, LIME/KernelSHAP samples, occlusion windows) when ``chunk_size`` is not given."""


class ExplainError(ValueError):
    """An explanation that cannot be computed as asked; the message says why and what to do."""


class Explainer(ABC):
    """One attribution method bound to one model, Captum style: construct once, then call
    :meth:`attribute` on batches. Subclasses implement ``_attribute`` with their own keyword
    options; ``attribute`` validates the call and passes ``create_graph`` only to differentiable
    methods and ``chunk_size`` only to methods that expand the batch."""

    name: ClassVar[str]
    differentiable: ClassVar[bool] = False
    """``create_graph=True`` gives maps that backpropagate into the model's parameters."""
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
            from kdlens.explain.layers import default_layer

            self._layer_path = default_layer(self.model, x)
        return self._layer_path


EXPLAINERS: Registry[type[Explainer]] = Registry("explanation method")

E = TypeVar("E", bound=type[Explainer])


def register_explainer(name: str) -> Callable[[E], E]:
    def add(cls: E) -> E:
        cls.name = name
        return EXPLAINERS.register(name)(cls)

    return add


def resolve_target(model: nn.Module, x: Tensor, target: Target) -> Tensor:
    """The LongTensor of per-sample classes (shape (B,), on ``x``'s device) that ``target`` means."""
    if isinstance(target, str):
        if target != "pred":
            raise ExplainError(f"target must be class indices, 'pred' or a model, got '{target}'")
        target = model
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


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode, each module's own mode restored afterwards."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training


def require_autograd() -> None:
    if torch.is_inference_mode_enabled():
        raise ExplainError(
            "gradient-based explanations cannot run under torch.inference_mode(); "
            "use torch.no_grad() (explainers re-enable gradients where they need them) or neither"
        )
