"""The report's plots: matplotlib (Agg, no display), one style, returned as base64 PNG data URIs."""

from __future__ import annotations

import base64
import functools
import io
import tempfile
from collections.abc import Callable
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from kdlens.aggregate import Aggregate
from kdlens.evaluation.measures import Diagram
from kdlens.explain.figure import save_explanation_grid

STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "axes.prop_cycle": matplotlib.cycler(color=["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                                "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"]),
}
COLORS = STYLE["axes.prop_cycle"].by_key()["color"]
DPI = 110


def color(index: int) -> str:
    return COLORS[index % len(COLORS)]


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def styled(draw: Callable[..., Figure]) -> Callable[..., str]:
    """Run ``draw`` (returning a Figure) in the report style; return the PNG as a data URI."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs) -> str:
        with matplotlib.rc_context(STYLE):
            figure = draw(*args, **kwargs)
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=DPI)
        return png_uri(buffer.getvalue())

    return wrapper


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _mean(value: Aggregate | None) -> float:
    return value.mean if value is not None else np.nan


def _spread(value: Aggregate | None) -> float:
    """The error bar: the std over seeds; none (0) for one seed, where the std is undefined."""
    return 0.0 if value is None or np.isnan(value.std) else value.std


@styled
def grouped_bars(categories: list[str], series: dict[str, list[Aggregate | None]], ylabel: str,
                 title: str = "", ylim: tuple[float, float] | None = None) -> Figure:
    """Bars per category (the mean), one bar per series, with std error bars."""
    figure = _figure(max(4.5, 0.9 * len(categories) * max(1, len(series)) / 2 + 2), 3.0)
    axis = figure.subplots()
    width = 0.8 / max(1, len(series))
    x = np.arange(len(categories))
    for index, (name, values) in enumerate(series.items()):
        means = [_mean(v) for v in values]
        stds = [_spread(v) for v in values]
        axis.bar(x + (index - (len(series) - 1) / 2) * width, means, width, yerr=stds, capsize=3,
                 label=name, color=color(index))
    axis.set_xticks(x, categories, rotation=20 if max(map(len, categories)) > 10 else 0, ha="right" if max(map(len, categories)) > 10 else "center")
    axis.set_ylabel(ylabel)
    axis.axhline(0, color="#333", linewidth=0.8)
    if ylim:
        axis.set_ylim(*ylim)
    if title:
        axis.set_title(title)
    if len(series) > 1:
        axis.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axis.grid(axis="x", visible=False)
    return figure


@styled
def alpha_plot(series: dict[str, list[tuple[float, Aggregate, Aggregate]]]) -> Figure:
    """Test top-1 vs α (the distillation weight); per series, points (α, best, last top-1 over seeds)."""
    figure = _figure(5.5, 3.2)
    axis = figure.subplots()
    for index, (name, points) in enumerate(series.items()):
        points = sorted(points, key=lambda p: p[0])
        alphas = [p[0] for p in points]
        axis.errorbar(alphas, [_mean(p[1]) for p in points], yerr=[_spread(p[1]) for p in points], marker="o", capsize=3,
                      color=color(index), label=f"{name} best")
        last = [(a, p[2]) for a, p in zip(alphas, points) if p[2].n]
        if last:
            axis.errorbar([a for a, _ in last], [_mean(v) for _, v in last], yerr=[_spread(v) for _, v in last], marker="s",
                          capsize=3, linestyle="--", color=color(index), alpha=0.6, label=f"{name} last")
    axis.set_xlabel("α = distillation weight / all weights")
    axis.set_ylabel("test top-1")
    axis.set_xlim(-0.05, 1.05)
    axis.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return figure


@styled
def reliability_diagrams(diagrams: dict[str, Diagram]) -> Figure:
    """One panel per model: accuracy per confidence bin against the diagonal, bin counts shaded."""
    n = len(diagrams)
    columns = min(n, 4)
    rows = -(-n // columns)
    figure = _figure(2.6 * columns, 2.6 * rows)
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for axis, (name, diagram) in zip(axes, diagrams.items()):
        edges = diagram.edges
        centres, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
        filled = diagram.count > 0
        axis.bar(centres[filled], diagram.accuracy[filled], width * 0.95, color=color(0), label="accuracy")
        gap = diagram.confidence[filled] - diagram.accuracy[filled]
        axis.bar(centres[filled], gap, width * 0.95, bottom=diagram.accuracy[filled], color=color(1), alpha=0.35,
                 label="gap")
        axis.plot([0, 1], [0, 1], color="#555", linewidth=1, linestyle="--")
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("confidence")
        axis.set_ylabel("accuracy")
    for axis in axes[n:]:
        axis.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=2)
    return figure


@styled
def training_curves(curves: dict[str, list[dict[str, dict[int, float]]]]) -> Figure:
    """Train loss and val top-1 per epoch; one colour per group, one line per seed."""
    figure = _figure(9.0, 3.0)
    loss_axis, top1_axis = figure.subplots(1, 2)
    for index, (name, runs) in enumerate(curves.items()):
        for seed, run in enumerate(runs):
            label = name if seed == 0 else None
            for axis, key in ((loss_axis, "train_loss"), (top1_axis, "val_top1")):
                points = sorted(run[key].items())
                if points:
                    axis.plot(*zip(*points), marker="o", markersize=3, color=color(index), label=label,
                              alpha=1.0 if seed == 0 else 0.5)
    loss_axis.set(title="train loss", xlabel="epoch")
    top1_axis.set(title="val top-1", xlabel="epoch")
    top1_axis.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    last_epoch = max((max(run[key], default=1) for runs in curves.values() for run in runs for key in run), default=1)
    for axis in (loss_axis, top1_axis):
        axis.set_xlim(0.5, last_epoch + 0.5)
        axis.xaxis.get_major_locator().set_params(integer=True)
    return figure


@styled
def tsne_panels(embeddings: dict[str, tuple[np.ndarray, np.ndarray]], class_names: list[str]) -> Figure:
    """One scatter per model of its 2-D embedding, coloured by true class; ``embeddings[name] = (points, labels)``."""
    n = len(embeddings)
    columns = min(n, 4)
    rows = -(-n // columns)
    figure = _figure(2.8 * columns + 1.2, 2.7 * rows)
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for axis, (name, (points, labels)) in zip(axes, embeddings.items()):
        for k in np.unique(labels):
            chosen = labels == k
            axis.scatter(points[chosen, 0], points[chosen, 1], s=6, color=color(int(k)), alpha=0.8,
                         label=class_names[k] if k < len(class_names) else str(k))
        axis.set_title(name, fontsize=9)
        axis.set_xticks([])
        axis.set_yticks([])
        axis.grid(False)
    for axis in axes[n:]:
        axis.set_visible(False)
    axes[min(n, columns) - 1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), markerscale=2)
    return figure


@styled
def correlation_pair(teacher: np.ndarray, student: np.ndarray, student_name: str, class_names: list[str]) -> Figure:
    """The teacher's and the student's class-correlation matrices and their difference."""
    figure = _figure(9.0, 3.0)
    axes = figure.subplots(1, 3)
    for axis, matrix, title, cmap in ((axes[0], teacher, "teacher", "RdBu_r"), (axes[1], student, student_name, "RdBu_r"),
                                      (axes[2], student - teacher, "student − teacher", "PuOr_r")):
        image = axis.imshow(matrix, vmin=-1, vmax=1, cmap=cmap)
        axis.set_title(title, fontsize=9)
        ticks = range(len(matrix))
        names = [c[:8] for c in class_names] if len(class_names) == len(matrix) and len(matrix) <= 12 else None
        if names:
            axis.set_xticks(ticks, names, rotation=90, fontsize=7)
            axis.set_yticks(ticks, names, fontsize=7)
        else:
            axis.set_xticks([])
            axis.set_yticks([])
        axis.grid(False)
    figure.colorbar(image, ax=axes.tolist(), shrink=0.8)
    return figure


def explanation_grid(images: np.ndarray, labels: np.ndarray, class_names: list[str], model_names: list[str],
                     predictions: np.ndarray, maps: np.ndarray) -> str:
    """The heatmap grid of ``kdlens explain`` (:func:`kdlens.explain.figure.save_explanation_grid`) as a data URI."""
    with tempfile.TemporaryDirectory() as folder:
        path = save_explanation_grid(Path(folder) / "grid.png", images, labels, class_names, model_names, predictions,
                                     {"Grad-CAM": maps})
        return png_uri(Path(path).read_bytes())
