"""B-cos networks (Böhle et al., CVPR 2022; TPAMI 2024 "B-cos v2"): dynamic-linear CIFAR ResNets
whose logits are exactly W(x)·x, so that W(x) is a faithful explanation.

A B-cos unit computes (ŵᵀx)·|cos(x, ŵ)|^(B−1) with a unit-norm weight ŵ and no bias; with no
activation layers, it is the network's only non-linearity. The ResNets here are the kdlens CIFAR
ResNets (same stages, same module paths ``layer1..3``) with every conv a B-cos conv, no ReLU, and
after each conv B-cos v2's uncentred position norm without bias (:class:`PositionNorm`) in place of
BatchNorm. The position norm is per sample, so no sample depends on its batch-mates and train and
eval modes compute the same function. Without any normalisation (the v1 CIFAR setting) the output
scale shrinks by ~√(3/d) per unit at initialisation (d = k²·C_in) and grows with alignment: with
kdlens' SGD recipe such a net stays at chance, and the fixed per-layer gains tried (v1's 100/√d,
the variance-preserving √(d/3)) diverge; only Adam, the papers' optimiser, trains it. Even with
the norms B-cos nets are sharper than BatchNorm ResNets: train them with Adam (lr 1e-3, as the
papers) or SGD at lr ≤ 0.01; at SGD lr 0.05 the loss of a fixed batch spikes within ~10 steps. The
head is v2's: a 1×1 B-cos conv (``fc``) scores every position of
the last stage and the logits are the spatial mean of its output (no logit bias: a constant bias
does not change a softmax; v2's BCE training adds one in the loss, see the ``bce`` loss term).
The ``bcos_v2_*`` variants add v2's MaxOut: every unit computes two linear outputs and keeps the
larger before the B-cos scaling (still W(x)·x, with W(x) the winning rows).

Inputs. B-cos nets read images in [0, 1] encoded as [x, 1 − x] (:class:`AddInverse`), so that
colour is a direction and dark pixels still have a norm. kdlens datasets deliver normalised images
and ``create_model`` is not told the statistics, so each model starts with :class:`Denormalize`:
x·std + mean with ``mean``/``std`` buffers that default to 0 and 1 (the input is taken to be in
[0, 1] already) and are set once with :meth:`BcosResNet.set_input_normalization`. They are saved
with the weights, so a checkpoint restores them.

Explanations. Inside ``model.explanation_mode()`` every dynamic scale, |cos|^(B−1) of the B-cos
units and the std of the position norms, is detached, so the model is linear in its encoded input z =
:meth:`BcosResNet.encode_input` (images) given the scales, and logit_c = Σ ∂logit_c/∂z ⊙ z exactly.
Contributions are taken with respect to z (2·C channels), not the images: denormalising and
AddInverse are affine, not linear.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlens.models import cifar_resnet
from kdlens.models.base import init_weights, register_model
from kdlens.models.cifar_resnet import cifar_blocks_per_stage

_NORM_EPS = 1e-6
"""Added to the squared input norm (a zero patch, e.g. padding, would divide 0 by 0) and to |cos|
(for B < 2, |cos|^(B−1) has an infinite slope at 0); as in the B-cos v2 code."""


class DynamicLinear:
    """A layer computing s(x)·L(x) with L linear and s(x) a data-dependent scale that
    ``explanation_mode`` detaches (so the layer is linear in x for autograd)."""

    detach_dynamic_scale: bool = False


class _BcosUnit(DynamicLinear):
    """The B-cos non-linearity shared by the conv and linear layers (mixed in before them).
    ``max_out`` > 1: each output has that many weight rows (stored consecutively) and keeps the
    largest ŵᵀx (B-cos v2's MaxOut)."""

    def __init__(self, *args, b: float, max_out: int = 1, **kwargs) -> None:
        super().__init__(*args, bias=False, **kwargs)
        if b < 1:
            raise ValueError(f"B-cos exponent B must be >= 1, got {b}")
        if max_out < 1:
            raise ValueError(f"max_out must be >= 1, got {max_out}")
        self.b = b
        self.max_out = max_out

    def _bcos(self, linear_out: Tensor, input_norm: Tensor, channel_dim: int) -> Tensor:
        """(ŵᵀx)·|cos(x, ŵ)|^(B−1) from ŵᵀx and ‖x‖, with cos = ŵᵀx / ‖x‖ since ‖ŵ‖ = 1 (after
        the MaxOut over each output's ``max_out`` rows along ``channel_dim``)."""
        if self.max_out > 1:
            grouped = linear_out.unflatten(channel_dim, (-1, self.max_out))
            linear_out = grouped.amax(channel_dim + 1 if channel_dim >= 0 else channel_dim)
        scale = (linear_out / input_norm).abs().add(_NORM_EPS).pow(self.b - 1)
        if self.detach_dynamic_scale:
            scale = scale.detach()
        return scale * linear_out


class BcosConv2d(_BcosUnit, nn.Conv2d):
    """B-cos convolution: each output is (ŵᵀx)·|cos(x, ŵ)|^(B−1) for its input patch x, with ŵ the
    output channel's kernel scaled to unit norm. No bias, one group, zero padding. The norm of every
    patch is √(conv(Σ_channels x², ones kernel)), computed without unfolding."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 b: float = 2.0, max_out: int = 1) -> None:
        super().__init__(in_channels, out_channels * max_out, kernel_size, stride=stride, padding=padding, b=b,
                         max_out=max_out)

    def forward(self, x: Tensor) -> Tensor:
        unit_weight = F.normalize(self.weight.flatten(1), dim=1).view_as(self.weight)
        linear_out = self._conv_forward(x, unit_weight, None)
        ones = x.new_ones(1, 1, *self.kernel_size)
        squared_norm = F.conv2d(x.pow(2).sum(dim=1, keepdim=True), ones, None, self.stride, self.padding, self.dilation)
        return self._bcos(linear_out, squared_norm.add(_NORM_EPS).sqrt(), channel_dim=1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, B={self.b}" + (f", max_out={self.max_out}" if self.max_out > 1 else "")


class BcosLinear(_BcosUnit, nn.Linear):
    """B-cos linear layer: output j is (ŵ_jᵀx)·|cos(x, ŵ_j)|^(B−1), ŵ_j row j at unit norm; no bias."""

    def __init__(self, in_features: int, out_features: int, b: float = 2.0, max_out: int = 1) -> None:
        super().__init__(in_features, out_features * max_out, b=b, max_out=max_out)

    def forward(self, x: Tensor) -> Tensor:
        linear_out = F.linear(x, F.normalize(self.weight, dim=1))
        return self._bcos(linear_out, x.pow(2).sum(dim=-1, keepdim=True).add(_NORM_EPS).sqrt(), channel_dim=-1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, B={self.b}" + (f", max_out={self.max_out}" if self.max_out > 1 else "")


class PositionNorm(DynamicLinear, nn.LayerNorm):
    """B-cos v2's uncentred position norm without bias: at each position, x / std over channels,
    times a learnable per-channel weight. Per sample, so train and eval agree and no sample
    affects another; the std is a dynamic scale (detached in explanation mode)."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__(channels, eps=eps, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        std = x.var(dim=1, unbiased=False, keepdim=True).add(self.eps).sqrt()
        if self.detach_dynamic_scale:
            std = std.detach()
        return self.weight[:, None, None] * (x / std)


class AddInverse(nn.Module):
    """[x, 1 − x] along the channels: (B, C, H, W) -> (B, 2C, H, W), for x in [0, 1]."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, 1 - x], dim=1)


class Denormalize(nn.Module):
    """x·std + mean per channel: undoes the dataset's normalisation (identity by default)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.std[:, None, None] + self.mean[:, None, None]


class BcosBasicBlock(nn.Module):
    """Two 3×3 B-cos convs, each followed by a position norm, plus a residual, projected by a 1×1
    B-cos conv and position norm where the shape changes. No activations: the B-cos units are the
    non-linearity."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, b: float, max_out: int = 1) -> None:
        super().__init__()
        self.conv1 = BcosConv2d(in_channels, out_channels, 3, stride=stride, padding=1, b=b, max_out=max_out)
        self.norm1 = PositionNorm(out_channels)
        self.conv2 = BcosConv2d(out_channels, out_channels, 3, padding=1, b=b, max_out=max_out)
        self.norm2 = PositionNorm(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(BcosConv2d(in_channels, out_channels, 1, stride=stride, b=b, max_out=max_out),
                                          PositionNorm(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        return self.norm2(self.conv2(self.norm1(self.conv1(x)))) + self.shortcut(x)


class BcosResNet(nn.Module):
    """A CIFAR ResNet of B-cos convs. ``fc`` is the classifier: a 1×1 B-cos conv giving class
    evidence at each position of the last stage (``layer3``); the logits are its spatial mean."""

    def __init__(
        self,
        *,
        depth: int,
        widths: tuple[int, int, int, int],
        num_classes: int,
        in_channels: int = 3,
        b: float = 2.0,
        max_out: int = 1,
    ) -> None:
        super().__init__()
        blocks_per_stage = cifar_blocks_per_stage(depth)
        self.denormalize = Denormalize(in_channels)
        self.add_inverse = AddInverse()
        self.conv1 = BcosConv2d(2 * in_channels, widths[0], 3, padding=1, b=b, max_out=max_out)
        self.norm1 = PositionNorm(widths[0])
        self.layer1 = _make_stage(widths[0], widths[1], blocks_per_stage, stride=1, b=b, max_out=max_out)
        self.layer2 = _make_stage(widths[1], widths[2], blocks_per_stage, stride=2, b=b, max_out=max_out)
        self.layer3 = _make_stage(widths[2], widths[3], blocks_per_stage, stride=2, b=b, max_out=max_out)
        self.fc = BcosConv2d(widths[3], num_classes, 1, b=b, max_out=max_out)
        init_weights(self)

    def set_input_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """The mean and std the dataset normalised its images with, so the model sees [0, 1]."""
        self.denormalize.mean.copy_(torch.as_tensor(mean, dtype=self.denormalize.mean.dtype))
        self.denormalize.std.copy_(torch.as_tensor(std, dtype=self.denormalize.std.dtype))

    def encode_input(self, images: Tensor) -> Tensor:
        """The (B, 2C, H, W) [x, 1 − x] encoding of dataset images: the input explanations are
        linear in."""
        return self.add_inverse(self.denormalize(images))

    def forward_encoded(self, encoded: Tensor) -> Tensor:
        """Logits from :meth:`encode_input`'s output."""
        x = self.layer3(self.layer2(self.layer1(self.norm1(self.conv1(encoded)))))
        return self.fc(x).mean(dim=(2, 3))

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_encoded(self.encode_input(images))

    @contextmanager
    def explanation_mode(self) -> Iterator[BcosResNet]:
        """Within the block, the dynamic scales are constants for autograd: logits = W(z)·z with
        W(z) = ∂logits/∂z, z = :meth:`encode_input` (images). The previous state is restored on exit."""
        layers = [m for m in self.modules() if isinstance(m, DynamicLinear)]
        previous = [layer.detach_dynamic_scale for layer in layers]
        for layer in layers:
            layer.detach_dynamic_scale = True
        try:
            yield self
        finally:
            for layer, detach in zip(layers, previous):
                layer.detach_dynamic_scale = detach


def _make_stage(in_channels: int, out_channels: int, num_blocks: int, stride: int, b: float,
                max_out: int) -> nn.Sequential:
    blocks = [BcosBasicBlock(in_channels, out_channels, stride, b, max_out)]
    blocks += [BcosBasicBlock(out_channels, out_channels, 1, b, max_out) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


for _base in ("resnet8", "resnet20", "resnet56", "resnet8x4", "resnet32x4"):
    _depth, _widths = cifar_resnet._VARIANTS[_base]
    for _prefix, _max_out in (("bcos", 1), ("bcos_v2", 2)):
        register_model(
            f"{_prefix}_{_base}",
            partial(BcosResNet, depth=_depth, widths=_widths, max_out=_max_out),
            family="bcos",
            stages=("layer1", "layer2", "layer3"),
            # The 1×1 B-cos conv applied to the last stage before pooling (see BcosResNet).
            classifier="fc",
            input_normalization=True,  # Denormalize: set_input_normalization(mean, std)
        )
