"""Time kdlens's explanation metrics against Quantus 0.6 and against the forward floor.

Same model (torchvision resnet18, random init, 10 classes), inputs (N random 32×32 images, their
predicted classes), attributions (input × gradient) and masks for both libraries. For every metric
kdlens shares with Quantus: both wall times and their ratio. For the ``thesis`` suite (scaled to
32 px): kdlens end to end, Quantus end to end (its metrics one after another) and the *forward
floor*: the time of exactly the forward passes the suite's definitions require (one clean pass,
FaithfulnessEstimate's groups, MonotonicityCorrelation's groups × draws), measured in this run on
prepared batches at the best batch size and memory format, with the model itself (eager) and with the
fastest kdlens.engine backend (the best-backend floor, the one to beat). kdlens runs at that same
configuration, its forwards on the engine (``--engine``, default auto).

End to end (``end_to_end``): the six CAM methods of the thesis (Grad-CAM, Grad-CAM++, XGradCAM, HiResCAM,
AblationCAM, EigenCAM) on ``E2E_LAYER`` (layer3: see there) for the ground-truth class, each map scored with the thesis suite: kdlens
(``kdlens.explain.explain`` + ``evaluate_metrics``) against pytorch-grad-cam + Quantus 0.6, on the same images.

Usage: ``python benchmarks/metrics.py [--n 64] [--threads 1] [--repeats 2] [--e2e-n 16] [--only-end-to-end]
[--device cpu] [--engine auto] [--sweep-precision float32] [--out docs/benchmarks/metrics.md]``; ``--only-end-to-end`` runs just the end-to-end part and replaces its section at
the end of ``--out``, keeping the rest of the file.
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
from kdlens.engine import BACKENDS, InferenceEngine, set_default_backend
from kdlens.engine.core import auto_candidates
from kdlens.explain import explain
from kdlens.metrics.base import SWEEP_PRECISIONS
from kdlens.models import create_model

SIZE = 32
E2E_HEADING = "## End to end (six CAMs × thesis suite)"
# The CAM layer: at 32 px torchvision resnet18's last feature layer (layer4) is 1×1, so its CAMs are constant and
# pytorch-grad-cam's min-max scaling makes them all zero, which Quantus refuses; layer3 (2×2) is the last with extent.
E2E_LAYER = "layer3"
# kdlens method name → pytorch-grad-cam class name
CAM_METHODS = {
    "gradcam": "GradCAM",
    "gradcampp": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "hirescam": "HiResCAM",
    "ablationcam": "AblationCAM",
    "eigencam": "EigenCAM",
}
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
def forwards(model: Callable[[Tensor], Tensor], batch: Tensor, sizes: list[int]) -> None:
    for size in sizes:
        model(batch[:size])
    if batch.device.type == "cuda":
        torch.cuda.synchronize(batch.device)


def setup(n: int, device: torch.device = torch.device("cpu")) -> dict:
    torch.manual_seed(0)
    model = create_model("resnet18", 10, 3).eval()
    x = torch.rand(n, 3, SIZE, SIZE)
    s = torch.zeros(n, 1, SIZE, SIZE)
    for i in range(n):
        top, left = (7 * i) % 16, (11 * i) % 16
        s[i, :, top : top + 12, left : left + 14] = 1
    model, x, s = model.to(device), x.to(device), s.to(device)
    with torch.no_grad():
        y = model(x).argmax(1)
    return {"model": model, "x": x, "y": y, "a": input_x_gradient(model, x, y), "s": s}


def best_configuration(model: nn.Module) -> tuple[int, torch.memory_format, dict]:
    """Throughput (images/s) of plain forwards per (batch size, memory format); the best one."""
    device = next(model.parameters()).device
    results = {}
    for memory_format in (torch.contiguous_format, torch.channels_last):
        model.to(memory_format=memory_format)
        for batch_size in (64, 128, 256, 512):
            batch = torch.rand(batch_size, 3, SIZE, SIZE, device=device).contiguous(memory_format=memory_format)
            forwards(model, batch, [batch_size])  # warm-up
            results[(batch_size, memory_format)] = 4 * batch_size / timed(forwards, model, batch, [batch_size] * 4)
    model.to(memory_format=torch.contiguous_format)
    batch_size, memory_format = max(results, key=results.get)  # type: ignore[arg-type]
    return batch_size, memory_format, results


def backend_forwards(model: nn.Module, batch_size: int, memory_format: torch.memory_format) -> dict[str, InferenceEngine]:
    """Every backend kdlens.engine measures on this device, built for ``model`` at ``batch_size``
    (eager: the model itself in ``memory_format``); those that refuse the model are left out."""
    batch = torch.rand(batch_size, 3, SIZE, SIZE, device=next(model.parameters()).device)
    engines = {}
    for name in ["eager", *auto_candidates(batch)]:
        engine = InferenceEngine(model, name)
        with torch.inference_mode():
            engine(batch.contiguous(memory_format=memory_format))
        if name == "eager" or set(engine.chosen.values()) == {name}:
            engines[name] = engine
    return engines


def backend_throughputs(
    engines: dict[str, InferenceEngine], batch_size: int, memory_format: torch.memory_format
) -> dict[str, float]:
    """Images/s of each backend on 4 prepared batches (after a warm-up batch)."""
    device = next(next(iter(engines.values())).model.parameters()).device
    batch = torch.rand(batch_size, 3, SIZE, SIZE, device=device).contiguous(memory_format=memory_format)
    results = {}
    for name, engine in engines.items():
        forwards(engine, batch, [batch_size])
        results[name] = 4 * batch_size / timed(forwards, engine, batch, [batch_size] * 4)
    return results


def forward_floor(
    forward: Callable[[Tensor], Tensor], n_images: int, batch_size: int, memory_format: torch.memory_format,
    device: torch.device,
) -> float:
    """Seconds to forward exactly ``n_images`` prepared images at the given configuration."""
    batch = torch.rand(batch_size, 3, SIZE, SIZE, device=device).contiguous(memory_format=memory_format)
    sizes = [batch_size] * (n_images // batch_size) + ([n_images % batch_size] if n_images % batch_size else [])
    return timed(forwards, forward, batch, sizes)


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
class EndToEnd:
    n: int
    repeats: int
    load: tuple[float, float]
    # per method: (kdlens explain, kdlens metrics, pytorch-grad-cam explain, Quantus metrics) seconds
    methods: dict[str, tuple[float, float, float, float]]
    device: str
    precision: str
    seconds: float
    """How long the whole part took, all repeats and both sides."""


def end_to_end(
    quantus,
    model: nn.Module,
    kdlens_model: nn.Module,
    n: int,
    repeats: int,
    batch_size: int,
    memory_format: torch.memory_format,
    precision: str = "float32",
) -> EndToEnd:
    """Six CAMs (``E2E_LAYER``, ground-truth class) × thesis suite, both libraries, on the first ``n`` images of
    ``setup``; per method and side explanation and metric seconds, best (lowest side total) of ``repeats``
    interleaved runs."""
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    b = setup(n, next(model.parameters()).device)  # same seed: the same weights as ``model``; x, y, s for n images
    x, y, s = b["x"], b["y"], b["s"]
    suite = km.create_metrics("thesis", THESIS_OVERRIDES)
    thesis = thesis_cases(quantus, suite)
    targets = [ClassifierOutputTarget(int(c)) for c in y]
    # Some CAMs are all zero for some images (ReLU); Quantus's MonotonicityCorrelation crashes on a constant map
    # (its batched Spearman returns a float). Both sides add the same 1e-6-scale ramp: a tie-break, no timing effect.
    ramp = 1e-6 * torch.arange(SIZE * SIZE, dtype=torch.float32).reshape(1, 1, SIZE, SIZE) / (SIZE * SIZE)

    def kdlens_side(method: str) -> tuple[float, float]:
        start = time.perf_counter()
        a = explain(kdlens_model, x, y, method, layer=E2E_LAYER) + ramp
        middle = time.perf_counter()
        km.evaluate_metrics(
            suite, kdlens_model, x, y, a, s, input_x_gradient, max_batch=batch_size, memory_format=memory_format,
            precision=SWEEP_PRECISIONS[precision],
        )
        return middle - start, time.perf_counter() - middle

    def reference_side(method: str) -> tuple[float, float]:
        start = time.perf_counter()
        with getattr(pgc, CAM_METHODS[method])(model=model, target_layers=[getattr(model, E2E_LAYER)]) as cam:
            a = torch.from_numpy(cam(input_tensor=x, targets=targets))[:, None].float() + ramp
        middle = time.perf_counter()
        for case in thesis:
            km.run_quantus_metric(case.theirs, model, x, y, a, s, input_x_gradient)
        return middle - start, time.perf_counter() - middle

    runs_ours: list[dict[str, tuple[float, float]]] = []
    runs_theirs: list[dict[str, tuple[float, float]]] = []
    for _ in range(repeats):
        ours, theirs = {}, {}
        for method in CAM_METHODS:
            ours[method] = kdlens_side(method)
            theirs[method] = reference_side(method)
            print(
                f"end to end {method}: kdlens {ours[method][0]:.2f} + {ours[method][1]:.2f} s, "
                f"pytorch-grad-cam + Quantus {theirs[method][0]:.2f} + {theirs[method][1]:.2f} s",
                flush=True,
            )
        runs_ours.append(ours)
        runs_theirs.append(theirs)
    best_ours = min(runs_ours, key=lambda r: sum(map(sum, r.values())))
    best_theirs = min(runs_theirs, key=lambda r: sum(map(sum, r.values())))
    methods = {m: (*best_ours[m], *best_theirs[m]) for m in CAM_METHODS}
    return EndToEnd(n=n, repeats=repeats, load=(load_before, os.getloadavg()[0]), methods=methods,
                    device=device_description(x.device), precision=precision, seconds=time.perf_counter() - started)


def report_end_to_end(e: EndToEnd, threads: int) -> str:
    groups = 3 * SIZE * SIZE // STEP
    totals = [sum(row[i] for row in e.methods.values()) for i in range(4)]
    ours, theirs = totals[0] + totals[1], totals[2] + totals[3]
    ratio = theirs / ours
    lines = [
        E2E_HEADING,
        "",
        f"Generated by `python benchmarks/metrics.py --only-end-to-end --e2e-n {e.n} --threads {threads} --repeats "
        f"{e.repeats} --sweep-precision {e.precision}` (or the full run) on {e.device}, {os.cpu_count()} cores shared with other jobs "
        f"(load average {e.load[0]:.1f} before, {e.load[1]:.1f} after), {threads} torch thread(s); best of "
        f"{e.repeats} interleaved runs per side (lowest side total). This part took {e.seconds / 60:.1f} min.",
        "",
        f"The thesis workload: Grad-CAM, Grad-CAM++, XGradCAM, HiResCAM, AblationCAM and EigenCAM on `{E2E_LAYER}` for the "
        f"ground-truth class of {e.n} images (same model, images, targets and masks as above, first {e.n}), each map "
        f"scored with the six thesis metrics (settings above: {e.n} × (1 + {groups} + {groups}×10) forwards per method). "
        f"Reference: pytorch-grad-cam (`pgc.<CAM>(model, target_layers=[model.{E2E_LAYER}])`, numpy maps) + Quantus 0.6 "
        "(the six metrics in sequence, defaults). kdlens: `kdlens.explain.explain(model, x, y, method, "
        f'layer="{E2E_LAYER}")` + `evaluate_metrics` (batch and memory format as above). Same N for every method, '
        "AblationCAM included.",
        "",
        "Layer: the thesis uses the last feature layer (`layer4`), but at 32 px torchvision resnet18's `layer4` is 1×1: "
        "its CAMs are constant, pytorch-grad-cam's min-max scaling turns them into all-zero maps and Quantus refuses "
        f"those, so both sides use `{E2E_LAYER}` (2×2, 256 channels; AblationCAM ablates 256 instead of 512 channels). "
        "Some CAMs are all zero for some images, on which Quantus's MonotonicityCorrelation crashes, so both sides add "
        "the same ramp of at most 1e-6 to every map (a tie-break).",
        "",
        "| method | kdlens explain (s) | kdlens metrics (s) | pgc explain (s) | Quantus metrics (s) "
        "| reference / kdlens |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for method, (oe, om, te, tm) in e.methods.items():
        lines.append(f"| {method} | {oe:.2f} | {om:.2f} | {te:.2f} | {tm:.2f} | {(te + tm) / (oe + om):.2f} |")
    lines += [
        f"| **total** | {totals[0]:.2f} | {totals[1]:.2f} | {totals[2]:.2f} | {totals[3]:.2f} | {ratio:.2f} |",
        "",
        "| | explanations (s) | metrics (s) | end to end (s) |",
        "|---|---:|---:|---:|",
        f"| kdlens | {totals[0]:.1f} | {totals[1]:.1f} | {ours:.1f} |",
        f"| pytorch-grad-cam + Quantus 0.6 | {totals[2]:.1f} | {totals[3]:.1f} | {theirs:.1f} |",
        f"| ratio (reference / kdlens) | {totals[2] / totals[0]:.2f} | {totals[3] / totals[1]:.2f} | {ratio:.2f} |",
        "",
        f"Target: kdlens ≥ 2.0 × faster than Quantus + pytorch-grad-cam end to end. Measured: {ratio:.2f} × — "
        f"{'met' if ratio >= 2.0 else 'not met'}.",
        "",
    ]
    return "\n".join(lines)


def device_description(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU"
    return f"{name} (`{device}`)"


def replace_end_to_end(text: str, section: str) -> str:
    """``text`` with its end-to-end section (from its heading to the end) replaced by ``section``."""
    head = text.split("\n" + E2E_HEADING, 1)[0].rstrip("\n")
    return head + "\n\n" + section


@dataclass
class Results:
    n: int
    threads: int
    repeats: int
    load: tuple[float, float]
    batch_size: int
    memory_format: str
    throughputs: dict
    backend_rates: dict[str, float]
    """Images/s of each kdlens.engine backend at ``batch_size``."""
    best_backend: str
    device: str
    engine: str
    precision: str
    suite_images: int
    eager_floor: float
    floor: float
    """The best backend's floor."""
    first_kdlens_suite: float
    """kdlens's first suite run: it includes the engine's one-off choice of backend."""
    kdlens_suite: float
    quantus_suite: float
    rows: list[tuple[Case, float, float]]
    seconds: float
    """How long the suite and per-metric parts took."""


