"""What the HTML report shows, computed from run folders: :class:`ReportData`, built by
:func:`collect_report_data`. The report (:mod:`kdlens.report.build`) only renders it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset

from kdlens.config import ConfigError, ExperimentConfig
from kdlens.data import DataConfigBase
from kdlens.evaluation.measures import (
    Calibration,
    agreement_scores,
    calibration,
    class_correlation,
    nanmean,
    silhouette,
    tsne_embedding,
)
from kdlens.evaluation.store import ModelStore, data_key
from kdlens.metrics import EXPLANATION_METRICS
from kdlens.metrics.explanation_evaluation import evaluate_explanations
from kdlens.runs import Run, RunGroup, find_runs, group_runs

GRID_IMAGES = 6
TSNE_LIMIT = 512
EXPLAINER = "gradcam"
LOCALISATION_METRICS = {
    "pointing_game": "pointing game",
    "energy_pointing_game": "energy pointing game",
    "attribution_localisation": "attribution localisation",
}
"""Localisation metrics of the report's explanations (registry name → display name)."""
RESULT_KEYS: tuple[tuple[str, ...], ...] = (
    ("best", "epoch"),
    *((which, split, metric) for which in ("best", "last") for split in ("test", "shifted")
      for metric in ("top1", "top5", "agreement", "kl_teacher_student", "worst_group_accuracy")),
)
"""The numbers of each run's results.json the report shows."""

Curves = dict[str, dict[int, float]]
"""``train_loss`` and ``val_top1`` per epoch (from 1)."""


@dataclass
class GroupReport:
    """One group of runs differing only by seed."""

    label: str
    seeds: int
    model: str
    teacher: str | None
    """The teacher's architecture, if the runs distil from one."""
    losses: str
    """The loss terms with their weights, e.g. ``ce×0.1 + kd×0.9 (T=4)``."""
    distillation_terms: tuple[str, ...]
    """The loss terms that need a teacher (``LOSSES[name].needs_teacher``)."""
    alpha: float | None
    """Distillation weight: the weights of the :attr:`distillation_terms` over all weights."""
    is_teacher: bool
    """A seed of this group is the teacher of other runs of the report."""
    results: dict[tuple[str, ...], list[float]]
    """Per :data:`RESULT_KEYS` key, each seed's value (where recorded)."""
    calibration: list[Calibration]
    """Per seed, of the best checkpoint."""
    curves: list[Curves]
    """Per seed."""

    def values(self, *keys: str) -> list[float]:
        """E.g. ``values("best", "test", "top1")``: the seeds' values."""
        return self.results.get(keys, [])

    def worst_group(self) -> list[float]:
        """Worst-group accuracy of the best checkpoint: on the shifted split where there is one."""
        return self.values("best", "shifted", "worst_group_accuracy") or self.values("best", "test", "worst_group_accuracy")


@dataclass
class NamedCalibration:
    name: str
    calibration: Calibration


@dataclass
class ExplanationRow:
    """Scores of one model (a teacher: one seed) or group (one value per seed), per metric:
    the keys of :data:`LOCALISATION_METRICS` (with masks) and of
    :data:`~kdlens.evaluation.measures.AGREEMENT_METRICS` (students)."""

    name: str
    is_teacher: bool
    scores: dict[str, list[float]]


@dataclass
class HeatmapGrid:
    """Maps of the teacher and each group's first seed on the first test images, for the teacher's top-1."""

    images: np.ndarray
    """(N, C, H, W) in [0, 1]."""
    labels: np.ndarray
    class_names: list[str]
    model_names: list[str]
    predictions: np.ndarray
    """(M, N) top-1 of each model."""
    maps: np.ndarray
    """(M, N, H, W)."""


@dataclass
class Explanations:
    has_teacher: bool
    """Some run has a teacher (else there is nothing to compare)."""
    rows: list[ExplanationRow] = field(default_factory=list)
    masks: bool = False
    """Some explained dataset has object masks (localisation metrics)."""
    grid: HeatmapGrid | None = None


@dataclass
class Embedding:
    name: str
    dim: int
    silhouette_features: float
    silhouette_embedding: float
    points: np.ndarray
    labels: np.ndarray


@dataclass
class Features:
    enabled: bool
    embeddings: list[Embedding] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)


