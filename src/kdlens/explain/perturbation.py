"""Perturbation attributions: occlusion (Captum), and LIME and KernelSHAP on superpixels.

LIME and KernelSHAP are batched here rather than run through Captum's ``Lime``/``KernelShap``,
which build, weigh and evaluate one perturbation at a time in Python for one image at a time:
all coalitions of a batch are drawn at once, the perturbed images are assembled and evaluated
``chunk_size`` per forward pass, and every image's weighted least-squares surrogate is solved in
one batched linear solve (in float64). The explained score is the target logit, as for every kdlens method
(the ``lime`` package explains probabilities). Coalitions are drawn from torch's global RNG.

Superpixels: SLIC (default; ``n_segments``, compactness 10) or quickshift (the ``lime``
package's default: kernel 4, max distance 200, ratio 0.2) from scikit-image, computed per image
on the image min-max scaled to [0, 1]; or any per-sample ``feature_mask`` (B, 1, H, W) of
integer labels. Images of a batch may have different numbers of superpixels: shorter ones are
padded with features that cover no pixel, which get zero attribution and, being null players,
leave the Shapley values of the real ones unchanged.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from captum import attr as captum_attr
from skimage.segmentation import quickshift, slic
from torch import Tensor

from kdlens.engine import inference_forward
from kdlens.explain.base import Explainer, ExplainError, grid_chunks, per_sample_chunks, register_explainer

Superpixels = Literal["slic", "quickshift"]
Baseline = Literal["mean"] | float


@register_explainer("occlusion")
class Occlusion(Explainer):
    """Occlusion (Zeiler & Fergus 2014), by Captum: the drop of the target logit when a
    ``window``² patch (all channels) is set to ``baseline``, averaged over the windows covering
    each pixel. Defaults scale with the image: window = side/8, stride = window/2 (15×15 windows
    at any size). Windows of the whole batch are evaluated ``chunk_size`` images per pass."""

    expands_batch = True

    def _attribute(
        self,
        x: Tensor,
        target: Tensor,
        *,
        chunk_size: int,
        window: int | None = None,
        stride: int | None = None,
        baseline: float = 0.0,
    ) -> Tensor:
        window = window or max(1, round(min(x.shape[-2:]) / 8))
        stride = stride or max(1, window // 2)
        channels = x.shape[1]
        with torch.no_grad():
            attribution = captum_attr.Occlusion(inference_forward(self.model)).attribute(
                x, target=target, sliding_window_shapes=(channels, window, window), strides=(channels, stride, stride),
                baselines=baseline, perturbations_per_eval=per_sample_chunks(len(x), chunk_size),
            )
        return attribution[:, :1]  # windows span every channel, so all channels hold the same map


@register_explainer("lime")
class Lime(Explainer):
    """LIME (Ribeiro et al. 2016) for images, as the ``lime`` package does it: ``samples``
    coalitions, each superpixel kept with probability ½ (the first keeps all), replaced ones set
    to ``baseline`` ("mean": the superpixel's mean colour, lime's default; or a number in
    normalised input space); weights sqrt(exp(−d²/w²)) of the cosine distance d to the
    all-kept coalition (w = ``kernel_width``); ridge regression with intercept (``alpha``)."""

    expands_batch = True

    def _attribute(
        self,
        x: Tensor,
        target: Tensor,
        *,
        chunk_size: int,
        samples: int = 1000,
        superpixels: Superpixels = "slic",
        n_segments: int = 50,
        feature_mask: Tensor | None = None,
        baseline: Baseline = "mean",
        kernel_width: float = 0.25,
        alpha: float = 1.0,
    ) -> Tensor:
        segments, real = _superpixels(x, superpixels, n_segments, feature_mask)
        coalitions = (torch.rand(len(real), samples, real.shape[1], device=x.device) < 0.5) & real[:, None]
        coalitions[:, 0] = real
        scores = _coalition_scores(self.model, x, target, segments, real, baseline, coalitions, chunk_size)
        kept = coalitions.sum(-1)
        cosine_distance = 1 - kept / (kept * real.sum(1, keepdim=True)).sqrt().clamp_min(1e-12)
        weights = torch.exp(-cosine_distance.pow(2) / kernel_width**2).sqrt()
        coefficients = weighted_ridge(coalitions.double(), scores.double(), weights.double(), alpha)
        return _superpixel_map(coefficients.to(x.dtype), segments)


@register_explainer("kernelshap")
class KernelShap(Explainer):
    """KernelSHAP (Lundberg & Lee 2017) over superpixels: coalition sizes s drawn ∝ the Shapley
    kernel (M−1)/(s(M−s)), members uniform given s, plus the empty and full coalitions; replaced
    superpixels set to ``baseline`` (default 0: the dataset mean in normalised input space). The
    least-squares fit is solved with the efficiency constraint Σφ = f(x) − f(baseline) exactly
    (as the ``shap`` package does; Captum approximates it with weight 10⁶). Draw well more
    ``samples`` than there are superpixels."""

    expands_batch = True

    def _attribute(
        self,
        x: Tensor,
        target: Tensor,
        *,
        chunk_size: int,
        samples: int = 1000,
        superpixels: Superpixels = "slic",
        n_segments: int = 50,
        feature_mask: Tensor | None = None,
        baseline: Baseline = 0.0,
    ) -> Tensor:
        segments, real = _superpixels(x, superpixels, n_segments, feature_mask)
        if samples < 3 or int(real.sum(1).min()) < 2:
            raise ExplainError("kernelshap needs samples >= 3 and at least 2 superpixels per image")
        coalitions = torch.cat([real[:, None], torch.zeros_like(real)[:, None], _shapley_coalitions(real, samples - 2)], 1)
        scores = _coalition_scores(self.model, x, target, segments, real, baseline, coalitions, chunk_size)
        full, empty = scores[:, 0], scores[:, 1]
        gains = (scores[:, 2:] - empty[:, None]).double()
        shapley = constrained_least_squares(coalitions[:, 2:].double(), gains, real, (full - empty).double())
        return _superpixel_map(shapley.to(x.dtype), segments)


def _shapley_coalitions(real: Tensor, samples: int) -> Tensor:
    """(B, samples, width) coalitions of the real features, sizes drawn ∝ the Shapley kernel."""
    batch, width = real.shape
    sizes = torch.arange(1, width, device=real.device, dtype=torch.float32)
    players = real.sum(1, keepdim=True).float()
    kernel = torch.where(sizes < players, (players - 1) / (sizes * (players - sizes)), torch.zeros_like(sizes))
    drawn_sizes = torch.multinomial(kernel, samples, replacement=True) + 1
    # The `size` smallest of uniform keys (padding's keys ranked last) are a uniform subset of that size.
    keys = torch.rand(batch, samples, width, device=real.device).masked_fill(~real[:, None], 2.0)
    return keys.argsort(-1).argsort(-1) < drawn_sizes[..., None]


def weighted_ridge(design: Tensor, targets: Tensor, weights: Tensor, alpha: float) -> Tensor:
    """Per batch element, the coefficients of ridge regression with an (unpenalised) intercept:
    argmin Σ_i w_i (y_i − b − z_iᵀβ)² + α‖β‖², as scikit-learn's Ridge with sample weights.
    design (B, n, k), targets and weights (B, n) -> (B, k)."""
    total = weights.sum(1, keepdim=True)
    design_mean = (weights[..., None] * design).sum(1, keepdim=True) / total[..., None]
    target_mean = (weights * targets).sum(1, keepdim=True) / total
    centred = design - design_mean
    weighted = centred * weights[..., None]
    gram = weighted.transpose(1, 2) @ centred + alpha * torch.eye(design.shape[-1], device=design.device)
    return torch.linalg.solve(gram, weighted.transpose(1, 2) @ (targets - target_mean)[..., None]).squeeze(-1)


def constrained_least_squares(design: Tensor, targets: Tensor, active: Tensor, total: Tensor) -> Tensor:
    """argmin ‖y − Zφ‖² subject to Σ_active φ = total and φ = 0 off ``active``, per batch element,
    by its KKT system. design (B, n, k), targets (B, n), active (B, k) bool, total (B,) -> (B, k).
    A ridge of 10⁻⁶ × the mean diagonal of ZᵀZ keeps it solvable with fewer samples than features."""
    batch, _, width = design.shape
    constraint = active.to(design.dtype)
    gram = design.transpose(1, 2) @ design
    ridge = 1e-6 * gram.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1.0)
    kkt = design.new_zeros(batch, width + 1, width + 1)
    kkt[:, :width, :width] = gram + torch.diag_embed(1 - constraint + ridge[:, None] * constraint)
    kkt[:, :width, width] = constraint
    kkt[:, width, :width] = constraint
    rhs = torch.cat([(design.transpose(1, 2) @ targets[..., None]).squeeze(-1), total[:, None]], 1)
    return torch.linalg.solve(kkt, rhs)[:, :width]


def _superpixels(x: Tensor, method: Superpixels, n_segments: int, feature_mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """(B, H, W) labels 0..K_b−1 and the (B, max K) bool mask of which labels each image has."""
    segments = (superpixel_labels(x, method, n_segments) if feature_mask is None
                else _relabel(feature_mask.to(x.device).reshape(len(x), *x.shape[-2:])))
    counts = segments.amax((1, 2)) + 1
    return segments, torch.arange(int(counts.max()), device=x.device) < counts[:, None]


def superpixel_labels(x: Tensor, method: Superpixels = "slic", n_segments: int = 50) -> Tensor:
    """(B, H, W) long superpixel labels 0..K_b−1 per image, from scikit-image on the CPU."""
    images = x.detach().float().cpu()
    low = images.amin((1, 2, 3), keepdim=True)
    images = (images - low) / (images.amax((1, 2, 3), keepdim=True) - low).clamp_min(1e-12)
    labels = []
    for image in images.permute(0, 2, 3, 1).double().numpy():
        if method == "slic":
            labels.append(slic(image, n_segments=n_segments, compactness=10.0, start_label=0, channel_axis=-1))
        elif method == "quickshift":
            labels.append(quickshift(image, kernel_size=4, max_dist=200, ratio=0.2, convert2lab=image.shape[-1] == 3))
        else:
            raise ExplainError(f"superpixels must be 'slic' or 'quickshift', got '{method}'")
    return _relabel(torch.from_numpy(np.stack(labels)).to(x.device))


def _relabel(labels: Tensor) -> Tensor:
    """Labels made consecutive from 0 within each image."""
    return torch.stack([torch.unique(image, return_inverse=True)[1] for image in labels.long()])


def _superpixel_map(coefficients: Tensor, segments: Tensor) -> Tensor:
    """(B, K) per-superpixel values painted onto their pixels: (B, 1, H, W)."""
    return coefficients.gather(1, segments.flatten(1)).view(len(segments), 1, *segments.shape[1:])


def _baseline_image(x: Tensor, segments: Tensor, real: Tensor, baseline: Baseline) -> Tensor:
    """What replaced superpixels show: each superpixel's mean colour, or a constant."""
    if baseline != "mean":
        return torch.full_like(x, float(baseline))
    batch, channels = x.shape[:2]
    index = segments.flatten(1)[:, None].expand(-1, channels, -1)
    sums = x.new_zeros(batch, channels, real.shape[1]).scatter_add_(2, index, x.flatten(2))
    counts = x.new_zeros(batch, 1, real.shape[1]).scatter_add_(2, index[:, :1], torch.ones_like(x[:, :1].flatten(2)))
    return (sums / counts.clamp_min(1)).gather(2, index).view_as(x)


def _coalition_scores(
    model: torch.nn.Module,
    x: Tensor,
    target: Tensor,
    segments: Tensor,
    real: Tensor,
    baseline: Baseline,
    coalitions: Tensor,
    chunk_size: int,
) -> Tensor:
    """(B, samples) target logits of every image with each of its coalitions applied (the superpixels
    left out show ``baseline``, see :func:`_baseline_image`)."""
    replacement = _baseline_image(x, segments, real, baseline)
    batch, samples = coalitions.shape[:2]
    pixels = segments.flatten(1)
    forward = inference_forward(model)
    scores = []
    with torch.no_grad():
        for sample, coalition in grid_chunks(batch, samples, chunk_size, x.device):
            keep = coalitions[sample, coalition].gather(1, pixels[sample]).view(len(sample), 1, *x.shape[-2:])
            logits = forward(torch.where(keep, x[sample], replacement[sample]))
            scores.append(logits.gather(1, target[sample, None]).squeeze(1))
    return torch.cat(scores).view(batch, samples)
