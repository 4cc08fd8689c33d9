"""``FastCompose``: torchvision's ``v2.Compose`` with the same results for kdlens's dict samples, at a
fraction of the per-sample cost.

For a small image, most of a v2 pipeline's time goes to bookkeeping that every op repeats: flattening
the sample into a pytree, deciding input by input what to transform, and unflattening it again
(about 0.5 ms per 32×32 sample for crop, flip, dtype and normalise: a second per epoch of 1,800
images on a CPU, more than the model's own step on small networks). For a flat dict sample with an
explicit image, v2's rule for which inputs an op transforms reduces to "every tv_tensor (and PIL
image) of the op's transformed types; plain tensors and other values pass through", so each op's
own ``make_params``/``transform`` can be called directly on those inputs: the same kernels, the
same parameters, the same random draws in the same order (bit-identical output;
``tests/test_data.py`` checks it against ``v2.Compose``). Any other sample (nested containers, no
explicit image) and any op that overrides ``forward`` (``RandomApply``, ``Lambda``, nested
``Compose`` ...) take v2's own path."""

from __future__ import annotations

from typing import Any

import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2._utils import check_type, is_pure_tensor

try:  # v2's random-apply base (e.g. RandomHorizontalFlip); private, so optional
    from torchvision.transforms.v2._transform import _RandomApplyTransform
except ImportError:  # pragma: no cover - other torchvision layouts take v2's own path
    _RandomApplyTransform = None

_EXPLICIT_IMAGES = (tv_tensors.Image, tv_tensors.Video, PIL.Image.Image)


def _direct_kind(op: Any) -> str | None:
    """``"plain"`` / ``"random_apply"`` when ``op``'s forward is v2's generic one (so that calling its
    ``make_params`` and ``transform`` directly is what its forward does), else None."""
    if not isinstance(op, v2.Transform) or not hasattr(op, "make_params") or not hasattr(op, "transform"):
        return None
    forward = type(op).forward
    if forward is v2.Transform.forward:
        return "plain"
    if _RandomApplyTransform is not None and forward is _RandomApplyTransform.forward:
        return "random_apply"
    return None


class FastCompose(v2.Compose):
    """``v2.Compose`` whose ops, on a flat dict sample holding an image, skip v2's per-op pytree
    bookkeeping (see the module's docstring); identical results."""

    def __init__(self, transforms: Any) -> None:
        super().__init__(transforms)
        self._kinds = [_direct_kind(op) for op in self.transforms]

    def forward(self, *inputs: Any) -> Any:
        if len(inputs) != 1 or not _flat_sample_with_image(inputs[0]):
            return super().forward(*inputs)
        sample = dict(inputs[0])
        for index, (op, kind) in enumerate(zip(self.transforms, self._kinds)):
            if kind is None:
                sample = op(sample)
                if not _flat_sample_with_image(sample):  # an op changed the sample's shape: v2's path from here
                    for later in self.transforms[index + 1:]:
                        sample = later(sample)
                    return sample
                continue
            values = list(sample.values())
            op.check_inputs(values)
            if kind == "random_apply" and torch.rand(1) >= op.p:
                continue
            targets = [key for key, value in sample.items()
                       if not is_pure_tensor(value) and check_type(value, op._transformed_types)]
            params = op.make_params([sample[key] for key in targets])
            for key in targets:
                sample[key] = op.transform(sample[key], params)
        return sample


def _flat_sample_with_image(sample: Any) -> bool:
    """A dict whose values are leaves (no containers, which v2 would flatten into more inputs),
    one of them an explicit image (so that v2 passes plain tensors through)."""
    if type(sample) is not dict:
        return False
    values = sample.values()
    return (not any(isinstance(v, (dict, list, tuple)) for v in values)
            and any(isinstance(v, _EXPLICIT_IMAGES) for v in values))

