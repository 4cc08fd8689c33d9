"""Input-gradient attributions, computed by Captum (guided backprop by our own ReLU override).

They return one value per input element; ``reduce`` turns the (B, C, H, W) attribution into one
map: ``"sum"`` (default; signed, and for IG / GradientSHAP it keeps completeness: the map sums to
the attributed logit difference), ``"abs_sum"`` (magnitude), or ``"none"`` (every channel, as
Captum returns it). Random methods (SmoothGrad, GradientSHAP) draw from torch's global RNG, as
Captum does: seed it with ``torch.manual_seed`` for reproducible maps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from captum import attr as captum_attr
from torch import Tensor
from torch.overrides import TorchFunctionMode

from kdlens.explain.base import Explainer, Reduce, per_sample_chunks, reduce_channels, register_explainer, require_autograd


def _grad_leaf(x: Tensor) -> Tensor:
    """A fresh leaf copy of ``x`` that requires grad (autograd must be enabled)."""
    require_autograd()
    return x.detach().requires_grad_()


def captum_attribution(attribute: Callable[..., Tensor], x: Tensor, target: Tensor, reduce: Reduce, **kwargs: Any) -> Tensor:
    """``attribute(x, target=target, **kwargs)`` on a fresh leaf copy of ``x`` (so Captum does not
    warn about, or touch, the caller's tensor), detached and reduced over channels."""
    return reduce_channels(attribute(_grad_leaf(x), target=target, **kwargs).detach(), reduce)


@register_explainer("saliency")
class Saliency(Explainer):
    """Saliency (Simonyan et al. 2014): |∂y_c/∂x| (``absolute=False``: the signed gradient).
    The paper takes the max over colour channels; ``reduce`` sums them (or keeps them)."""

    def _attribute(self, x: Tensor, target: Tensor, *, absolute: bool = True, reduce: Reduce = "sum") -> Tensor:
        return captum_attribution(captum_attr.Saliency(self.model).attribute, x, target, reduce, abs=absolute)


@register_explainer("inputxgradient")
class InputXGradient(Explainer):
    """Input × gradient (Shrikumar et al. 2016)."""

    def _attribute(self, x: Tensor, target: Tensor, *, reduce: Reduce = "sum") -> Tensor:
        return captum_attribution(captum_attr.InputXGradient(self.model).attribute, x, target, reduce)


@register_explainer("integrated_gradients")
class IntegratedGradients(Explainer):
    """Integrated Gradients (Sundararajan et al. 2017) from ``baseline`` (a number or a tensor
    broadcastable to x; 0 is the dataset's mean image in normalised input space) with ``steps``
    points of Captum's ``quadrature`` rule (its ``method``: gausslegendre, riemann_trapezoid, ...);
    B·steps interpolated inputs, ``chunk_size`` per pass."""

    expands_batch = True

    def _attribute(
        self,
        x: Tensor,
        target: Tensor,
        *,
        chunk_size: int,
        baseline: float | Tensor = 0.0,
        steps: int = 50,
        quadrature: str = "gausslegendre",
        reduce: Reduce = "sum",
    ) -> Tensor:
        return captum_attribution(
            captum_attr.IntegratedGradients(self.model).attribute, x, target, reduce,
            baselines=baseline, n_steps=steps, method=quadrature, internal_batch_size=chunk_size,
        )


@register_explainer("smoothgrad")
class SmoothGrad(Explainer):
    """SmoothGrad (Smilkov et al. 2017): saliency averaged over ``samples`` noisy copies,
    x + N(0, stdev²), by Captum's NoiseTunnel. ``stdev`` is in the model's input units: 0.5 on
    inputs normalised to unit std per channel is ≈ 15% of their value range, the paper's choice.
    One σ for all samples, so a sample's map does not depend on its batch-mates."""

    expands_batch = True

    def _attribute(
        self,
        x: Tensor,
        target: Tensor,
        *,
        chunk_size: int,
        samples: int = 25,
        stdev: float = 0.5,
        absolute: bool = True,
        reduce: Reduce = "sum",
    ) -> Tensor:
        tunnel = captum_attr.NoiseTunnel(captum_attr.Saliency(self.model))
        return captum_attribution(
            tunnel.attribute, x, target, reduce, nt_type="smoothgrad", nt_samples=samples, stdevs=stdev,
            nt_samples_batch_size=per_sample_chunks(len(x), chunk_size), abs=absolute,
        )


@register_explainer("gradientshap")
class GradientShap(Explainer):
    """GradientSHAP / expected gradients (Lundberg & Lee 2017; Erion et al. 2021): the mean over
    ``samples`` draws of (x − x') ⊙ ∂y_c/∂x at a uniform point between x and a baseline x' drawn
    from ``baselines`` (plus N(0, stdev²) noise on x), by Captum.

    ``baselines`` is the background distribution, (N, C, H, W): pass training images for
    expected gradients. Default: the zero image (the dataset mean in normalised space), which
    makes it a Monte-Carlo integrated gradients. B·samples inputs, ``chunk_size`` per pass.
    """

    expands_batch = True

    def _attribute(
        self,
        x: Tensor,
        target: Tensor,
        *,
        chunk_size: int,
        baselines: Tensor | None = None,
        samples: int = 50,
        stdev: float = 0.0,
        reduce: Reduce = "sum",
    ) -> Tensor:
        background = x.new_zeros(1, *x.shape[1:]) if baselines is None else baselines.to(x.device)
        explainer = captum_attr.GradientShap(self.model)
        per_pass = per_sample_chunks(len(x), chunk_size)
        total = torch.zeros_like(x)
        # Captum averages its own samples; equal-weight chunks of them average to the same estimate.
        for start in range(0, samples, per_pass):
            drawn = min(per_pass, samples - start)
            total += drawn * captum_attribution(
                explainer.attribute, x, target, "none", baselines=background, n_samples=drawn, stdevs=stdev
            )
        return reduce_channels(total / samples, reduce)


@register_explainer("guided_backprop")
class GuidedBackprop(Explainer):
    """Guided backpropagation (Springenberg et al. 2015): the gradient with every ReLU passing
    back only positive gradients where its input was positive.

    Captum's GuidedBackprop overrides ``nn.ReLU`` modules only, so on models that call
    ``F.relu`` (the CIFAR ResNets and WRNs here) it silently returns the plain gradient. This
    version intercepts every ReLU of the forward (``nn.ReLU``, ``F.relu``, ``torch.relu``,
    ``Tensor.relu``) with a torch function mode; on models with ``nn.ReLU`` modules only, it
    equals Captum's.
    """

    def _attribute(self, x: Tensor, target: Tensor, *, reduce: Reduce = "sum") -> Tensor:
        leaf = _grad_leaf(x)
        with torch.enable_grad(), _GuidedReLUs():
            score = self.model(leaf).gather(1, target[:, None]).sum()
        (grads,) = torch.autograd.grad(score, leaf)
        return reduce_channels(grads, reduce)


class _GuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        output = x.clamp(min=0)
        ctx.save_for_backward(output)
        return output

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> Tensor:
        (output,) = ctx.saved_tensors
        return grad_output.clamp(min=0) * (output > 0)


class _GuidedReLUs(TorchFunctionMode):
    _RELUS = frozenset({F.relu, torch.relu, Tensor.relu})

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func in self._RELUS:
            return _GuidedReLU.apply(args[0])  # in-place requests (inplace=True) run out of place
        return func(*args, **(kwargs or {}))
