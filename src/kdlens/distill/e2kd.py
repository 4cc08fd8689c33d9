"""e²KD, "good teachers explain" (REFERENCE §1): match the student's explanation of the teacher's
top-1 class to the teacher's, λ·mean_batch(1 − cos(vec E_S, vec E_T)).

Compose it with the logit terms of the published recipe:
``[{ce, weight: w_gt}, {kd, temperature: τ}, {e2kd, weight: λ}]`` (the published sweeps use
w_gt = 0). E_T is detached; E_S keeps its graph so the loss trains the student.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor

from kdlens.distill.base import DistillBatch, LossConfigBase, LossTerm, register_loss
from kdlens.distill.frozen import TEACHER_MAP, FrozenTeacherSpec
from kdlens.explain import explain
from kdlens.explain.cam import GradCAM, finish_cam



class E2KDConfig(LossConfigBase):
    name: Literal["e2kd"] = "e2kd"
    weight: float = 1.0
    """λ; the published sweeps use {0, 0.2, 1, 5, 10}."""
    explainer: Literal["gradcam", "bcos", "lrp"] = "gradcam"
    """``bcos`` needs B-cos teacher and student (explanation = contributions W(x)·x). ``lrp``: see
    :func:`differentiable_lrp`."""
    student_layer: str | None = None
    """Grad-CAM layer of the student (module path); default its last stage."""
    teacher_layer: str | None = None
    every_k_steps: int = Field(1, ge=1)
    """Apply the term every K-th optimiser step only (16 for CNNs, 4 for ViTs in the paper)."""
    frozen_teacher: bool = False
    """Compute the teacher's logits and maps once on un-augmented images and reuse them, with the
    same crop/flip as the image, instead of running the teacher at every step."""

    @model_validator(mode="after")
    def _frozen_maps_match_the_students(self) -> E2KDConfig:
        if self.frozen_teacher and self.explainer == "lrp":
            raise ValueError("frozen_teacher works with explainer gradcam or bcos; e²KD's LRP is computed live")
        return self


def explanation_loss(student_maps: Tensor, teacher_maps: Tensor) -> Tensor:
    """mean over the batch of 1 − cos(vec E_S, vec E_T); E_T is detached."""
    cosine = F.cosine_similarity(student_maps.flatten(1), teacher_maps.detach().flatten(1), dim=1, eps=1e-8)
    return (1 - cosine).mean()


def gradcam_from_forward(logits: Tensor, features: Tensor, target: Tensor, size: torch.Size, create_graph: bool) -> Tensor:
    """Grad-CAM of a forward pass already made: the gradient of the target logits with respect to
    the tapped layer output, so no second forward is needed."""
    target_logits = logits.gather(1, target[:, None]).sum()
    (grads,) = torch.autograd.grad(target_logits, features, create_graph=create_graph)
    return finish_cam(GradCAM.combine(features, grads), size, relu=True, normalize=False)


def differentiable_lrp(model: torch.nn.Module, images: Tensor, target: Tensor, create_graph: bool) -> Tensor:
    """LRP relevance (zennit, EpsilonPlusFlat) of the target logits, summed over channels, (B, 1, H, W).

    Unlike ``explain(..., "lrp")``, BatchNorm is not merged into the convolutions first: zennit's
    canonizers rewrite the weights in place, which a second-order gradient cannot go through, so
    here BatchNorm layers pass the plain gradient. Teacher and student maps are computed the same
    way, and with ``create_graph`` the loss reaches the student's own parameters."""
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlusFlat

    with torch.enable_grad(), Gradient(model=model, composite=EpsilonPlusFlat(), create_graph=create_graph) as attributor:
        # Relevance starts as the target logit itself, as in explain(..., "lrp").
        _, relevance = attributor(images.detach(), lambda output: F.one_hot(target, output.shape[1]) * output)
    return relevance.sum(1, keepdim=True)


def explanation_maps(method: str, model: torch.nn.Module, images: Tensor, target: Tensor, create_graph: bool) -> Tensor:
    """Maps of a method run as an extra pass (B-cos, LRP), differentiable when ``create_graph``."""
    if method == "lrp":
        return differentiable_lrp(model, images, target, create_graph)
    with torch.enable_grad():
        return explain(model, images, target, method, create_graph=create_graph)


@register_loss(E2KDConfig)
class E2KDLoss(LossTerm):
    needs_teacher = True

    @property
    def needs_teacher_graph(self) -> bool:
        """Grad-CAM of the teacher needs its forward with the graph (its parameters stay frozen)."""
        return self.config.explainer == "gradcam" and not self.config.frozen_teacher

    def _layers(self) -> tuple[str, str]:
        context = self.context
        return (
            self.config.student_layer or context.student_spec.stages[-1],
            self.config.teacher_layer or context.teacher_spec.stages[-1],
        )

    def frozen_teacher_spec(self) -> FrozenTeacherSpec | None:
        if not self.config.frozen_teacher:
            return None
        return FrozenTeacherSpec(self.config.explainer, self._layers()[1] if self.config.explainer == "gradcam" else None)

    def feature_paths(self) -> tuple[list[str], list[str]]:
        if self.config.explainer != "gradcam":
            return [], []
        student_layer, teacher_layer = self._layers()
        return [student_layer], ([] if self.config.frozen_teacher else [teacher_layer])

    def forward(self, batch: DistillBatch) -> Tensor:
        if batch.step % self.config.every_k_steps:
            return batch.student_logits.new_zeros(())
        target = batch.teacher_logits.argmax(1)
        size = batch.images.shape[-2:]
        student_layer, teacher_layer = self._layers()
        if self.config.explainer == "gradcam":
            student_maps = gradcam_from_forward(batch.student_logits, batch.student_features[student_layer], target, size, create_graph=True)
        else:
            student_maps = explanation_maps(self.config.explainer, self.context.student, batch.images, target, create_graph=True)
        if TEACHER_MAP in batch.extras:
            teacher_maps = batch.extras[TEACHER_MAP]
        elif self.config.explainer == "gradcam":
            graph = batch.teacher_graph
            teacher_maps = gradcam_from_forward(graph["logits"], graph[teacher_layer], target, size, create_graph=False)
        else:
            teacher_maps = explanation_maps(self.config.explainer, self.context.teacher, batch.images, target, create_graph=False)
        return explanation_loss(student_maps, teacher_maps)