@dataclass
class CorrelationPair:
    label: str
    teacher: np.ndarray
    student: np.ndarray
    class_names: list[str]

    @property
    def difference(self) -> float:
        """‖C_s − C_t‖_F."""
        return float(np.linalg.norm(self.student - self.teacher))


@dataclass
class ReportData:
    """Everything :mod:`kdlens.report.build` renders."""

    inputs: list[str]
    notes: list[str]
    groups: list[GroupReport]
    data_limit: int
    explain_n: int
    teacher_calibration: list[NamedCalibration]
    explanations: Explanations
    features: Features
    correlations: list[CorrelationPair]
    seconds: float = 0.0
    """Spent collecting."""

    @property
    def n_runs(self) -> int:
        return sum(group.seeds for group in self.groups)


def experiment_config(run: Run) -> ExperimentConfig:
    """A run's saved config, validated (a ConfigError naming the run when it no longer validates)."""
    try:
        return run.experiment()
    except ConfigError as err:
        raise ConfigError(f"run '{run.path}': its config no longer validates: {err}") from None


def describe_losses(config: ExperimentConfig) -> str:
    """``ce×0.1 + kd×0.9 (T=4)``."""
    parts = []
    for term in config.losses:
        text = f"{term.name}×{term.weight:g}"
        if getattr(term, "temperature", None) is not None:
            text += f" (T={term.temperature:g})"
        parts.append(text)
    return " + ".join(parts)


def _needs_teacher(name: str) -> bool:
    from kdlens.distill import LOSSES

    return name in LOSSES and LOSSES[name].needs_teacher


def distillation_terms(config: ExperimentConfig) -> tuple[str, ...]:
    """The names of the loss terms that need a teacher (kd, dkd, Exp-KD, oracle-KD, e²KD, feature
    terms ...), from the loss registry."""
    return tuple(term.name for term in config.losses if _needs_teacher(term.name))


def distillation_weight(config: ExperimentConfig) -> float | None:
    """α: the weights of the loss terms that need a teacher (``LOSSES[name].needs_teacher``) over
    the weights of all terms; None when they sum to 0."""
    total = sum(term.weight for term in config.losses)
    teacher = sum(term.weight for term in config.losses if _needs_teacher(term.name))
    return teacher / total if total > 0 else None


