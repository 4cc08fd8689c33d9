"""Time kdlens's explanation metrics against Quantus 0.6 and against the forward floor.

Same model (torchvision resnet18, random init, 10 classes), inputs (N random 32×32 images, their
predicted classes), attributions (input × gradient) and masks for both libraries. For every metric
kdlens shares with Quantus: both wall times and their ratio. For the ``thesis`` suite (scaled to
32 px): kdlens end to end, Quantus end to end (its metrics one after another) and the *forward
floor*: the time of exactly the forward passes the suite's definitions require (one clean pass,
FaithfulnessEstimate's groups, MonotonicityCorrelation's groups × draws), measured in this run on
prepared batches at the best batch size and memory format. kdlens runs at that same configuration.

Usage: ``python benchmarks/metrics.py [--n 64] [--threads 1] [--repeats 2] [--out docs/benchmarks/metrics.md]``
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

import kdlens.metrics as km
from kdlens.models import create_model

SIZE = 32
STEP = 64  # features per step: 3·32·32 / 64 = 48 groups, the thesis preset's 48 at 224 px
THESIS_OVERRIDES = {
    "top_k_intersection": {"k": 20},  # 1000 of 224² pixels ≈ 20 of 32²
    "faithfulness_estimate": {"features_in_step": STEP},
    "monotonicity_correlation": {"features_in_step": STEP, "nr_samples": 10},
}


def input_x_gradient(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).gather(1, y[:, None]).sum(), x)
    return (grad * x).sum(1, keepdim=True).detach()


def timed(fn: Callable[..., object], *args: object) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


@torch.inference_mode()
def forwards(model: nn.Module, batch: Tensor, sizes: list[int]) -> None:
    for size in sizes:
        model(batch[:size])


def setup(n: int) -> dict:
    torch.manual_seed(0)
    model = create_model("resnet18", 10, 3).eval()
    x = torch.rand(n, 3, SIZE, SIZE)
    with torch.no_grad():
        y = model(x).argmax(1)
    s = torch.zeros(n, 1, SIZE, SIZE)
    for i in range(n):
        top, left = (7 * i) % 16, (11 * i) % 16
        s[i, :, top : top + 12, left : left + 14] = 1
    return {"model": model, "x": x, "y": y, "a": input_x_gradient(model, x, y), "s": s}


def best_configuration(model: nn.Module) -> tuple[int, torch.memory_format, dict]:
    """Throughput (images/s) of plain forwards per (batch size, memory format); the best one."""
    results = {}
    for memory_format in (torch.contiguous_format, torch.channels_last):
        model.to(memory_format=memory_format)
        for batch_size in (64, 128, 256, 512):
            batch = torch.rand(batch_size, 3, SIZE, SIZE).contiguous(memory_format=memory_format)
            forwards(model, batch, [batch_size])  # warm-up
            results[(batch_size, memory_format)] = 4 * batch_size / timed(forwards, model, batch, [batch_size] * 4)
    model.to(memory_format=torch.contiguous_format)
    batch_size, memory_format = max(results, key=results.get)  # type: ignore[arg-type]
    return batch_size, memory_format, results


def forward_floor(model: nn.Module, n_images: int, batch_size: int, memory_format: torch.memory_format) -> float:
    """Seconds to forward exactly ``n_images`` prepared images at the given configuration."""
    model.to(memory_format=memory_format)
    batch = torch.rand(batch_size, 3, SIZE, SIZE).contiguous(memory_format=memory_format)
    sizes = [batch_size] * (n_images // batch_size) + ([n_images % batch_size] if n_images % batch_size else [])
    seconds = timed(forwards, model, batch, sizes)
    model.to(memory_format=torch.contiguous_format)
    return seconds


@dataclass
class Case:
    """One metric in both libraries, and the work its definition needs per sample: model forwards
    and (for robustness/randomisation) explanations."""

    name: str
    ours: km.ExplanationMetric
    theirs: object
    forwards: int = 0
    explanations: int = 0


def quantus_metric(quantus, name: str, **kwargs: object) -> object:
    return getattr(quantus, name)(disable_warnings=True, **kwargs)


def thesis_cases(quantus, suite: dict[str, km.ExplanationMetric]) -> list[Case]:
    groups = 3 * SIZE * SIZE // STEP
    return [
        Case("pointing_game", suite["pointing_game"], quantus_metric(quantus, "PointingGame")),
        Case(
            "attribution_localisation",
            suite["attribution_localisation"],
            quantus_metric(quantus, "AttributionLocalisation"),
        ),
        Case(
            "relevance_rank_accuracy",
            suite["relevance_rank_accuracy"],
            quantus_metric(quantus, "RelevanceRankAccuracy"),
        ),
        Case("top_k_intersection", suite["top_k_intersection"], quantus_metric(quantus, "TopKIntersection", k=20)),
        Case(
            "monotonicity_correlation",
            suite["monotonicity_correlation"],
            quantus_metric(quantus, "MonotonicityCorrelation", features_in_step=STEP, nr_samples=10),
            forwards=1 + groups * 10,
        ),
        Case(
            "faithfulness_estimate",
            suite["faithfulness_estimate"],
            quantus_metric(quantus, "FaithfulnessEstimate", features_in_step=STEP),
            forwards=1 + groups,
        ),
    ]


def other_cases(quantus) -> list[Case]:
    q = partial(quantus_metric, quantus)
    patches_8, patches_4 = (SIZE // 8) ** 2, (SIZE // 4) ** 2
    layers = sum(hasattr(m, "reset_parameters") for m in create_model("resnet18", 10, 3).modules())
    return [
        Case("relevance_mass_accuracy", km.RelevanceMassAccuracy(), q("RelevanceMassAccuracy")),
        Case("auc", km.AUC(), q("AUC")),
        Case("sparseness", km.Sparseness(), q("Sparseness")),
        Case("complexity", km.Complexity(), q("Complexity")),
        Case("effective_complexity", km.EffectiveComplexity(), q("EffectiveComplexity")),
        Case(
            "pixel_flipping",
            km.PixelFlipping(features_in_step=STEP),
            q("PixelFlipping", features_in_step=STEP),
            forwards=3 * SIZE * SIZE // STEP,
        ),
        Case(
            "region_perturbation",
            km.RegionPerturbation(patch_size=8),
            q("RegionPerturbation", patch_size=8),
            forwards=1 + patches_8,
        ),
        Case("selectivity", km.Selectivity(patch_size=8), q("Selectivity", patch_size=8), forwards=patches_8),
        Case(
            "faithfulness_correlation",
            km.FaithfulnessCorrelation(subset_size=64),
            q("FaithfulnessCorrelation", subset_size=64, return_aggregate=False),
            forwards=1 + 100,
        ),
        Case("infidelity", km.Infidelity(), q("Infidelity", n_perturb_samples=1), forwards=1 + patches_4),
        Case("max_sensitivity", km.MaxSensitivity(nr_samples=10), q("MaxSensitivity", nr_samples=10), explanations=10),
        Case("avg_sensitivity", km.AvgSensitivity(nr_samples=10), q("AvgSensitivity", nr_samples=10), explanations=10),
        Case(
            "local_lipschitz_estimate",
            km.LocalLipschitzEstimate(nr_samples=10),
            q("LocalLipschitzEstimate", nr_samples=10),
            explanations=10,
        ),
        Case("random_logit", km.RandomLogit(), q("RandomLogit", num_classes=10), forwards=1, explanations=1),
        Case("mprt", km.MPRT(), q("MPRT"), explanations=layers),
    ]


@dataclass
class Results:
    n: int
    threads: int
    repeats: int
    load: tuple[float, float]
    batch_size: int
    memory_format: str
    throughputs: dict
    suite_images: int
    floor: float
    kdlens_suite: float
    quantus_suite: float
    rows: list[tuple[Case, float, float]]


def report(r: Results) -> str:
    groups = 3 * SIZE * SIZE // STEP
    per_second = r.suite_images / r.floor
    lines = [
        "# Explanation metrics: kdlens vs Quantus 0.6 and the forward floor",
        "",
        f"Generated by `python benchmarks/metrics.py --n {r.n} --threads {r.threads} --repeats {r.repeats}` on "
        f"{platform.machine()}, {os.cpu_count()} cores shared with other jobs (load average {r.load[0]:.1f} before, "
        f"{r.load[1]:.1f} after), torch {torch.__version__}, {r.threads} torch thread(s). Suite timings: best of "
        f"{r.repeats} interleaved runs; per-metric timings: one run each (expect ±10–20 % noise from the other jobs).",
        "",
        f"Setup: torchvision resnet18 (random init, 10 classes), {r.n} random 3×32×32 images, their predicted classes, "
        "input×gradient attributions (1 channel), rectangular masks. Quantus at its defaults (batch_size 64, "
        f"contiguous tensors); kdlens at the best forward configuration below (batch {r.batch_size}, {r.memory_format}).",
        "",
        "## Thesis suite",
        "",
        "PointingGame, AttributionLocalisation, RelevanceRankAccuracy, TopKIntersection, MonotonicityCorrelation and "
        f"FaithfulnessEstimate, scaled to 32 px: TopK k=20, features_in_step={STEP} ({groups} groups) for both "
        f"faithfulness metrics, MonotonicityCorrelation nr_samples=10. Required forwards: {r.n} × (1 clean + {groups} "
        f"+ {groups}×10) = {r.suite_images} images.",
        "",
        "| | seconds | ratio |",
        "|---|---:|---:|",
        f"| forward floor ({r.suite_images} images, batch {r.batch_size}, {r.memory_format}) | {r.floor:.1f} | 1.00 |",
        f"| kdlens (`evaluate_metrics`) | {r.kdlens_suite:.1f} | {r.kdlens_suite / r.floor:.2f} × floor |",
        f"| Quantus 0.6 (the six metrics in sequence) | {r.quantus_suite:.1f} | {r.quantus_suite / r.floor:.2f} × floor, "
        f"{r.quantus_suite / r.kdlens_suite:.2f} × kdlens |",
        "",
        "Targets: kdlens ≤ 1.15 × floor; Quantus / kdlens ≥ 1.5. "
        "The suite is forward-bound: kdlens can beat Quantus by at most Quantus's own margin over the floor "
        "(Quantus / floor above); at 1 thread the forward throughput barely depends on the batch size, so that margin is "
        "Quantus's per-step overhead only.",
        "",
        "## Forward throughput (images/s) by batch size and memory format",
        "",
        "| batch | contiguous | channels_last |",
        "|---:|---:|---:|",
        *(
            f"| {bs} | {r.throughputs[(bs, torch.contiguous_format)]:.0f} | {r.throughputs[(bs, torch.channels_last)]:.0f} |"
            for bs in (64, 128, 256, 512)
        ),
        "",
        "## Per metric",
        "",
        "Forwards / explained: images the definition runs through the model / through `explain_fn`; floor: those "
        f"forwards at the suite floor's {per_second:.0f} images/s (explanations, about three forwards each, are not in it). "
        "The thesis metrics' Quantus times are those of the suite run.",
        "",
        "| metric | kdlens (s) | Quantus (s) | Quantus / kdlens | forwards | explained | forward floor (s) | kdlens / floor |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case, seconds, quantus_seconds in r.rows:
        forwards, explained = case.forwards * r.n, case.explanations * r.n
        floor = forwards / per_second
        versus_floor = f"{seconds / floor:.2f}" if forwards and not explained else "–"
        lines.append(
            f"| {case.name} | {seconds:.2f} | {quantus_seconds:.2f} | {quantus_seconds / seconds:.1f} | {forwards} "
            f"| {explained} | {floor:.2f} | {versus_floor} |"
        )
    lines += [
        "",
        "Notes: Quantus's Infidelity runs with `n_perturb_samples=1` (its default 10 repeats the identical deterministic "
        "pass); ROAD is not compared (Quantus 0.6 fails on 3-channel inputs) and neither is Monotonicity (Quantus 0.6 "
        "never changes its images). FaithfulnessCorrelation uses subset_size=64 (224 is Quantus's default for 224 px).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="images")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the cores are shared: see the report)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs of the suite timings (best is kept)")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/metrics.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    np.trapz = np.trapezoid  # Quantus 0.6 needs it; NumPy 2.4 removed it
    import quantus

    load_before = os.getloadavg()[0]
    b = setup(args.n)
    model, n = b["model"], args.n
    batch_size, memory_format, throughputs = best_configuration(model)
    print(f"best forward configuration: batch {batch_size}, {memory_format}", flush=True)

    # kdlens runs a copy in the chosen memory format; Quantus the original, as its users would.
    kdlens_model = copy.deepcopy(model).to(memory_format=memory_format)

    def kdlens_run(metrics: dict[str, km.ExplanationMetric]) -> None:
        x, y, a, s = b["x"], b["y"], b["a"], b["s"]
        km.evaluate_metrics(
            metrics, kdlens_model, x, y, a, s, input_x_gradient, max_batch=batch_size, memory_format=memory_format
        )

    def quantus_run(metric: object) -> None:
        km.run_quantus_metric(metric, model, b["x"], b["y"], b["a"], b["s"], input_x_gradient)

    suite = km.create_metrics("thesis", THESIS_OVERRIDES)
    groups = 3 * SIZE * SIZE // STEP
    suite_images = n * (1 + groups + groups * 10)
    thesis = thesis_cases(quantus, suite)
    # The three suite timings interleaved, best of --repeats: the cores are shared, and the load drifts.
    floors, kdlens_suites, quantus_runs = [], [], []
    for _ in range(args.repeats):
        floors.append(forward_floor(model, suite_images, batch_size, memory_format))
        kdlens_suites.append(timed(kdlens_run, suite))
        quantus_runs.append({case.name: timed(quantus_run, case.theirs) for case in thesis})
        print(
            f"floor {floors[-1]:.1f} s, kdlens {kdlens_suites[-1]:.1f} s, Quantus {sum(quantus_runs[-1].values()):.1f} s"
        )
    floor, kdlens_suite = min(floors), min(kdlens_suites)
    quantus_times = min(quantus_runs, key=lambda times: sum(times.values()))

    rows = []
    for case in [*thesis, *other_cases(quantus)]:
        seconds = timed(kdlens_run, {case.name: case.ours})
        quantus_seconds = quantus_times.get(case.name) or timed(quantus_run, case.theirs)
        rows.append((case, seconds, quantus_seconds))
        print(f"{case.name}: kdlens {seconds:.2f} s, Quantus {quantus_seconds:.2f} s", flush=True)

    results = Results(
        n=n,
        threads=args.threads,
        repeats=args.repeats,
        load=(load_before, os.getloadavg()[0]),
        batch_size=batch_size,
        memory_format="channels_last" if memory_format == torch.channels_last else "contiguous",
        throughputs=throughputs,
        suite_images=suite_images,
        floor=floor,
        kdlens_suite=kdlens_suite,
        quantus_suite=sum(quantus_times.values()),
        rows=rows,
    )
    text = report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
