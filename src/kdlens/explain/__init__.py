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
Differentiable (``create_graph=True``; ``EXPLAINERS[name].differentiable``): the CAM family except
scorecam/ablationcam/eigencam, bcos, and lrp with ``canonize=False`` (its ``differentiable_options``).

Each method's module is imported when the method is first looked up in ``EXPLAINERS`` (so Captum,
zennit and scikit-image load only with the methods that use them); methods of other packages are
found through the ``kdlens.explainers`` entry points (docs/extending.md).
"""

from kdlens.explain.api import attribute_with_tta, explain, explain_dataset, make_explainer
from kdlens.explain.base import (
    DEFAULT_CHUNK_SIZE,
    EXPLAINERS,
    TARGET_NAMES,
    Explainer,
    ExplainError,
    LayerExplainer,
    Target,
    TargetName,
    check_target,
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
    "TARGET_NAMES",
    "Target",
    "TargetName",
    "attribute_with_tta",
    "check_target",
    "data_fingerprint",
    "default_layer",
    "explain",
    "explain_dataset",
    "file_fingerprint",
    "make_explainer",
    "model_fingerprint",
    "resolve_target",
]
