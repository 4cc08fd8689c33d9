"""``kdlens report``: one self-contained HTML file (images as base64 PNG, inline CSS, no scripts)
about a set of runs and sweeps."""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdlens import __version__
from kdlens.io import atomic_write_text
from kdlens.report import analysis, figures
from kdlens.report.runs import (
    RunGroup,
    alpha,
    describe_losses,
    find_runs,
    format_mean_std,
    group_runs,
    mean_std,
    other_terms,
    read_curves,
)

GRID_IMAGES = 6
TSNE_LIMIT = 512


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Section:
    id: str
    title: str
    intro: str = ""
    note: str = ""
    """Shown instead of content when the section has no data."""
    tables: list[Table] = field(default_factory=list)
    images: list[dict[str, str]] = field(default_factory=list)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


class ReportBuilder:
    def __init__(self, paths: list[Path], data_limit: int = 512, explain_n: int = 32, tsne: bool = True,
                 log: Callable[[str], None] = lambda _: None) -> None:
        runs, self.notes = find_runs(paths)
        self.paths = paths
        self.groups = group_runs(runs)
        self.explain_n = explain_n
        self.tsne = tsne
        self.log = log
        self.ws = analysis.Workspace(data_limit)
        self.teachers = {g.label: self._teacher_of(g) for g in self.groups}
        self.reference_teacher = next((t for t in self.teachers.values() if t), None)
        teacher_files = {t.resolve() for t in self.teachers.values() if t}
        self.teacher_groups = {g.label for g in self.groups if any(r.best_checkpoint.resolve() in teacher_files for r in g.runs)}
        """Groups that are (a seed of) a teacher of the others: not compared with themselves."""
        self.calibrations: dict[str, list[dict]] = {}

    # -- runs, teachers, data ------------------------------------------------------------------------

    @staticmethod
    def _teacher_of(group: RunGroup) -> Path | None:
        teacher = group.config.get("teacher") or {}
        checkpoint = teacher.get("checkpoint")
        return Path(checkpoint) if checkpoint and Path(checkpoint).is_file() else None

    def _compatible_teacher(self, group: RunGroup) -> Path | None:
        """The group's own teacher, else the report's first teacher if it fits the group's data."""
        own = self.teachers[group.label]
        if group.label in self.teacher_groups:
            return None
        if own or not self.reference_teacher:
            return own
        _, info = self.ws.model(self.reference_teacher)
        _, student = self.ws.model(group.first.best_checkpoint)
        same = all(info[k] == student[k] for k in ("num_classes", "in_channels"))
        return self.reference_teacher if same else None

    def _teacher_is_a_run(self, teacher: Path) -> bool:
        return any(r.best_checkpoint.resolve() == teacher.resolve() for g in self.groups for r in g.runs)

    def _worst_group(self, group: RunGroup) -> list[float]:
        for split in ("shifted", "test"):
            values = group.values("best", split, "worst_group_accuracy")
            if values:
                return values
        return []

    # -- sections --------------------------------------------------------------------------------------

    def summary(self) -> Table:
        rows = []
        for group in self.groups:
            calibration = self.calibrations.get(group.label, [])
            rows.append([
                group.label, str(len(group.runs)), group.config.get("model", {}).get("name", "?"),
                (group.config.get("teacher") or {}).get("name") or "–", describe_losses(group.config),
                format_mean_std(group.values("best", "test", "top1")), format_mean_std(group.values("last", "test", "top1")),
                format_mean_std(group.values("best", "test", "agreement")),
                format_mean_std(group.values("best", "test", "kl_teacher_student")),
                format_mean_std(self._worst_group(group)),
                format_mean_std([c["ece_15"] for c in calibration]),
            ])
        return Table(["run", "seeds", "model", "teacher", "loss terms", "best top-1", "last top-1", "agreement",
                      "KL(t‖s)", "worst-group", "ECE₁₅"], rows,
                     "Test split, mean ± std over seeds; agreement, KL and worst-group from the best checkpoint "
                     "(worst-group on the shifted split where there is one); ECE from the best checkpoint.")

    def accuracy(self) -> Section:
        section = Section("accuracy", "Accuracy", "Test top-1 of the best-on-validation and the last checkpoint, mean ± std over seeds.")
        splits = [s for s in ("test", "shifted") if any(g.values("best", s, "top1") for g in self.groups)]
        columns = ["run", "loss terms", "α", "best epoch"]
        for split in splits:
            columns += [f"best {split} top-1", f"last {split} top-1"]
        if any(g.values("best", "test", "top5") for g in self.groups):
            columns += ["best test top-5"]
        rows = []
        for group in self.groups:
            a = alpha(group.config)
            row = [group.label, describe_losses(group.config), _fmt(a, 2), format_mean_std(group.values("best", "epoch"), 1)]
            for split in splits:
                row += [format_mean_std(group.values("best", split, "top1")), format_mean_std(group.values("last", split, "top1"))]
            if "best test top-5" in columns:
                row.append(format_mean_std(group.values("best", "test", "top5")))
            rows.append(row)
        section.tables.append(Table(columns, rows))
        labels = [g.label for g in self.groups]
        series = {f"{which} {split}": [mean_std(g.values(which, split, "top1")) for g in self.groups]
                  for split in splits for which in ("best", "last")}
        section.images.append({"src": figures.grouped_bars(labels, series, "top-1", ylim=(0, 1.05)),
                               "caption": "Top-1 per run group (error bars: std over seeds)."})
        kd_models = {g.config.get("model", {}).get("name") for g in self.groups if (alpha(g.config) or 0) > 0}
        alpha_groups = [g for g in self.groups if g.config.get("model", {}).get("name") in kd_models
                        and g.label not in self.teacher_groups and alpha(g.config) is not None]
        if len({alpha(g.config) for g in alpha_groups}) > 1:
            by_series: dict[str, list] = {}
            for group in alpha_groups:
                a, best = alpha(group.config), mean_std(group.values("best", "test", "top1"))
                if a is None or best is None:
                    continue
                name = f"{group.config.get('model', {}).get('name', '?')}" + (f" + {other_terms(group.config)}" if other_terms(group.config) else "")
                by_series.setdefault(name, []).append((a, best, mean_std(group.values("last", "test", "top1"))))
            section.images.append({"src": figures.alpha_plot(by_series),
                                   "caption": "Test top-1 against α = kd weight / (ce + kd weights)."})
        else:
            section.images.append({"note": "No accuracy-vs-α plot: the runs do not differ in their CE/KD weights."})
        return section

    def agreement(self) -> Section:
        section = Section("agreement", "Teacher–student agreement and KL",
                          "Agreement: share of samples where the student's top-1 is the teacher's; KL(teacher ‖ student) at T = 1.")
        groups = [g for g in self.groups if g.values("best", "test", "agreement")]
        if not groups:
            section.note = "No run has a teacher: no agreement or KL to show."
            return section
        splits = [s for s in ("test", "shifted") if any(g.values("best", s, "agreement") for g in groups)]
        columns = ["run", "teacher", "split", "agreement (best)", "KL (best)", "agreement (last)", "KL (last)"]
        rows = []
        for group in groups:
            for split in splits:
                row = [group.label, (group.config.get("teacher") or {}).get("name", "–"), split]
                for which in ("best", "last"):
                    row += [format_mean_std(group.values(which, split, "agreement")),
                            format_mean_std(group.values(which, split, "kl_teacher_student"))]
                rows.append(row)
        section.tables.append(Table(columns, rows))
        labels = [g.label for g in groups]
        section.images.append({"src": figures.grouped_bars(labels, {f"agreement ({s})": [mean_std(g.values("best", s, "agreement")) for g in groups] for s in splits}, "agreement", ylim=(0, 1.05)),
                               "caption": "Top-1 agreement with the teacher (best checkpoint)."})
        section.images.append({"src": figures.grouped_bars(labels, {f"KL ({s})": [mean_std(g.values("best", s, "kl_teacher_student")) for g in groups] for s in splits}, "KL(t‖s)"),
                               "caption": "KL(teacher ‖ student) (best checkpoint)."})
        return section

    def calibration(self) -> Section:
        section = Section("calibration", "Calibration",
                          f"Best checkpoint of each run on the first {self.ws.data_limit} test images (fewer where the split is smaller): "
                          "expected calibration error with 10, 15 and 20 equal-width bins, mean predictive entropy (nats); "
                          "reliability diagrams of each group's first seed.")
        rows, diagrams = [], {}
        teacher_done: set[Path] = set()
        for group in self.groups:
            teacher = self.teachers[group.label]
            if teacher and teacher.resolve() not in teacher_done and not self._teacher_is_a_run(teacher):
                teacher_done.add(teacher.resolve())
                outputs = self.ws.outputs(teacher, group.config["data"])
                result = analysis.calibration(outputs.logits, self.ws.data(group.config["data"])[1].labels)
                name = f"teacher ({(group.config.get('teacher') or {}).get('name', '')})"
                rows.append([name, "1", *(_fmt(result[f"ece_{b}"]) for b in analysis.ECE_BINS), _fmt(result["entropy"])])
                diagrams[name] = result["diagram"]
            results = []
            for run in group.runs:
                outputs = self.ws.outputs(run.best_checkpoint, run.config["data"])
                results.append(analysis.calibration(outputs.logits, self.ws.data(run.config["data"])[1].labels))
            self.calibrations[group.label] = results
            rows.append([group.label, str(len(results)), *(format_mean_std([r[f"ece_{b}"] for r in results]) for b in analysis.ECE_BINS),
                         format_mean_std([r["entropy"] for r in results])])
            diagrams[group.label] = results[0]["diagram"]
        section.tables.append(Table(["model", "seeds", "ECE (10 bins)", "ECE (15 bins)", "ECE (20 bins)", "mean entropy"], rows))
        section.images.append({"src": figures.reliability_diagrams(diagrams),
                               "caption": "Reliability diagrams (10 bins): accuracy per confidence bin; shaded: the gap to the confidence; dashed: perfect calibration."})
        return section

    def explanations(self) -> tuple[Section, Section]:
        metrics = Section("explanation-metrics", "Explanation metrics",
                          f"Grad-CAM maps (default layer) for the teacher's top-1 class on the first {self.explain_n} test images; "
                          "localisation against the object masks (pointing game, energy pointing game, attribution localisation) "
                          "and teacher–student similarity of the maps (cosine, Spearman, SSIM, top-10 % IoU); mean ± std over seeds.")
        grid = Section("heatmaps", "Heatmap grid", "Input, then the Grad-CAM maps of the teacher and of each group's first-seed student for the teacher's top-1 class (one colour scale).")
        if not self.reference_teacher:
            metrics.note = grid.note = "No run has a teacher: no teacher–student explanations to compare."
            return metrics, grid
        rows, grid_models, bars = [], [], {}
        localisation_names = list(analysis.LOCALISATION_METRICS)
        teacher_rows: set[tuple] = set()
        grid_data = None
        for group in self.groups:
            teacher = self._compatible_teacher(group)
            if teacher is None:
                continue
            key, samples = self.ws.data(group.config["data"])
            images = samples.images[: self.explain_n]
            teacher_model, _ = self.ws.model(teacher)
            targets = self.ws.outputs(teacher, group.config["data"]).logits[: len(images)].argmax(1)
            teacher_maps = analysis.gradcam_maps(teacher_model, images, targets, self.ws.device)
            masks = samples.masks[: len(images)] if samples.masks is not None else None
            if masks is not None and (teacher.resolve(), key) not in teacher_rows:
                teacher_rows.add((teacher.resolve(), key))
                scores = analysis.localisation_scores(teacher_model, images, targets, teacher_maps, masks)
                name = "teacher" if len(teacher_rows) == 1 else f"teacher {len(teacher_rows)}"
                rows.append([name, "1", *(_fmt(scores[n], 3) for n in localisation_names), "–", "–", "–", "–"])
                bars[name] = {n: (scores[n], 0.0) for n in localisation_names}
            per_run = []
            for run in group.runs:
                model, _ = self.ws.model(run.best_checkpoint)
                maps = analysis.gradcam_maps(model, images, targets, self.ws.device)
                scores = analysis.agreement_scores(teacher_maps, maps)
                if masks is not None:
                    scores.update(analysis.localisation_scores(model, images, targets, maps, masks))
                per_run.append(scores)
            names = (localisation_names if masks is not None else []) + list(analysis.AGREEMENT_METRICS)
            rows.append([group.label, str(len(per_run)),
                         *(format_mean_std([s[n] for s in per_run], 3) if n in per_run[0] else "–" for n in localisation_names),
                         *(format_mean_std([s[n] for s in per_run], 3) for n in analysis.AGREEMENT_METRICS)])
            bars[group.label] = {n: mean_std([s[n] for s in per_run]) for n in names}
            if grid_data is None:
                grid_data = (key, samples, teacher, targets)
            if grid_data[0] == key and grid_data[2] == teacher:
                grid_models.append((group.label, group.first.best_checkpoint))
        if not rows:
            metrics.note = grid.note = "No student fits a teacher of these runs: no teacher–student explanations to compare."
            return metrics, grid
        metrics.tables.append(Table(["model", "seeds", *localisation_names, "cosine", "Spearman", "SSIM", "top-10 % IoU"], rows))
        if not any(s.masks is not None for s in (self.ws.data(g.config["data"])[1] for g in self.groups)):
            metrics.intro += " These datasets have no object masks: localisation metrics are left out."
        labels = list(bars)
        all_names = list(dict.fromkeys(n for scores in bars.values() for n in scores))
        loc = [n for n in all_names if n in localisation_names]
        if loc:
            metrics.images.append({"src": figures.grouped_bars(labels, {n: [bars[l].get(n) for l in labels] for n in loc}, "score", ylim=(0, 1.05)),
                                   "caption": "Localisation of the Grad-CAM maps (higher: more on the object)."})
        student_labels = [l for l in labels if not l.startswith("teacher")]
        metrics.images.append({"src": figures.grouped_bars(student_labels, {n: [bars[l].get(n) for l in student_labels] for n in analysis.AGREEMENT_METRICS}, "similarity to the teacher"),
                               "caption": "Teacher–student similarity of the Grad-CAM maps."})
        # The heatmap grid: the first GRID_IMAGES images of the first group's data.
        _, samples, teacher, targets = grid_data
        images = samples.images[:GRID_IMAGES]
        checkpoints = [teacher] + [c for _, c in grid_models]
        names = ["teacher"] + [label for label, _ in grid_models]
        maps, predictions = [], []
        for checkpoint in checkpoints:
            model, _ = self.ws.model(checkpoint)
            maps.append(analysis.gradcam_maps(model, images, targets[:GRID_IMAGES], self.ws.device)[:, 0].numpy())
            with torch.no_grad():
                predictions.append(model(images.to(self.ws.device)).argmax(1).cpu().numpy())
        _, info = self.ws.model(teacher)
        mean, std = torch.tensor(info["mean"])[:, None, None], torch.tensor(info["std"])[:, None, None]
        shown = (images * std + mean).clamp(0, 1).numpy()
        class_names = info.get("class_names") or [str(k) for k in range(info["num_classes"])]
        grid.images.append({"src": figures.explanation_grid(shown, samples.labels[:GRID_IMAGES].numpy(), class_names, names,
                                                            np.stack(predictions), np.stack(maps)),
                            "caption": "Rows: test images (title: true class); columns: the input, the teacher, the students (title: predicted class)."})
        return metrics, grid

    def curves(self) -> Section:
        section = Section("curves", "Training curves", "Train loss and validation top-1 per epoch from logs/csv (all attempts of a resumed run, in order); one line per seed.")
        curves = {g.label: [read_curves(r.path) for r in g.runs] for g in self.groups}
        if not any(c["train_loss"] or c["val_top1"] for runs in curves.values() for c in runs):
            section.note = "No CSV training logs found in these runs."
            return section
        section.images.append({"src": figures.training_curves(curves), "caption": ""})
        return section

    def features(self) -> tuple[Section, Section]:
        tsne = Section("tsne", "Penultimate features (t-SNE)",
                       "t-SNE of the classifier's input features on the test images (teacher and each group's first seed), "
                       "coloured by true class; silhouette scores of the true classes in the feature space and in the embedding.")
        correlation = Section("class-correlation", "Class correlations of the logits",
                              "Correlation of each pair of logit columns over the test images, teacher against student (first seed); "
                              "‖C_s − C_t‖_F is the Frobenius norm of the difference (0: the same class structure).")
        models: dict[str, tuple[Path, dict]] = {}
        for group in self.groups:
            teacher = self._compatible_teacher(group)
            if teacher is not None and "teacher" not in models and not self._teacher_is_a_run(teacher):
                models["teacher"] = (teacher, group.config["data"])
            models[group.label] = (group.first.best_checkpoint, group.config["data"])
        if not self.tsne:
            tsne.note = "t-SNE was switched off for this report."
        else:
            embeddings, rows = {}, []
            for name, (checkpoint, data) in models.items():
                outputs = self.ws.outputs(checkpoint, data)
                labels = self.ws.data(data)[1].labels
                n = min(TSNE_LIMIT, len(labels))
                features, labels = outputs.features[:n], labels[:n]
                if n < 5:
                    continue
                points = analysis.tsne_embedding(features)
                embeddings[name] = (points, labels.numpy())
                rows.append([name, str(n), str(features.shape[1]), _fmt(analysis.silhouette(features.numpy(), labels), 3),
                             _fmt(analysis.silhouette(points, labels), 3)])
            if embeddings:
                tsne.tables.append(Table(["model", "samples", "feature dim", "silhouette (features)", "silhouette (t-SNE)"], rows))
                class_names = self.ws.data(self.groups[0].config["data"])[1].bundle.class_names
                tsne.images.append({"src": figures.tsne_panels(embeddings, class_names), "caption": ""})
            else:
                tsne.note = "Too few test samples for t-SNE."
        rows = []
        for group in self.groups:
            teacher = self._compatible_teacher(group)
            if teacher is None:
                continue
            data = group.config["data"]
            c_teacher = analysis.class_correlation(self.ws.outputs(teacher, data).logits)
            c_student = analysis.class_correlation(self.ws.outputs(group.first.best_checkpoint, data).logits)
            difference = float(np.linalg.norm(c_student - c_teacher))
            rows.append([group.label, _fmt(difference, 3), _fmt(difference / len(c_teacher), 3)])
            class_names = self.ws.data(data)[1].bundle.class_names
            correlation.images.append({"src": figures.correlation_pair(c_teacher, c_student, group.label, class_names),
                                       "caption": f"{group.label}: ‖C_s − C_t‖_F = {difference:.3f}"})
        if rows:
            correlation.tables.append(Table(["run", "‖C_s − C_t‖_F", "‖C_s − C_t‖_F / K"], rows))
        else:
            correlation.note = "No run has a teacher: no class correlations to compare."
        return tsne, correlation

    def build(self) -> dict[str, Any]:
        started = time.perf_counter()
        steps = [("calibration", self.calibration), ("accuracy", self.accuracy), ("agreement", self.agreement),
                 ("explanations", self.explanations), ("curves", self.curves), ("features", self.features)]
        sections: dict[str, Any] = {}
        for name, step in steps:
            self.log(f"report: {name} ...")
            sections[name] = step()
        metrics, grid = sections.pop("explanations")
        tsne, correlation = sections.pop("features")
        ordered = [sections["accuracy"], sections["agreement"], sections["calibration"], metrics, grid,
                   sections["curves"], tsne, correlation]
        return {
            "title": "kdlens report",
            "generated": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "version": __version__,
            "inputs": [str(p) for p in self.paths],
            "n_runs": sum(len(g.runs) for g in self.groups),
            "n_groups": len(self.groups),
            "notes": self.notes,
            "summary": self.summary(),
            "sections": ordered,
            "seconds": time.perf_counter() - started,
        }


def render(context: dict[str, Any]) -> str:
    import jinja2

    environment = jinja2.Environment(loader=jinja2.PackageLoader("kdlens.report", "templates"),
                                     autoescape=jinja2.select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
    return environment.get_template("report.html.j2").render(**context)


def write_report(paths: list[Path], out: Path, data_limit: int = 512, explain_n: int = 32, tsne: bool = True,
                 threads: int | None = None, log: Callable[[str], None] = lambda _: None) -> Path:
    """Build the report of the runs in ``paths`` (run or sweep folders) and write it to ``out``.

    ``threads``: torch CPU threads while building (restored after); 1 is much faster for small
    models on busy cores, where extra OpenMP threads spin-wait."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        context = ReportBuilder([Path(p) for p in paths], data_limit, explain_n, tsne, log).build()
    finally:
        torch.set_num_threads(previous)
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(out, render(context))
