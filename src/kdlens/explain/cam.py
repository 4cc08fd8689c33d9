"""The CAM family on any 4-D layer, batched: class activation maps from classifier weights,
gradients, input masking, channel ablation and principal components.

Every map is ``Σ_ch w[b, ch] · A[b, ch]`` (or an element-wise weighting) at the layer's
resolution, then post-processed by :func:`finish_cam`:

* ``relu=True`` (default): keep the positive evidence, as every CAM paper and pytorch-grad-cam do;
* bilinear resize to the input size (``align_corners=False``, i.e. OpenCV's ``INTER_LINEAR``);
* ``normalize=False`` (default): raw values, which is what explanation losses (REFERENCE §1) and
  comparisons of magnitudes between teacher and student need; ``normalize=True``: pytorch-grad-cam's
  convention, each map min-max scaled to [0, 1] at the layer's resolution and again after resizing
  (``(m - min) / (max - min + 1e-7)``), so that maps agree with pytorch-grad-cam's to float precision.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlens.explain.base import (
    ExplainError,
    LayerExplainer,
    grid_chunks,
    register_explainer,
    require_autograd,
)
from kdlens.engine import inference_forward
from kdlens.explain.layers import ModelSplit, layer_activations, layer_gradients
from kdlens.models import resolve_module


def weighted_channel_sum(weights: Tensor, activations: Tensor) -> Tensor:
    """(B, C) channel weights × (B, C, h, w) activations -> (B, h, w)."""
    return torch.einsum("bc,bchw->bhw", weights, activations)


def min_max(maps: Tensor, eps: float) -> Tensor:
    """Each (…, h, w) map scaled to [0, 1] as pytorch-grad-cam does: (m − min) / (max − min + eps)."""
    low = maps.amin((-2, -1), keepdim=True)
    high = maps.amax((-2, -1), keepdim=True)
    return (maps - low) / (high - low + eps)


def finish_cam(cam: Tensor, size: torch.Size | tuple[int, int], *, relu: bool, normalize: bool) -> Tensor:
    """(B, h, w) layer-resolution maps -> (B, 1, H, W) maps at the input size (see module doc)."""
    cam = cam.unsqueeze(1)
    if relu:
        cam = F.relu(cam)
    if normalize:
        cam = min_max(cam, 1e-7)
    cam = F.interpolate(cam, size=tuple(size), mode="bilinear", align_corners=False)
    return min_max(cam, 1e-7) if normalize else cam


@register_explainer("cam")
class CAM(LayerExplainer):
    """Class activation map (Zhou et al. 2016) from the classifier weights: for a model ending in
    global average pooling and one linear layer, ``ReLU(s · Σ_ch W[c, ch] · A[ch])``.

    ``channel_mean=True`` (default) uses s = 1/C, the Exp-KD convention of REFERENCE §1, whose
    published loss weights β assume it; ``channel_mean=False`` gives the plain sum of the CAM paper.
    They differ by the constant C only, which min-max normalisation and cosine losses remove but
    MSE losses do not. The plain sum equals Grad-CAM × h·w for such a model.
    ``classifier`` is the module path of that linear layer (default: the model's last nn.Linear).
    """

    differentiable = True

    def _attribute(
        self,
        x: Tensor,
        target: Tensor,
        *,
        create_graph: bool,
        classifier: str | None = None,
        channel_mean: bool = True,
        relu: bool = True,
        normalize: bool = False,
    ) -> Tensor:
        linear = self._classifier(classifier)
        if create_graph:
            require_autograd()
        with torch.set_grad_enabled(create_graph):
            _, activations = layer_activations(self.model, self.layer_path(x), x)
            if activations.shape[1] != linear.in_features:
                raise ExplainError(
                    f"layer '{self.layer_path(x)}' has {activations.shape[1]} channels but the classifier takes "
                    f"{linear.in_features} features; CAM needs the feature map that is pooled into the classifier"
                )
            weights = linear.weight[target]
            if channel_mean:
                weights = weights / activations.shape[1]
            cam = weighted_channel_sum(weights, activations)
            return finish_cam(cam, x.shape[-2:], relu=relu, normalize=normalize)

    def _classifier(self, path: str | None) -> nn.Linear:
        if path is not None:
            module = resolve_module(self.model, path)
            if not isinstance(module, nn.Linear):
                raise ExplainError(f"classifier '{path}' is a {type(module).__name__}, not an nn.Linear")
            return module
        linears = [m for m in self.model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ExplainError(f"{type(self.model).__name__} has no nn.Linear classifier; CAM needs one")
        return linears[-1]


class GradientCAM(LayerExplainer):
    """A CAM built from the layer's activations A and the gradient G of the target logit with
    respect to them; subclasses say how the two combine into a (B, h, w) map."""

    differentiable = True

    def _attribute(
        self, x: Tensor, target: Tensor, *, create_graph: bool, relu: bool = True, normalize: bool = False
    ) -> Tensor:
        activations, grads = layer_gradients(self.model, self.layer_path(x), x, target, create_graph)
        return finish_cam(self.combine(activations, grads), x.shape[-2:], relu=relu, normalize=normalize)

    @staticmethod
    @abstractmethod
    def combine(activations: Tensor, grads: Tensor) -> Tensor: ...


@register_explainer("gradcam")
class GradCAM(GradientCAM):
    """Grad-CAM (Selvaraju et al. 2017): channel weights are the spatial mean of the gradient."""

    @staticmethod
    def combine(activations: Tensor, grads: Tensor) -> Tensor:
        return weighted_channel_sum(grads.mean((2, 3)), activations)


@register_explainer("gradcampp")
class GradCAMPlusPlus(GradientCAM):
    """Grad-CAM++ (Chattopadhay et al. 2018, eq. 19) with the exponential's higher-order gradients
    approximated by powers of the first, as in its reference code and pytorch-grad-cam."""

    @staticmethod
    def combine(activations: Tensor, grads: Tensor) -> Tensor:
        grads_2 = grads.pow(2)
        activation_sums = activations.sum((2, 3), keepdim=True)
        alpha = grads_2 / (2 * grads_2 + activation_sums * grads_2 * grads + 1e-6)
        alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
        return weighted_channel_sum((F.relu(grads) * alpha).sum((2, 3)), activations)


@register_explainer("xgradcam")
class XGradCAM(GradientCAM):
    """XGrad-CAM (Fu et al. 2020): the gradient averaged with the activations as weights."""

    @staticmethod
    def combine(activations: Tensor, grads: Tensor) -> Tensor:
        activation_sums = activations.sum((2, 3), keepdim=True)
        return weighted_channel_sum((grads * activations / (activation_sums + 1e-7)).sum((2, 3)), activations)


@register_explainer("hirescam")
class HiResCAM(GradientCAM):
    """HiResCAM (Draelos & Carin 2020): element-wise gradient × activation, summed over channels."""

    @staticmethod
    def combine(activations: Tensor, grads: Tensor) -> Tensor:
        return (grads * activations).sum(1)


@register_explainer("layercam")
class LayerCAM(GradientCAM):
    """LayerCAM (Jiang et al. 2021): element-wise positive gradient × activation."""

    @staticmethod
    def combine(activations: Tensor, grads: Tensor) -> Tensor:
        return (F.relu(grads) * activations).sum(1)


@register_explainer("scorecam")
class ScoreCAM(LayerExplainer):
    """Score-CAM (Wang et al. 2020): each channel, upsampled (bilinear, ``align_corners=True``
    as in the reference code) and min-max scaled, masks the input; the target logits of the
    B·C masked inputs, softmaxed over channels, weight the channels. Evaluated ``chunk_size``
    masked inputs per forward; the target is the logit, not the probability, as in pytorch-grad-cam."""

    expands_batch = True

    def _attribute(
        self, x: Tensor, target: Tensor, *, chunk_size: int, relu: bool = True, normalize: bool = False
    ) -> Tensor:
        with torch.no_grad():
            _, activations = layer_activations(self.model, self.layer_path(x), x)
            batch, channels = activations.shape[:2]
            scores = torch.cat([
                self._masked_scores(x, activations, target, sample, channel)
                for sample, channel in grid_chunks(batch, channels, chunk_size, x.device)
            ])
            cam = weighted_channel_sum(scores.view(batch, channels).softmax(1), activations)
        return finish_cam(cam, x.shape[-2:], relu=relu, normalize=normalize)

    def _masked_scores(self, x: Tensor, activations: Tensor, target: Tensor, sample: Tensor, channel: Tensor) -> Tensor:
        masks = F.interpolate(activations[sample, channel][:, None], size=x.shape[-2:], mode="bilinear", align_corners=True)
        logits = inference_forward(self.model)(x[sample] * min_max(masks, 1e-8))
        return logits.gather(1, target[sample, None]).squeeze(1)


@register_explainer("ablationcam")
class AblationCAM(LayerExplainer):
    """Ablation-CAM (Desai & Ramaswamy 2020): channel weight = relative drop of the target logit
    when that channel is zeroed, ``(y − y_ablated) / y`` (so a negative logit flips the signs, as
    in the paper and pytorch-grad-cam).

    The B·C ablated copies of the layer's output are evaluated ``chunk_size`` at a time. With
    ``prefix_skip=True`` (default) the model is cut at the layer (:class:`ModelSplit`) so that only
    the modules after it run per chunk, on :mod:`kdlens.engine` (measured on torchvision resnet18
    cut at layer3, 16 images: 2.4 s eager, 0.7 s BN-folded), and the part before it runs once per
    call; where the model cannot be cut, and with ``prefix_skip=False``, each chunk re-runs the
    whole model with a hook substituting the ablated outputs.

    Ablated channels are set to 0 (the paper). pytorch-grad-cam does the same when the layer's
    minimum is 0 (any post-ReLU layer, every default layer here) and otherwise uses min − 1e7.
    """

    expands_batch = True

    def __init__(self, model: nn.Module, layer: str | None = None) -> None:
        super().__init__(model, layer)
        self._splits: dict[str, ModelSplit | None] = {}

    def _attribute(
        self,
        x: Tensor,
        target: Tensor,
        *,
        chunk_size: int,
        prefix_skip: bool = True,
        relu: bool = True,
        normalize: bool = False,
    ) -> Tensor:
        layer = self.layer_path(x)
        with torch.no_grad():
            split = self._split(layer, x) if prefix_skip else None
            if split is None:
                logits, activations = layer_activations(self.model, layer, x)
            else:
                activations, *carried = split.prefix(x)
                logits = split.rest(activations, *carried)
            batch, channels = activations.shape[:2]
            ablated_scores = []
            for sample, channel in grid_chunks(batch, channels, chunk_size, x.device):
                ablated = activations[sample].clone()
                ablated[torch.arange(len(sample), device=x.device), channel] = 0
                if split is None:
                    ablated_logits = self._rerun_with(layer, x[sample], ablated)
                else:
                    ablated_logits = split.rest(ablated, *(value[sample] for value in carried))
                ablated_scores.append(ablated_logits.gather(1, target[sample, None]).squeeze(1))
            original = logits.gather(1, target[:, None])
            weights = (original - torch.cat(ablated_scores).view(batch, channels)) / original
            cam = weighted_channel_sum(weights, activations)
        return finish_cam(cam, x.shape[-2:], relu=relu, normalize=normalize)

    def _split(self, layer: str, x: Tensor) -> ModelSplit | None:
        if layer not in self._splits:
            self._splits[layer] = ModelSplit.at(self.model, layer, x[:2])
        return self._splits[layer]

    def _rerun_with(self, layer: str, x: Tensor, layer_output: Tensor) -> Tensor:
        handle = resolve_module(self.model, layer).register_forward_hook(lambda module, inputs, output: layer_output)
        try:
            return self.model(x)
        finally:
            handle.remove()


@register_explainer("eigencam")
class EigenCAM(LayerExplainer):
    """Eigen-CAM (Muhammad & Yeasin 2020): the projection of each position's (channel-centred)
    activation vector on the first principal direction; class-agnostic, so ``target`` is unused.

    An SVD's sign is arbitrary and differs between LAPACK builds (NumPy's and PyTorch's disagree
    about half the time), and after the ReLU the two signs give complementary maps. ``orient=True``
    (default) fixes it as Seg-Eigen-CAM (Chung & Ying 2025, eq. 13) and pytorch-grad-cam's
    ``get_2d_projection_with_sign_correction`` do: the largest-magnitude value is made positive.
    ``orient=False`` keeps the raw SVD sign, as pytorch-grad-cam's EigenCAM does.
    """

    def _attribute(
        self, x: Tensor, target: Tensor, *, orient: bool = True, relu: bool = True, normalize: bool = False
    ) -> Tensor:
        with torch.no_grad():
            _, activations = layer_activations(self.model, self.layer_path(x), x)
            positions = activations.flatten(2).transpose(1, 2).nan_to_num(0.0)  # (B, h·w, C)
            positions = positions - positions.mean(1, keepdim=True)
            _, _, vh = torch.linalg.svd(positions, full_matrices=False)
            projection = (positions @ vh[:, 0, :, None]).squeeze(-1)
            if orient:
                flip = projection.amin(1).abs() > projection.amax(1).abs()
                projection = torch.where(flip[:, None], -projection, projection)
            cam = projection.view(activations.shape[0], *activations.shape[2:])
        return finish_cam(cam, x.shape[-2:], relu=relu, normalize=normalize)
