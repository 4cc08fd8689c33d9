"""Explanations of image classifiers, for distillation losses, evaluation and figures.

``explain(model, x, target, method, ...)`` returns (B, 1, H, W) maps; ``EXPLAINERS`` holds one
class per method (``EXPLAINERS[name](model[, layer]).attribute(x, target, **options)``, Captum
style); ``explain_dataset`` explains a whole split; ``ExplanationCache`` stores maps on disk.

Methods: CAM family on any layer (``cam``, ``gradcam``, ``gradcampp``, ``xgradcam``, ``hirescam``,
``layercam``, ``scorecam``, ``ablationcam``, ``eigencam``; module :mod:`kdlens.explain.cam`),
input gradients via Captum (``saliency``, ``inputxgradient``, ``integrated_gradients``,
``smoothgrad``, ``guided_backprop``, ``gradientshap``; :mod:`kdlens.explain.gradient`),
perturbations (``occlusion``, ``lime``, ``kernelshap``; :mod:`kdlens.explain.perturbation`),
``lrp`` via zennit (:mod:`kdlens.explain.lrp`) and B-cos contributions (``bcos``).
Differentiable (``create_graph=True``): the CAM family except scorecam/ablationcam/eigencam, and bcos.
"""

from kdlens.explain import bcos, cam, gradient, lrp, perturbation  # noqa: F401  (registration)
from kdlens.explain.api import attribute_with_tta, explain, explain_dataset, make_explainer
from kdlens.explain.base import (
    DEFAULT_CHUNK_SIZE,
    EXPLAINERS,
    Explainer,
    ExplainError,
    LayerExplainer,
    Target,
    resolve_target,
)
from kdlens.explain.cache import ExplanationCache, data_fingerprint, file_fingerprint, model_fingerprint
from kdlens.explain.layers import ModelSplit, default_layer

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "EXPLAINERS",
    "ExplainError",
    "Explainer",
    "ExplanationCache",
    "LayerExplainer",
    "ModelSplit",
    "Target",
    "attribute_with_tta",
    "data_fingerprint",
    "default_layer",
    "explain",
    "explain_dataset",
    "file_fingerprint",
    "make_explainer",
    "model_fingerprint",
    "resolve_target",
]
