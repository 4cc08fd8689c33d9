"""Evaluating checkpoints: open them with the data to evaluate them on, classification reports on
every evaluation split (against a teacher), and explanation metrics, checked before any work."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from kdlens.config import ConfigError, apply_override, validate_data_config
from kdlens.data import DataBundle, DataConfigBase, build_data
from kdlens.device import resolve_device
from kdlens.explain import check_target
from kdlens.metrics.base import SWEEP_PRECISIONS, ExplanationMetric
from kdlens.metrics.evaluate import evaluate_models
from kdlens.metrics.explanation_evaluation import aggregate_scores, check_explainers, evaluate_explanations, metrics_from_spec
from kdlens.runs.checkpoints import CheckpointInfo, check_fits, load_model


@dataclass
class EvaluationInputs:
    """Models of checkpoints (in the given order, repeats kept) with their facts, the dataset they
    are evaluated on, and the teacher, if any, they are compared with."""

    checkpoints: list[Path]
    models: list[nn.Module]
    infos: list[CheckpointInfo]
    bundle: DataBundle
    data: DataConfigBase
    teacher: nn.Module | None = None

    def named(self) -> dict[str, nn.Module]:
        """The models by checkpoint path (as results and score files name them)."""
        return {str(path): model for path, model in zip(self.checkpoints, self.models)}


def open_checkpoints(
    checkpoints: list[Path],
    data: str | None = None,
    options: list[str] | None = None,
    *,
    augment: bool | None = None,
    teacher: Path | None = None,
) -> EvaluationInputs:
    """The models of ``checkpoints`` and the dataset to use them on: the one the first checkpoint
    was trained on unless ``data`` names another, with ``--set`` ``options`` applied (and
    ``augment`` if given); every model, and the ``teacher``, must fit its classes and channels."""
    loaded = [load_model(path) for path in checkpoints]
    trained_on = (loaded[0][1].config or {}).get("data")
    if trained_on is None and not data:
        raise ConfigError(f"'{checkpoints[0]}' records no dataset (an imported checkpoint): name it with --data")
    data_raw = {"name": data} if data and (trained_on is None or data != trained_on["name"]) else dict(trained_on)
    for option in options or []:
        apply_override(data_raw, option)
    if augment is not None:
        data_raw["augment"] = augment
    data_config = validate_data_config(data_raw)
    bundle = build_data(data_config)
    for path, (_, info) in zip(checkpoints, loaded):
        _check_fits(info, bundle, data_config, f"'{path}'")
    teacher_model = None
    if teacher is not None:
        teacher_model, teacher_info = load_model(teacher)
        _check_fits(teacher_info, bundle, data_config, f"teacher '{teacher}'")
    return EvaluationInputs(list(checkpoints), [model for model, _ in loaded], [info for _, info in loaded], bundle,
                            data_config, teacher_model)


def _check_fits(info: CheckpointInfo, bundle: DataBundle, data: DataConfigBase, what: str) -> None:
    check_fits(info, bundle, f"{what} (on {data.name})", "Use the dataset it was trained on (choose it with --data and --set)")


def evaluate_checkpoints(
    checkpoints: dict[str, Path],
    data: DataConfigBase,
    *,
    teacher: Path | None = None,
    device: str | torch.device | None = None,
) -> dict[str, dict[str, dict]]:
    """:func:`evaluate_classification` of named checkpoints on ``data`` (each checked to fit it),
    against the ``teacher`` checkpoint if given."""
    bundle = build_data(data)
    loaded = {name: load_model(path) for name, path in checkpoints.items()}
    for name, (_, info) in loaded.items():
        _check_fits(info, bundle, data, f"'{checkpoints[name]}'")
    teacher_model = None
    if teacher is not None:
        teacher_model, teacher_info = load_model(teacher)
        _check_fits(teacher_info, bundle, data, f"teacher '{teacher}'")
    device = resolve_device(device)
    models = {name: model.to(device) for name, (model, _) in loaded.items()}
    return evaluate_models(models, bundle, data, teacher_model.to(device) if teacher_model is not None else None, device)


def evaluate_classification(inputs: EvaluationInputs, device: str | torch.device | None = None) -> dict[str, dict[str, dict]]:
    """``{model: {split: report}}``: top-1 (top-5), group accuracies, and agreement and KL with the
    teacher, on the test split and every extra evaluation split, on ``device``."""
    device = resolve_device(device)
    models = {name: model.to(device) for name, model in inputs.named().items()}
    teacher = inputs.teacher.to(device) if inputs.teacher is not None else None
    return evaluate_models(models, inputs.bundle, inputs.data, teacher, device)


@dataclass
class ExplanationPlan:
    """Checked explanation options: what :func:`run_explanations` computes."""

    inputs: EvaluationInputs
    methods: list[str]
    metrics: dict[str, ExplanationMetric]
    target: str = "label"
    layer: str | None = None
    tta: bool = False
    n: int | None = None
    precision: str = "float32"
    """The metrics' forward passes' precision, a name of :data:`~kdlens.metrics.base.SWEEP_PRECISIONS`."""

    @property
    def models(self) -> dict[str, nn.Module]:
        """The teacher (as ``teacher``) first, then the evaluated models."""
        teacher = {"teacher": self.inputs.teacher} if self.inputs.teacher is not None else {}
        return teacher | self.inputs.named()


@dataclass
class ExplanationScores:
    scores: list[dict]
    """Per (model, explainer, sample)."""
    summary: list[dict]
    """Per (model, explainer, metric): :func:`kdlens.aggregate.aggregate` of the samples."""
    curves: dict[str, list[dict]] = field(default_factory=dict)


def plan_explanations(
    inputs: EvaluationInputs,
    explainers: str,
    metrics: str,
    target: str = "label",
    layer: str | None = None,
    tta: bool = False,
    n: int | None = None,
    precision: str = "float32",
) -> ExplanationPlan:
    """Check the explanation options against the data and every model (the teacher's included)
    without doing any work: unknown methods, metrics, layers, targets or precisions, metrics needing
    masks the data lacks (ConfigError / ExplainError, before anything is computed or written)."""
    if precision not in SWEEP_PRECISIONS:
        raise ConfigError(f"unknown sweep precision '{precision}': choose one of {', '.join(SWEEP_PRECISIONS)}")
    methods = [m.strip() for m in explainers.split(",") if m.strip()]
    plan = ExplanationPlan(inputs, methods, {}, target, layer, tta, n, precision)
    check_explainers(plan.models, methods, layer)
    check_target(target, inputs.teacher is not None)
    bundle = inputs.bundle
    try:
        plan.metrics = metrics_from_spec(metrics, (bundle.in_channels, *bundle.image_size))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    sample = bundle.test[0] if len(bundle.test) else None
    missing = [name for name, metric in plan.metrics.items()
               if "mask" in metric.requires and sample is not None and metric.mask_key not in sample]
    if missing:
        raise ConfigError(f"{', '.join(missing)} need masks ({', '.join(sorted({plan.metrics[n].mask_key for n in missing}))}) "
                          "that this dataset's test split does not have: leave these metrics out")
    return plan


def run_explanations(plan: ExplanationPlan, device: str | torch.device | None = None) -> ExplanationScores:
    """Every model × explainer × metric of ``plan`` on the test split, per sample and aggregated."""
    try:
        results = evaluate_explanations(plan.models, plan.inputs.bundle.test, plan.methods, plan.metrics,
                                        target=plan.target, teacher=plan.inputs.teacher, n=plan.n, layer=plan.layer,
                                        tta=plan.tta, device=resolve_device(device),
                                        precision=SWEEP_PRECISIONS[plan.precision])
    except (KeyError, ValueError) as err:
        raise ConfigError(str(err).strip("'\"")) from None
    return ExplanationScores(results.scores, aggregate_scores(results.scores, list(plan.metrics)), results.curves)