def report(r: Results) -> str:
    groups = 3 * SIZE * SIZE // STEP
    per_second = r.suite_images / r.floor
    lines = [
        "# Explanation metrics: kdlens vs Quantus 0.6 and the forward floor",
        "",
        f"Generated by `python benchmarks/metrics.py --n {r.n} --threads {r.threads} --repeats {r.repeats} --device "
        f"{r.device} --engine {r.engine} --sweep-precision {r.precision}` on {device_description(torch.device(r.device))}, "
        f"{os.cpu_count()} cores shared with other jobs (load average {r.load[0]:.1f} before, "
        f"{r.load[1]:.1f} after), torch {torch.__version__}, {r.threads} torch thread(s). Suite timings: best of "
        f"{r.repeats} interleaved runs; per-metric timings: one run each (expect ±10–20 % noise from the other jobs). "
        f"These parts took {r.seconds / 60:.1f} min.",
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
        f"| best-backend forward floor ({r.suite_images} images, batch {r.batch_size}, {r.best_backend}) | {r.floor:.1f} "
        "| 1.00 |",
        f"| eager forward floor (the model itself, batch {r.batch_size}, {r.memory_format}) | {r.eager_floor:.1f} "
        f"| {r.eager_floor / r.floor:.2f} × floor |",
        f"| kdlens (`evaluate_metrics`, engine {r.engine}) | {r.kdlens_suite:.1f} | {r.kdlens_suite / r.floor:.2f} × floor "
        f"({r.floor / r.kdlens_suite:.2f} × its throughput) |",
        f"| Quantus 0.6 (the six metrics in sequence) | {r.quantus_suite:.1f} | {r.quantus_suite / r.floor:.2f} × floor, "
        f"{r.quantus_suite / r.kdlens_suite:.2f} × kdlens |",
        "",
        f"kdlens's first run took {r.first_kdlens_suite:.1f} s: it includes the engine's one-off choice of backend "
        "(about a second of eager forwards, then building and timing each candidate), kept for every later call on "
        "the same model and input shape.",
        "",
        "Targets: kdlens's sweeps at ≥ 0.9 × the best backend's throughput (≤ 1.11 × its floor); Quantus / kdlens ≥ "
        "1.5. The suite is forward-bound: eager PyTorch is not the floor on a CPU, the faster backends below are.",
        "",
        f"## Forward throughput (images/s) by backend, batch {r.batch_size}",
        "",
        "kdlens.engine's backends on this device (eager: the model itself, in its best memory format; folded: batch norms "
        "folded into the convolutions, channels-last; jit: traced, frozen, optimised for inference; onnxruntime: "
        "exported to ONNX, CPU provider; compile: torch.compile, measured on GPUs only).",
        "",
        "| backend | images/s | vs eager |",
        "|---|---:|---:|",
        *(f"| {name} | {rate:.0f} | {rate / r.backend_rates['eager']:.2f}× |" for name, rate in r.backend_rates.items()),
        "",
        "## Eager forward throughput (images/s) by batch size and memory format",
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
        f"forwards at the best-backend suite floor's {per_second:.0f} images/s (explanations, about three forwards each, are not in it). "
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
    parser.add_argument("--e2e-n", type=int, default=16, help="images for the end-to-end part (six CAMs × suite)")
    parser.add_argument(
        "--only-end-to-end",
        action="store_true",
        help="run only the end-to-end part and replace its section at the end of --out (keeps the rest)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]: where both libraries run")
    parser.add_argument("--engine", default="auto", choices=BACKENDS, help="kdlens.engine backend of kdlens's forwards")
    parser.add_argument("--sweep-precision", default="float32", choices=SWEEP_PRECISIONS,
                        help="precision of kdlens's metric forwards (bfloat16/float16: autocast, for GPUs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    set_default_backend(args.engine)
    device = torch.device(args.device)
    warnings.filterwarnings("ignore")
    np.trapz = np.trapezoid  # Quantus 0.6 needs it; NumPy 2.4 removed it
    import quantus

    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    b = setup(args.n, device)
    model, n = b["model"], args.n
    batch_size, memory_format, throughputs = best_configuration(model)
    print(f"best forward configuration: batch {batch_size}, {memory_format}", flush=True)
    floor_engines = backend_forwards(copy.deepcopy(model).to(memory_format=memory_format), batch_size, memory_format)
    backend_rates = backend_throughputs(floor_engines, batch_size, memory_format)
    best_backend = max(backend_rates, key=backend_rates.__getitem__)
    print("backends (images/s): " + ", ".join(f"{k} {v:.0f}" for k, v in backend_rates.items()), flush=True)

    # kdlens runs a copy in the chosen memory format; Quantus the original, as its users would.
    kdlens_model = copy.deepcopy(model).to(memory_format=memory_format)

    if args.only_end_to_end:
        e2e = end_to_end(quantus, model, kdlens_model, args.e2e_n, args.repeats, batch_size, memory_format,
                         args.sweep_precision)
        section = report_end_to_end(e2e, args.threads)
        old = args.out.read_text() if args.out.exists() else ""
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(replace_end_to_end(old, section) if old else section)
        print(section)
        return

    def kdlens_run(metrics: dict[str, km.ExplanationMetric]) -> None:
        x, y, a, s = b["x"], b["y"], b["a"], b["s"]
        km.evaluate_metrics(
            metrics, kdlens_model, x, y, a, s, input_x_gradient, max_batch=batch_size, memory_format=memory_format,
            precision=SWEEP_PRECISIONS[args.sweep_precision],
        )

    def quantus_run(metric: object) -> None:
        km.run_quantus_metric(metric, model, b["x"], b["y"], b["a"], b["s"], input_x_gradient)

    suite = km.create_metrics("thesis", THESIS_OVERRIDES)
    groups = 3 * SIZE * SIZE // STEP
    suite_images = n * (1 + groups + groups * 10)
    thesis = thesis_cases(quantus, suite)
    # The three suite timings interleaved, best of --repeats: the cores are shared, and the load drifts.
    eager_floors, floors, kdlens_suites, quantus_runs = [], [], [], []
    for _ in range(args.repeats):
        eager_floors.append(forward_floor(floor_engines["eager"], suite_images, batch_size, memory_format, device))
        floors.append(forward_floor(floor_engines[best_backend], suite_images, batch_size, memory_format, device))
        kdlens_suites.append(timed(kdlens_run, suite))
        quantus_runs.append({case.name: timed(quantus_run, case.theirs) for case in thesis})
        print(
            f"eager floor {eager_floors[-1]:.1f} s, {best_backend} floor {floors[-1]:.1f} s, kdlens {kdlens_suites[-1]:.1f} s, "
            f"Quantus {sum(quantus_runs[-1].values()):.1f} s", flush=True,
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
        backend_rates=backend_rates,
        best_backend=best_backend,
        device=args.device,
        engine=args.engine,
        precision=args.sweep_precision,
        suite_images=suite_images,
        eager_floor=min(eager_floors),
        floor=floor,
        first_kdlens_suite=kdlens_suites[0],
        kdlens_suite=kdlens_suite,
        quantus_suite=sum(quantus_times.values()),
        rows=rows,
        seconds=time.perf_counter() - started,
    )
    e2e = end_to_end(quantus, model, kdlens_model, args.e2e_n, args.repeats, batch_size, memory_format,
                     args.sweep_precision)
    text = replace_end_to_end(report(results), report_end_to_end(e2e, args.threads))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
