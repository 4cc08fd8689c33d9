"""e²KD, "good teachers explain" (REFERENCE §1): match the student's explanation of the teacher's
top-1 class to the teacher's, λ·mean_batch(1 − cos(vec E_S, vec E_T)).

Compose it with the logit terms of the published recipe:
``[{ce, weight: w_gt}, {kd, temperature: τ}, {e2kd, weight: λ}]`` (the published sweeps use
w_gt = 0). E_T is detached; E_S keeps its graph so the loss trains the student.

The explanation is any registered differentiable explainer (``EXPLAINERS[name].differentiable``),
run with its ``differentiable_options`` for student and teacher alike; Grad-CAM is read from the
training forward itself (no extra pass).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn

from kdlens.distill.base import DistillBatch, LossConfigBase, LossTerm, register_loss
from kdlens.distill.frozen import TEACHER_MAP, FrozenTeacherSpec
from kdlens.explain import EXPLAINERS, LayerExplainer, make_explainer
from kdlens.explain.cam import GradCAM, finish_cam


def differentiable_explainers() -> list[str]:
    """The registered explainers whose maps can train a model (``create_graph=True``): e²KD's choices."""
    return [name for name in EXPLAINERS.names() if EXPLAINERS[name].differentiable]


class E2KDConfig(LossConfigBase):
    name: Literal["e2kd"] = "e2kd"
    weight: float = 1.0
    """λ; the published sweeps use {0, 0.2, 1, 5, 10}."""
    explainer: str = "gradcam"
    """Any registered differentiable explainer (:func:`differentiable_explainers`): the CAM family
    (``gradcam`` from the training forward; ``gradcampp``, ``xgradcam``, ``hirescam``, ``layercam``,
    ``cam`` as an extra pass), ``bcos`` (B-cos teacher and student: contributions W(x)·x), ``lrp``
    (e²KD's variant: no canonizers, :mod:`kdlens.explain.lrp`), or a plugin's."""
    student_layer: str | None = None
    """Layer of the student for the CAM family (module path); default its last stage."""
    teacher_layer: str | None = None
    every_k_steps: int = Field(1, ge=1)
    """Apply the term every K-th optimiser step only (16 for CNNs, 4 for ViTs in the paper)."""
    frozen_teacher: bool = False
    """Compute the teacher's logits and maps once on un-augmented images and reuse them, with the
    same crop/flip as the image, instead of running the teacher at every step."""

    @field_validator("explainer")
    @classmethod
    def _differentiable(cls, name: str) -> str:
        if name not in EXPLAINERS:
            raise ValueError(EXPLAINERS.unknown_message(name))
        if not EXPLAINERS[name].differentiable:
            raise ValueError(
                f"e2kd trains the student through its explanation (create_graph=True), and '{name}' is not "
                f"differentiable; use one of: {', '.join(differentiable_explainers())}"
            )
        return name

    @model_validator(mode="after")
    def _frozen_maps_match_the_students(self) -> E2KDConfig:
        options = EXPLAINERS[self.explainer].differentiable_options
        if self.frozen_teacher and options:
            settings = ", ".join(f"{k}={v!r}" for k, v in options.items())
            raise ValueError(
                f"frozen_teacher stores maps made with the explainer's defaults, but e²KD's {self.explainer} runs "
                f"with {settings}: it is computed live (set frozen_teacher: false)"
            )
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


def explanation_maps(
    method: str, model: nn.Module, images: Tensor, target: Tensor, create_graph: bool, layer: str | None = None
) -> Tensor:
    """Maps of explainer ``method`` run as an extra pass, with its ``differentiable_options`` (so
    that student and teacher maps have one definition), differentiable when ``create_graph``;
    ``layer`` for the CAM family."""
    explainer_class = EXPLAINERS[method]
    explainer = make_explainer(model, method, layer if issubclass(explainer_class, LayerExplainer) else None)
    with torch.enable_grad():
        return explainer.attribute(images, target, create_graph=create_graph, **explainer_class.differentiable_options)


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
        explains_a_layer = issubclass(EXPLAINERS[self.config.explainer], LayerExplainer)
        return FrozenTeacherSpec(self.config.explainer, self._layers()[1] if explains_a_layer else None)

    @classmethod
    def reads_features(cls, config: E2KDConfig) -> bool:
        return config.explainer == "gradcam"  # as feature_paths

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
            student_maps = explanation_maps(
                self.config.explainer, self.context.student, batch.images, target, True, student_layer
            )
        if TEACHER_MAP in batch.extras:
            teacher_maps = batch.extras[TEACHER_MAP]
        elif self.config.explainer == "gradcam":
            graph = batch.teacher_graph
            teacher_maps = gradcam_from_forward(graph["logits"], graph[teacher_layer], target, size, create_graph=False)
        else:
            teacher_maps = explanation_maps(
                self.config.explainer, self.context.teacher, batch.images, target, False, teacher_layer
            )
        return explanation_loss(student_maps, teacher_maps)