class _Collector:
    def __init__(self, groups: list[RunGroup], store: ModelStore, explain_n: int, log: Callable[[str], None]) -> None:
        self.groups = groups
        self.store = store
        self.explain_n = explain_n
        self.log = log
        self.configs = {id(run): experiment_config(run) for group in groups for run in group.runs}
        self.teachers = {g.label: self._teacher_of(g) for g in groups}
        self.reference_teacher = next((t for t in self.teachers.values() if t), None)
        teacher_files = {t.resolve() for t in self.teachers.values() if t}
        self.teacher_groups = {g.label for g in groups if any(r.best_checkpoint.resolve() in teacher_files for r in g.runs)}
        """Groups that are (a seed of) a teacher of the others: not compared with themselves."""

    def config(self, group: RunGroup) -> ExperimentConfig:
        return self.configs[id(group.first)]

    def data(self, group: RunGroup) -> DataConfigBase:
        return self.config(group).data

    def _teacher_of(self, group: RunGroup) -> Path | None:
        teacher = self.config(group).teacher
        checkpoint = teacher.checkpoint if teacher else None
        return Path(checkpoint) if checkpoint and Path(checkpoint).is_file() else None

    def compatible_teacher(self, group: RunGroup) -> Path | None:
        """The group's own teacher, else the report's first teacher if it fits the group's data."""
        own = self.teachers[group.label]
        if group.label in self.teacher_groups:
            return None
        if own or not self.reference_teacher:
            return own
        _, info = self.store.model(self.reference_teacher)
        _, student = self.store.model(group.first.best_checkpoint)
        same = (info.num_classes, info.in_channels) == (student.num_classes, student.in_channels)
        return self.reference_teacher if same else None

    def teacher_is_a_run(self, teacher: Path) -> bool:
        return any(r.best_checkpoint.resolve() == teacher.resolve() for g in self.groups for r in g.runs)

    # -- per group -----------------------------------------------------------------------------------

    def group_report(self, group: RunGroup) -> GroupReport:
        config = self.config(group)
        calibrations = []
        for run in group.runs:
            data = self.configs[id(run)].data
            calibrations.append(calibration(self.store.outputs(run.best_checkpoint, data).logits, self.store.data(data).labels))
        return GroupReport(
            label=group.label,
            seeds=len(group.runs),
            model=config.model.name,
            teacher=config.teacher.name if config.teacher else None,
            losses=describe_losses(config),
            distillation_terms=distillation_terms(config),
            alpha=distillation_weight(config),
            is_teacher=group.label in self.teacher_groups,
            results={keys: group.values(*keys) for keys in RESULT_KEYS},
            calibration=calibrations,
            curves=[run.folder.read_curves() for run in group.runs],
        )

    def teacher_calibration(self) -> list[NamedCalibration]:
        rows, done = [], set()
        for group in self.groups:
            teacher = self.teachers[group.label]
            if teacher and teacher.resolve() not in done and not self.teacher_is_a_run(teacher):
                done.add(teacher.resolve())
                data = self.data(group)
                result = calibration(self.store.outputs(teacher, data).logits, self.store.data(data).labels)
                rows.append(NamedCalibration(f"teacher ({self.config(group).teacher.name})", result))
        return rows

    # -- explanations --------------------------------------------------------------------------------

    def explanations(self) -> Explanations:
        result = Explanations(has_teacher=self.reference_teacher is not None)
        if not result.has_teacher:
            return result
        teacher_maps: dict[tuple[Path, str], torch.Tensor] = {}
        grid_key, grid_models = None, []
        for group in self.groups:
            teacher = self.compatible_teacher(group)
            if teacher is None:
                continue
            data = self.data(group)
            samples = self.store.data(data)
            n = min(self.explain_n, len(samples.images))
            split = Subset(samples.bundle.test, range(n))
            metrics = {name: EXPLANATION_METRICS[name]() for name in LOCALISATION_METRICS} if samples.masks is not None else {}
            teacher_model, _ = self.store.model(teacher)
            key = (teacher.resolve(), data_key(data))
            if key not in teacher_maps:
                explained = evaluate_explanations({"teacher": teacher_model}, split, [EXPLAINER], metrics, target="pred",
                                                  device=self.store.device, keep_maps=True)
                teacher_maps[key] = explained.maps[("teacher", EXPLAINER)]
                if metrics:
                    index = sum(row.is_teacher for row in result.rows) + 1
                    result.rows.append(ExplanationRow("teacher" if index == 1 else f"teacher {index}", True,
                                                      _scores(explained.scores, "teacher", metrics, [])))
            models = {str(i): self.store.model(run.best_checkpoint)[0] for i, run in enumerate(group.runs)}
            explained = evaluate_explanations(models, split, [EXPLAINER], metrics, target="teacher", teacher=teacher_model,
                                              device=self.store.device, keep_maps=True)
            agreements = [agreement_scores(teacher_maps[key], explained.maps[(name, EXPLAINER)]) for name in models]
            scores = {}
            for index, name in enumerate(models):
                per_run = _scores(explained.scores, name, metrics, [agreements[index]])
                for metric, values in per_run.items():
                    scores.setdefault(metric, []).extend(values)
            result.rows.append(ExplanationRow(group.label, False, scores))
            result.masks |= samples.masks is not None
            if grid_key is None:
                grid_key = (key, teacher, data)
            if grid_key[0] == key:
                grid_models.append((group.label, group.first.best_checkpoint, explained.maps[("0", EXPLAINER)]))
        if grid_key is not None:
            key, teacher, data = grid_key
            result.grid = self.grid(teacher, data, teacher_maps[key], grid_models)
        return result

    def grid(self, teacher: Path, data: DataConfigBase, maps: torch.Tensor, students: list) -> HeatmapGrid:
        samples = self.store.data(data)
        n = min(GRID_IMAGES, len(maps))
        _, info = self.store.model(teacher)
        mean, std = torch.tensor(info.mean)[:, None, None], torch.tensor(info.std)[:, None, None]
        checkpoints = [teacher] + [checkpoint for _, checkpoint, _ in students]
        return HeatmapGrid(
            images=(samples.images[:n] * std + mean).clamp(0, 1).numpy(),
            labels=samples.labels[:n].numpy(),
            class_names=list(info.class_names or [str(k) for k in range(info.num_classes)]),
            model_names=["teacher"] + [label for label, _, _ in students],
            predictions=np.stack([self.store.outputs(c, data).logits[:n].argmax(1).numpy() for c in checkpoints]),
            maps=np.stack([maps[:n, 0].numpy()] + [student_maps[:n, 0].numpy() for _, _, student_maps in students]),
        )

    # -- features ------------------------------------------------------------------------------------

    def features(self, enabled: bool) -> Features:
        result = Features(enabled)
        if not enabled:
            return result
        models: dict[str, tuple[Path, DataConfigBase]] = {}
        for group in self.groups:
            teacher = self.compatible_teacher(group)
            if teacher is not None and "teacher" not in models and not self.teacher_is_a_run(teacher):
                models["teacher"] = (teacher, self.data(group))
            models[group.label] = (group.first.best_checkpoint, self.data(group))
        for name, (checkpoint, data) in models.items():
            outputs = self.store.outputs(checkpoint, data)
            labels = self.store.data(data).labels
            n = min(TSNE_LIMIT, len(labels))
            if n < 5:
                continue
            features, labels = outputs.features[:n], labels[:n]
            points = tsne_embedding(features)
            result.embeddings.append(Embedding(name, features.shape[1], silhouette(features.numpy(), labels),
                                               silhouette(points, labels), points, labels.numpy()))
        result.class_names = list(self.store.data(self.data(self.groups[0])).bundle.class_names)
        return result

    def correlations(self) -> list[CorrelationPair]:
        pairs = []
        for group in self.groups:
            teacher = self.compatible_teacher(group)
            if teacher is None:
                continue
            data = self.data(group)
            pairs.append(CorrelationPair(
                group.label,
                class_correlation(self.store.outputs(teacher, data).logits),
                class_correlation(self.store.outputs(group.first.best_checkpoint, data).logits),
                list(self.store.data(data).bundle.class_names),
            ))
        return pairs


