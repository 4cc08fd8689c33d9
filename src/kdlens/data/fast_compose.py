"""``FastCompose``: torchvision's ``v2.Compose`` with bit-identical results on kdlens's dict samples,
at a fraction of the per-sample cost.

On small images nearly all of a v2 pipeline's time is bookkeeping, repeated by every op: flattening
the sample into a pytree, deciding input by input what to transform, dispatching each kernel on the
input's type and re-wrapping its output (about 0.4 ms per 32×32 sample for crop, flip, dtype and
normalise: most of a second per epoch of 1,800 images, as much as a small model's own training
step on a CPU core). For a flat dict sample with an explicit image, v2's rule for what an op
transforms reduces to "every tv_tensor (and PIL image) of the op's transformed types; plain tensors
and other values pass through", so:

- the ops kdlens's datasets use (``RandomCrop`` with constant padding, ``RandomHorizontalFlip``,
  ``ToImage``, ``ToDtype``, ``Normalize``) run on the unwrapped image and mask tensors, with the op's
  own ``make_params`` (the same random draws, in the same order) and torchvision's own arithmetic;
- any other op with v2's generic ``forward`` gets its ``make_params``/``transform`` called directly;
- anything else (an op overriding ``forward``, such as ``RandomApply`` or a nested ``Compose``; a
  sample with containers, PIL images or no explicit image) goes through v2 itself.

``tests/test_fast_compose.py`` checks the output against ``v2.Compose``, value for value and type for type."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import PIL.Image
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF
from torchvision.transforms.v2._utils import check_type, is_pure_tensor

try:  # v2's random-apply base (e.g. RandomHorizontalFlip); private, so optional
    from torchvision.transforms.v2._transform import _RandomApplyTransform
except ImportError:  # pragma: no cover - other torchvision layouts take v2's own path
    _RandomApplyTransform = None

_EXPLICIT_IMAGES = (tv_tensors.Image, tv_tensors.Video, PIL.Image.Image)
_SPATIAL = (tv_tensors.Image, tv_tensors.Mask)
"""The values the unwrapped fast path handles: images and masks (and Mask subclasses, e.g. the
frozen teacher's explanation maps), whose crop/flip kernels are the image ones."""

Unwrapped = dict[str, tuple[type, Tensor]]
"""key → (tv_tensor type, plain tensor) of a sample's images and masks."""


class FastCompose(v2.Compose):
    """``v2.Compose`` with identical results and far less per-sample overhead on dict samples (see
    the module's docstring)."""

    def __init__(self, transforms: Any) -> None:
        super().__init__(transforms)
        self._steps = [_step(op) for op in self.transforms]

    def forward(self, *inputs: Any) -> Any:
        if len(inputs) != 1 or not _flat_sample_with_image(inputs[0]):
            return super().forward(*inputs)
        sample = dict(inputs[0])
        unwrapped: Unwrapped | None = None
        spatial_only = _only_spatial_tensors(sample)
        for index, (op, (kind, fast)) in enumerate(zip(self.transforms, self._steps)):
            if fast is not None and spatial_only:
                if unwrapped is None:
                    unwrapped = {key: (type(value), value.as_subclass(Tensor))
                                 for key, value in sample.items() if isinstance(value, _SPATIAL)}
                fast(op, unwrapped)
                continue
            if unwrapped is not None:
                sample.update(_rewrap(unwrapped))
                unwrapped = None
            if kind is None:
                sample = op(sample)
                if not _flat_sample_with_image(sample):  # the op changed the sample's shape: v2 from here on
                    for later in self.transforms[index + 1:]:
                        sample = later(sample)
                    return sample
                sample = dict(sample)
            else:
                _direct(op, kind, sample)
            spatial_only = _only_spatial_tensors(sample)
        if unwrapped is not None:
            sample.update(_rewrap(unwrapped))
        return sample


def _step(op: Any) -> tuple[str | None, Callable[[Any, Unwrapped], None] | None]:
    """(``"plain"``/``"random_apply"`` when ``op``'s forward is v2's generic one, else None; the
    unwrapped fast implementation of ``op``, if there is one)."""
    if not isinstance(op, v2.Transform) or not hasattr(op, "make_params") or not hasattr(op, "transform"):
        return None, None
    forward = type(op).forward
    if forward is v2.Transform.forward:
        kind = "plain"
    elif _RandomApplyTransform is not None and forward is _RandomApplyTransform.forward:
        kind = "random_apply"
    else:
        return None, None
    fast = _FAST.get(type(op))
    if fast is not None and not fast[0](op):
        fast = None
    return kind, fast[1] if fast else None


def _direct(op: Any, kind: str, sample: dict[str, Any]) -> None:
    """What v2's ``Transform.forward`` does to a flat dict sample holding an image, in place,
    without its pytree bookkeeping."""
    op.check_inputs(list(sample.values()))
    if kind == "random_apply" and torch.rand(1) >= op.p:
        return
    targets = [key for key, value in sample.items() if not is_pure_tensor(value) and check_type(value, op._transformed_types)]
    params = op.make_params([sample[key] for key in targets])
    for key in targets:
        sample[key] = op.transform(sample[key], params)


def _flat_sample_with_image(sample: Any) -> bool:
    """A dict whose values are leaves (no containers, which v2 would flatten into more inputs),
    one of them an explicit image (so that v2 passes plain tensors through)."""
    if type(sample) is not dict:
        return False
    values = sample.values()
    return (not any(isinstance(v, (dict, list, tuple)) for v in values)
            and any(isinstance(v, _EXPLICIT_IMAGES) for v in values))


def _only_spatial_tensors(sample: dict[str, Any]) -> bool:
    """Every value an op could transform is an image or a mask: the others are plain tensors (which
    v2 passes through beside an image) or plain Python values, never a PIL image, an array, boxes
    or a video."""
    def passive(value: Any) -> bool:
        if isinstance(value, Tensor):
            return isinstance(value, _SPATIAL) or is_pure_tensor(value)
        return isinstance(value, (int, float, str, bytes, type(None)))

    return all(passive(value) for value in sample.values())


def _rewrap(unwrapped: Unwrapped) -> dict[str, Any]:
    return {key: tensor.as_subclass(kind) for key, (kind, tensor) in unwrapped.items()}


# ---------------------------------------------------------------- the unwrapped ops


def _no_input_checks(op: Any) -> bool:
    """``op`` checks nothing the fast path could skip: v2's no-op ``check_inputs``, or Normalize's,
    which only refuses PIL images (the fast path never sees one)."""
    return type(op).check_inputs is v2.Transform.check_inputs or isinstance(op, v2.Normalize)


def _crop_applies(op: v2.RandomCrop) -> bool:
    fill = op.fill
    return (_no_input_checks(op) and op.padding_mode == "constant"
            and (fill is None or (isinstance(fill, (int, float)) and not isinstance(fill, bool))))


def _random_crop(op: v2.RandomCrop, unwrapped: Unwrapped) -> None:
    params = op.make_params([tensor for _, tensor in unwrapped.values()])  # the same draws as v2's forward
    fill = float(op.fill or 0)
    left, top, right, bottom = params["padding"]
    for key, (kind, tensor) in unwrapped.items():
        if params["needs_pad"]:  # TF.pad_image's constant-mode scalar-fill arithmetic
            tensor = F.pad(tensor, [left, right, top, bottom], mode="constant", value=fill)
        if params["needs_crop"]:
            tensor = TF.crop_image(tensor, params["top"], params["left"], params["height"], params["width"])
        unwrapped[key] = (kind, tensor)


def _random_flip(op: v2.RandomHorizontalFlip, unwrapped: Unwrapped) -> None:
    if torch.rand(1) >= op.p:  # _RandomApplyTransform.forward's draw
        return
    for key, (kind, tensor) in unwrapped.items():
        unwrapped[key] = (kind, tensor.flip(-1))  # TF.horizontal_flip_image (and _mask)


def _to_image(op: v2.ToImage, unwrapped: Unwrapped) -> None:
    """Images and masks are tv_tensors already: ToImage leaves them as they are."""


def _to_dtype_applies(op: v2.ToDtype) -> bool:
    return isinstance(op.dtype, torch.dtype)


def _to_dtype(op: v2.ToDtype, unwrapped: Unwrapped) -> None:
    for key, (kind, tensor) in unwrapped.items():
        if issubclass(kind, tv_tensors.Image):  # a single dtype converts images (and videos) only
            unwrapped[key] = (kind, TF.to_dtype_image(tensor, op.dtype, scale=op.scale))


_NORMALISERS: dict[tuple[tuple[float, ...], tuple[float, ...], torch.dtype], tuple[Tensor, Tensor]] = {}


def _normalize(op: v2.Normalize, unwrapped: Unwrapped) -> None:
    for key, (kind, tensor) in unwrapped.items():
        if not issubclass(kind, tv_tensors.Image):
            continue
        if not tensor.is_floating_point() or tensor.ndim < 3 or not all(op.std) or tensor.device.type != "cpu":
            unwrapped[key] = (kind, TF.normalize_image(tensor, op.mean, op.std, op.inplace))  # its checks and errors
            continue
        cache_key = (tuple(op.mean), tuple(op.std), tensor.dtype)
        if cache_key not in _NORMALISERS:  # TF.normalize_image's arithmetic, its mean and std made once
            _NORMALISERS[cache_key] = (torch.as_tensor(op.mean, dtype=tensor.dtype).view(-1, 1, 1),
                                       torch.as_tensor(op.std, dtype=tensor.dtype).view(-1, 1, 1))
        mean, std = _NORMALISERS[cache_key]
        shifted = tensor.sub_(mean) if op.inplace else tensor.sub(mean)
        unwrapped[key] = (kind, shifted.div_(std))


_FAST: dict[type, tuple[Callable[[Any], bool], Callable[[Any, Unwrapped], None]]] = {
    v2.RandomCrop: (_crop_applies, _random_crop),
    v2.RandomHorizontalFlip: (_no_input_checks, _random_flip),
    v2.ToImage: (_no_input_checks, _to_image),
    v2.ToDtype: (_to_dtype_applies, _to_dtype),
    v2.Normalize: (_no_input_checks, _normalize),
}
"""Exact op type → (does this instance qualify, its unwrapped implementation)."""
