"""How much reduced precision moves each forward-only explanation metric: the metrics whose every
model call is a forward pass of clean or perturbed images (pixel flipping, ROAD, faithfulness
correlation, ...) scored in float32 and again with those forwards under ``torch.autocast`` in
bfloat16 and float16 (``EvaluationContext(precision=...)``, ``kdlens evaluate --sweep-precision``).

Model: resnet20 trained on ``shapes`` (cached under runs/benchmarks/precision/; a few CPU minutes
the first time), its Grad-CAM maps of the first ``--n`` test images for the true class. Per metric
and precision: the change of the mean score in units of the float32 scores' spread across images,
the largest per-image change in the same units, and Spearman's rank correlation of the per-image
scores with float32's. A metric *tolerates* a precision when the mean moves by at most
``MEAN_SHIFT`` spreads and the ranking keeps ρ ≥ ``MIN_RHO``: both the table's comparisons of models
and of images then stand. Writes docs/benchmarks/precision.md.

    python benchmarks/precision.py [--n 24] [--device cpu]

On a CPU without bfloat16/float16 arithmetic (AVX2) the reduced precisions are far slower than
float32 (the times are in the file): the option is for GPUs; the scores' changes are the same there
up to the order of the float operations.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import platform
import time
from datetime import date
from pathlib import Path

import torch
from scipy.stats import spearmanr

import kdlens.metrics as km
from kdlens.config import validate_config, validate_data_config
from kdlens.data import build_data
from kdlens.evaluation import resolve_device
from kdlens.explain import explain
from kdlens.io import atomic_write_text, markdown_table
from kdlens.metrics.base import EvaluationContext, eval_mode
from kdlens.metrics.explanation_evaluation import thesis_overrides
from kdlens.registry import METRICS
from kdlens.runs import RunFolder, load_model
from kdlens.training.run import run_experiment

ROOT = Path("runs/benchmarks/precision")
OUT = Path("docs/benchmarks/precision.md")
DATA = {"name": "shapes", "num_classes": 4, "train_size": 2000, "test_size": 1000, "batch_size": 64}
MEAN_SHIFT = 0.05
MIN_RHO = 0.95
PRECISIONS = {"bfloat16": torch.bfloat16, "float16": torch.float16}
STEP = 64  # features per step where a metric takes it: 48 groups at 32 px, as the thesis preset
DRAWS = 10  # monotonicity_correlation's draws per group (default 100: 4800 forwards per image)
OWN_SETTINGS = {"monotonicity": {"features_in_step": 384}}
"""8 steps: with 48, every image of this model fails Monotonicity in every precision, which tests nothing."""


def trained_model(device: torch.device) -> torch.nn.Module:
    config = validate_config({
        "name": "resnet20", "output_dir": str(ROOT), "seed": 0, "data": DATA, "model": {"name": "resnet20"},
        "losses": [{"name": "ce", "weight": 1.0}],
        "recipe": {"epochs": 8, "optimizer": {"name": "adam", "lr": 3e-3}, "schedule": {"name": "cosine", "warmup_epochs": 1}},
        "trainer": {"progress_bar": False, "log_every_n_steps": 10},
    })
    folder = RunFolder(config.run_dir)
    if not folder.finished:
        run_experiment(config, resume=folder.resumable)
    return load_model(folder.best)[0].eval().to(device)


def sweep_metrics(image_shape: tuple[int, int, int]) -> dict[str, km.ExplanationMetric]:
    """Every registered metric that reads the model through forward passes only."""
    overrides = thesis_overrides(*image_shape)
    metrics = {}
    for name in km.forward_only_metric_names():
        cls = METRICS.get(name)
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = OWN_SETTINGS.get(name) or overrides.get(name) or ({"features_in_step": STEP} if "features_in_step" in fields else {})
        metrics[name] = cls(**kwargs, **({"nr_samples": DRAWS} if "nr_samples" in fields else {}))
    return metrics


def scores(metrics, model, x, y, a, precision: torch.dtype | None) -> tuple[dict[str, torch.Tensor], float]:
    """Every metric on one context of that precision, through ``compute``: ``evaluate`` would run
    the ``precision_sensitive`` ones in float32, and their change is what is measured here."""
    started = time.perf_counter()
    context = EvaluationContext(model, x, y, a, precision=precision)
    with eval_mode(model):
        result = {name: metric.compute(context) for name, metric in metrics.items()}
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    return {name: values.double().cpu() for name, values in result.items()}, time.perf_counter() - started


def compare(reference: torch.Tensor, reduced: torch.Tensor) -> dict[str, float]:
    """The change of ``reduced`` from ``reference`` over the images both score (NaN-free). Where the
    float32 scores do not vary (a pass/fail metric failing every image), changes are measured in
    units of 1 instead of the spread."""
    both = ~(reference.isnan() | reduced.isnan())
    ref, red = reference[both], reduced[both]
    spread = ref.std().item() if len(ref) > 1 else 0.0
    unit = spread if spread > 0 else 1.0
    changed = (red - ref).abs()
    rho = spearmanr(ref.numpy(), red.numpy()).statistic if len(ref) > 2 and spread > 0 and red.std() > 0 else float("nan")
    return {
        "mean_shift": abs(red.mean() - ref.mean()).item() / unit,
        "max_change": changed.max().item() / unit if len(ref) else float("nan"),
        "rho": float(rho) if spread > 0 else float("nan"),
        "images_changed": int((changed > 1e-9 * ref.abs().clamp(min=1)).sum()),
        "nan_changed": int((reference.isnan() != reduced.isnan()).sum()),
    }


def verdict(row: dict[str, float]) -> str:
    """``yes``, ``no``, or ``untested`` where every image has one score in every precision (a
    pass/fail metric that all images pass or fail says nothing about ties)."""
    if math.isnan(row["rho"]) and row["images_changed"] == 0 and row["nan_changed"] == 0:
        return "untested"
    return "yes" if row["mean_shift"] <= MEAN_SHIFT and row["rho"] >= MIN_RHO and row["nan_changed"] == 0 else "no"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=24, help="test images scored")
    parser.add_argument("--device", help="cpu or cuda[:N] (default: CUDA when present, else CPU)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    device = resolve_device(args.device)
    model = trained_model(device)
    bundle = build_data(validate_data_config({**DATA, "augment": False}))
    batch = next(iter(torch.utils.data.DataLoader(bundle.test, batch_size=args.n)))
    x, y = batch["image"].to(device), batch["label"].to(device)
    a = explain(model, x, y, "gradcam").detach()
    metrics = sweep_metrics(tuple(x.shape[1:]))
    reference, seconds = scores(metrics, model, x, y, a, None)
    timings = {"float32": seconds}
    rows, verdicts = [], {name: [] for name in metrics}
    for label, precision in PRECISIONS.items():
        reduced, timings[label] = scores(metrics, model, x, y, a, precision)
        for name in metrics:
            row = compare(reference[name], reduced[name])
            verdicts[name].append((label, verdict(row)))
            rows.append({
                "metric": name, "precision": label, "float32 mean": f"{reference[name].nanmean().item():.4f}",
                "mean shift (spreads)": f"{row['mean_shift']:.3f}", "largest change (spreads)": f"{row['max_change']:.3f}",
                "Spearman ρ": f"{row['rho']:.4f}", "images changed": f"{row['images_changed']}/{args.n}",
                "NaN changed": row["nan_changed"],
                "tolerates": {"yes": "yes", "no": "**no**", "untested": "untested (one score for all)"}[verdict(row)],
            })
        print(f"{label}: {timings[label]:.1f} s (float32 {timings['float32']:.1f} s)", flush=True)
    by_verdict = {(label, v): [name for name in metrics if dict(verdicts[name])[label] == v]
                  for label in PRECISIONS for v in ("yes", "no", "untested")}
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()} CPU"
    text = "\n".join([
        "## Reduced precision in the metrics' forward passes",
        "",
        f"Generated by `python benchmarks/precision.py --n {args.n} --device {device.type}` on {date.today()}, {where}, "
        f"torch {torch.__version__}. Model: resnet20 trained on `shapes` (8 epochs), Grad-CAM maps of the first "
        f"{args.n} test images for their true class; every metric whose model calls are forward passes only "
        f"(monotonicity_correlation with {DRAWS} draws per group, monotonicity with 8 steps).",
        "",
        f"A metric tolerates a precision when its mean moves by at most {MEAN_SHIFT} of the float32 scores' "
        f"standard deviation across images, the images keep their ranking (Spearman ρ ≥ {MIN_RHO}) and no "
        "score turns NaN or back. Where the float32 scores are all equal (a pass/fail metric), changes are in "
        "units of 1 and no image may change. Each metric is computed on a context of the precision directly: "
        "`evaluate` runs the `precision_sensitive` ones (those not tolerating bfloat16 here) in float32 regardless.",
        "",
        markdown_table(rows),
        "",
        *[f"- {label}: tolerated by {', '.join(by_verdict[(label, 'yes')]) or 'none'}"
          + (f"; not by {', '.join(by_verdict[(label, 'no')])}" if by_verdict[(label, "no")] else "")
          + (f"; untested: {', '.join(by_verdict[(label, 'untested')])}" if by_verdict[(label, "untested")] else "") + "."
          for label in PRECISIONS],
        "- Wall time of all of them on this device: " + ", ".join(f"{label} {t:.1f} s" for label, t in timings.items())
        + (" (a CPU without bfloat16/float16 arithmetic emulates them: the option is for GPUs)." if device.type == "cpu" else "."),
        "",
    ])
    atomic_write_text(args.out, text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