def _scores(rows: list[dict], model: str, metrics: dict, extra: list[dict[str, float]]) -> dict[str, list[float]]:
    """One model's mean score (over its samples) per metric, as one-value lists, with ``extra`` scores."""
    own = [row for row in rows if row["model"] == model]
    scores = {name: [nanmean([row[name] for row in own])] for name in metrics}
    for more in extra:
        scores |= {name: [value] for name, value in more.items()}
    return scores


def collect_report_data(
    paths: list[Path],
    *,
    data_limit: int = 512,
    explain_n: int = 32,
    tsne: bool = True,
    device: str | torch.device | None = None,
    threads: int | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> ReportData:
    """Everything the report of the runs in ``paths`` (run or sweep folders) shows: each group's
    numbers from results.json and training curves; calibration of the best checkpoints and the
    teachers on the first ``data_limit`` test images; Grad-CAM localisation and teacher–student
    agreement on the first ``explain_n`` (for the teacher's top-1 class); t-SNE of penultimate
    features (unless ``tsne`` is False) and class correlations. Models run on ``device``
    (:func:`~kdlens.device.resolve_device`). ``threads``: torch CPU threads meanwhile (restored
    after); 1 is much faster for small models on busy cores, where extra OpenMP threads spin-wait."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _collect([Path(p) for p in paths], data_limit, explain_n, tsne, device, log)
    finally:
        torch.set_num_threads(previous)


def _collect(paths: list[Path], data_limit: int, explain_n: int, tsne: bool, device: str | torch.device | None,
             log: Callable[[str], None]) -> ReportData:
    started = time.perf_counter()
    runs, notes = find_runs(paths)
    collector = _Collector(group_runs(runs), ModelStore(data_limit, device), explain_n, log)
    log("report: accuracy and calibration ...")
    groups = [collector.group_report(group) for group in collector.groups]
    teacher_calibration = collector.teacher_calibration()
    log("report: explanations ...")
    explanations = collector.explanations()
    log("report: features ...")
    features = collector.features(tsne)
    correlations = collector.correlations()
    return ReportData(
        inputs=[str(p) for p in paths], notes=notes, groups=groups, data_limit=data_limit, explain_n=explain_n,
        teacher_calibration=teacher_calibration, explanations=explanations, features=features,
        correlations=correlations, seconds=time.perf_counter() - started,
    )

