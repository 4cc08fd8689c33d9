"""``kdlens report``: one self-contained HTML file (images as base64 PNG, inline CSS, no scripts)
about a set of runs and sweeps. It only renders: every number and map comes in a
:class:`~kdlens.evaluation.report_data.ReportData` (built by
:func:`kdlens.evaluation.collect_report_data`)."""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdlens import __version__
from kdlens.aggregate import Aggregate, aggregate, format_aggregate
from kdlens.evaluation.measures import AGREEMENT_METRICS, ECE_BINS
from kdlens.evaluation.report_data import LOCALISATION_METRICS, TSNE_LIMIT, ReportData
from kdlens.io import atomic_write_text
from kdlens.report import figures

MISSING = "–"


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
    return format_aggregate([value], digits)


class ReportRenderer:
    """The sections of the report of ``data``; each reads only ``data``, in any order."""

    def __init__(self, data: ReportData) -> None:
        self.data = data
        self.groups = data.groups

    def summary(self) -> Table:
        rows = []
        for group in self.groups:
            rows.append([
                group.label, str(group.seeds), group.model, group.teacher or MISSING, group.losses,
                format_aggregate(group.values("best", "test", "top1")), format_aggregate(group.values("last", "test", "top1")),
                format_aggregate(group.values("best", "test", "agreement")),
                format_aggregate(group.values("best", "test", "kl_teacher_student")),
                format_aggregate(group.worst_group()),
                format_aggregate([c.ece[15] for c in group.calibration]),
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
        top5 = any(g.values("best", "test", "top5") for g in self.groups)
        if top5:
            columns += ["best test top-5"]
        rows = []
        for group in self.groups:
            row = [group.label, group.losses, _fmt(group.alpha, 2), format_aggregate(group.values("best", "epoch"), 1)]
            for split in splits:
                row += [format_aggregate(group.values("best", split, "top1")), format_aggregate(group.values("last", split, "top1"))]
            if top5:
                row.append(format_aggregate(group.values("best", "test", "top5")))
            rows.append(row)
        section.tables.append(Table(columns, rows))
        labels = [g.label for g in self.groups]
        series = {f"{which} {split}": [aggregate(g.values(which, split, "top1")) for g in self.groups]
                  for split in splits for which in ("best", "last")}
        section.images.append({"src": figures.grouped_bars(labels, series, "top-1", ylim=(0, 1.05)),
                               "caption": "Top-1 per run group (error bars: std over seeds)."})
        section.images.append(self._alpha_plot())
        return section

    def _alpha_plot(self) -> dict[str, str]:
        """Top-1 against α (the distillation weight) per model and set of distillation terms, when
        the runs differ in α."""
        distilled = {g.model for g in self.groups if (g.alpha or 0) > 0}
        candidates = [g for g in self.groups if g.model in distilled and not g.is_teacher and g.alpha is not None]
        if len({g.alpha for g in candidates}) <= 1:
            return {"note": "No accuracy-vs-α plot: the runs do not differ in their distillation weights."}
        by_series: dict[str, list[tuple[float, Aggregate, Aggregate]]] = {}
        distilled_series = {(g.model, g.distillation_terms) for g in candidates if g.distillation_terms}
        for group in candidates:
            best = aggregate(group.values("best", "test", "top1"))
            if best.n == 0:
                continue
            point = (group.alpha, best, aggregate(group.values("last", "test", "top1")))
            # A run without distillation terms is the α = 0 point of every series of its model.
            keys = [(group.model, group.distillation_terms)] if group.distillation_terms else \
                [key for key in distilled_series if key[0] == group.model]
            for model, terms in keys:
                by_series.setdefault(f"{model}: {' + '.join(terms)}", []).append(point)
        return {"src": figures.alpha_plot(by_series),
                "caption": "Test top-1 against α = weights of the terms that need a teacher / weights of all terms."}

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
                row = [group.label, group.teacher or MISSING, split]
                for which in ("best", "last"):
                    row += [format_aggregate(group.values(which, split, "agreement")),
                            format_aggregate(group.values(which, split, "kl_teacher_student"))]
                rows.append(row)
        section.tables.append(Table(columns, rows))
        labels = [g.label for g in groups]
        section.images.append({"src": figures.grouped_bars(labels, {f"agreement ({s})": [aggregate(g.values("best", s, "agreement")) for g in groups] for s in splits}, "agreement", ylim=(0, 1.05)),
                               "caption": "Top-1 agreement with the teacher (best checkpoint)."})
        section.images.append({"src": figures.grouped_bars(labels, {f"KL ({s})": [aggregate(g.values("best", s, "kl_teacher_student")) for g in groups] for s in splits}, "KL(t‖s)"),
                               "caption": "KL(teacher ‖ student) (best checkpoint)."})
        return section

    def calibration(self) -> Section:
        section = Section("calibration", "Calibration",
                          f"Best checkpoint of each run on the first {self.data.data_limit} test images (fewer where the split is smaller): "
                          "expected calibration error with 10, 15 and 20 equal-width bins, mean predictive entropy (nats); "
                          "reliability diagrams of each group's first seed.")
        rows, diagrams = [], {}
        for teacher in self.data.teacher_calibration:
            result = teacher.calibration
            rows.append([teacher.name, "1", *(_fmt(result.ece[b]) for b in ECE_BINS), _fmt(result.entropy)])
            diagrams[teacher.name] = result.diagram
        for group in self.groups:
            results = group.calibration
            rows.append([group.label, str(len(results)), *(format_aggregate([r.ece[b] for r in results]) for b in ECE_BINS),
                         format_aggregate([r.entropy for r in results])])
            diagrams[group.label] = results[0].diagram
        section.tables.append(Table(["model", "seeds", "ECE (10 bins)", "ECE (15 bins)", "ECE (20 bins)", "mean entropy"], rows))
        section.images.append({"src": figures.reliability_diagrams(diagrams),
                               "caption": "Reliability diagrams (10 bins): accuracy per confidence bin; shaded: the gap to the confidence; dashed: perfect calibration."})
        return section

    def explanations(self) -> tuple[Section, Section]:
        explained = self.data.explanations
        metrics = Section("explanation-metrics", "Explanation metrics",
                          f"Grad-CAM maps (default layer) for the teacher's top-1 class on the first {self.data.explain_n} test images; "
                          "localisation against the object masks (pointing game, energy pointing game, attribution localisation) "
                          "and teacher–student similarity of the maps (cosine, Spearman, SSIM, top-10 % IoU); mean ± std over seeds.")
        grid = Section("heatmaps", "Heatmap grid", "Input, then the Grad-CAM maps of the teacher and of each group's first-seed student for the teacher's top-1 class (one colour scale).")
        if not explained.has_teacher:
            metrics.note = grid.note = "No run has a teacher: no teacher–student explanations to compare."
            return metrics, grid
        if not explained.rows:
            metrics.note = grid.note = "No student fits a teacher of these runs: no teacher–student explanations to compare."
            return metrics, grid
        localisation, similarity = list(LOCALISATION_METRICS), list(AGREEMENT_METRICS)
        rows = []
        for row in explained.rows:
            seeds = max((len(v) for v in row.scores.values()), default=1)
            rows.append([row.name, str(seeds),
                         *(format_aggregate(row.scores[n], 3) if n in row.scores else MISSING for n in localisation + similarity)])
        metrics.tables.append(Table(["model", "seeds", *LOCALISATION_METRICS.values(), *AGREEMENT_METRICS.values()], rows))
        if not explained.masks:
            metrics.intro += " These datasets have no object masks: localisation metrics are left out."
        names = [row.name for row in explained.rows]
        bars = {row.name: {n: aggregate(v) for n, v in row.scores.items()} for row in explained.rows}
        shown = [n for n in localisation if any(n in scores for scores in bars.values())]
        if shown:
            metrics.images.append({"src": figures.grouped_bars(names, {LOCALISATION_METRICS[n]: [bars[m].get(n) for m in names] for n in shown}, "score", ylim=(0, 1.05)),
                                   "caption": "Localisation of the Grad-CAM maps (higher: more on the object)."})
        students = [row.name for row in explained.rows if not row.is_teacher]
        metrics.images.append({"src": figures.grouped_bars(students, {AGREEMENT_METRICS[n]: [bars[m].get(n) for m in students] for n in similarity}, "similarity to the teacher"),
                               "caption": "Teacher–student similarity of the Grad-CAM maps."})
        if explained.grid is not None:
            g = explained.grid
            grid.images.append({"src": figures.explanation_grid(g.images, g.labels, g.class_names, g.model_names, g.predictions, g.maps),
                                "caption": "Rows: test images (title: true class); columns: the input, the teacher, the students (title: predicted class)."})
        return metrics, grid

    def curves(self) -> Section:
        section = Section("curves", "Training curves", "Train loss and validation top-1 per epoch from logs/csv (all attempts of a resumed run, in order); one line per seed.")
        curves = {g.label: g.curves for g in self.groups}
        if not any(c["train_loss"] or c["val_top1"] for runs in curves.values() for c in runs):
            section.note = "No CSV training logs found in these runs."
            return section
        section.images.append({"src": figures.training_curves(curves), "caption": ""})
        return section

    def features(self) -> tuple[Section, Section]:
        tsne = Section("tsne", "Penultimate features (t-SNE)",
                       "t-SNE of the classifier's input features on the test images (teacher and each group's first seed), "
                       f"coloured by true class (at most {TSNE_LIMIT} images); silhouette scores of the true classes in the "
                       "feature space and in the embedding.")
        correlation = Section("class-correlation", "Class correlations of the logits",
                              "Correlation of each pair of logit columns over the test images, teacher against student (first seed); "
                              "‖C_s − C_t‖_F is the Frobenius norm of the difference (0: the same class structure).")
        features = self.data.features
        if not features.enabled:
            tsne.note = "t-SNE was switched off for this report."
        elif not features.embeddings:
            tsne.note = "Too few test samples for t-SNE."
        else:
            tsne.tables.append(Table(["model", "samples", "feature dim", "silhouette (features)", "silhouette (t-SNE)"],
                                     [[e.name, str(len(e.labels)), str(e.dim), _fmt(e.silhouette_features, 3),
                                       _fmt(e.silhouette_embedding, 3)] for e in features.embeddings]))
            tsne.images.append({"src": figures.tsne_panels({e.name: (e.points, e.labels) for e in features.embeddings},
                                                           features.class_names), "caption": ""})
        rows = []
        for pair in self.data.correlations:
            rows.append([pair.label, _fmt(pair.difference, 3), _fmt(pair.difference / len(pair.teacher), 3)])
            correlation.images.append({"src": figures.correlation_pair(pair.teacher, pair.student, pair.label, pair.class_names),
                                       "caption": f"{pair.label}: ‖C_s − C_t‖_F = {pair.difference:.3f}"})
        if rows:
            correlation.tables.append(Table(["run", "‖C_s − C_t‖_F", "‖C_s − C_t‖_F / K"], rows))
        else:
            correlation.note = "No run has a teacher: no class correlations to compare."
        return tsne, correlation

    def context(self) -> dict[str, Any]:
        """What the template renders."""
        started = time.perf_counter()
        metrics, grid = self.explanations()
        tsne, correlation = self.features()
        sections = [self.accuracy(), self.agreement(), self.calibration(), metrics, grid, self.curves(), tsne, correlation]
        return {
            "title": "kdlens report",
            "generated": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "version": __version__,
            "inputs": self.data.inputs,
            "n_runs": self.data.n_runs,
            "n_groups": len(self.groups),
            "notes": self.data.notes,
            "summary": self.summary(),
            "sections": sections,
            "seconds": self.data.seconds + time.perf_counter() - started,
        }


def render(data: ReportData) -> str:
    """The report of ``data`` as one HTML document."""
    import jinja2

    environment = jinja2.Environment(loader=jinja2.PackageLoader("kdlens.report", "templates"),
                                     autoescape=jinja2.select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
    return environment.get_template("report.html.j2").render(**ReportRenderer(data).context())


def write_report(data: ReportData, out: Path) -> Path:
    """Render ``data`` and write it to ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(out, render(data))
