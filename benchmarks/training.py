"""Training-step throughput of every distillation method on one CIFAR pair on this machine's CPU,
and plain KD against torchdistill's KD on the same pair and batch.

Each method runs the step kdlens trains with (teacher pass, student pass, its loss terms, backward,
optimiser step) outside Lightning's loop, so that the numbers compare methods, not the trainer.
Writes docs/benchmarks/training.md.

    python benchmarks/training.py [--steps 8] [--batch 64]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch

from kdlens.config import RecipeConfig, validate_config
from kdlens.distill import DistillLoss, TermContext
from kdlens.distill.frozen import TEACHER_LOGITS, TEACHER_MAP
from kdlens.models import create_model, get_model_spec
from kdlens.training.module import DistillationModule

TEACHER, STUDENT, CLASSES, SIZE = "resnet56", "resnet20", 100, 32
KD = [{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9, "temperature": 4.0}]
METHODS: dict[str, list[dict]] = {
    "scratch (CE)": [{"name": "ce"}],
    "KD": KD,
    "DKD": [{"name": "ce"}, {"name": "dkd"}],
    "FitNet": [*KD, {"name": "fitnet"}],
    "AT": [*KD, {"name": "at"}],
    "SP": [*KD, {"name": "sp"}],
    "feature matching": [*KD, {"name": "feature_matching"}],
    "Exp-KD": [{"name": "ce"}, {"name": "expkd"}],
    "e²KD (Grad-CAM)": [{"name": "kd", "temperature": 4.0}, {"name": "e2kd", "weight": 1.0}],
    "e²KD (frozen teacher)": [{"name": "kd", "temperature": 4.0}, {"name": "e2kd", "weight": 1.0, "frozen_teacher": True}],
    "oracle KD": [{"name": "ce"}, {"name": "oracle_kd"}],
}


def median_seconds(step: Callable[[], None], steps: int, warmup: int = 2, repeats: int = 3) -> float:
    """Median over ``repeats`` of the mean time of ``steps`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(steps):
            step()
        times.append((time.perf_counter() - started) / steps)
    return statistics.median(times)


def kdlens_step(losses: list[dict], batch: dict, teacher, student) -> tuple[Callable[[], None], DistillationModule]:
    raw = {"data": {"name": "shapes"}, "model": {"name": STUDENT}, "losses": losses}
    if any(loss["name"] != "ce" for loss in losses):
        raw["teacher"] = {"name": TEACHER, "checkpoint": "unused.ckpt"}
    configs = validate_config(raw).losses
    context = TermContext(student, get_model_spec(STUDENT), teacher, get_model_spec(TEACHER))
    loss_module = DistillLoss(configs, context)
    probe = {k: v[:2] for k, v in batch.items()}
    module = DistillationModule(student, loss_module, RecipeConfig(), CLASSES, {}, probe, teacher if "teacher" in raw else None)
    optimizer = torch.optim.SGD([*student.parameters(), *loss_module.parameters()], lr=0.01, momentum=0.9)
    if not any(loss.get("frozen_teacher") for loss in losses):
        batch = {k: v for k, v in batch.items() if k not in (TEACHER_LOGITS, TEACHER_MAP)}

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss, _ = module.losses(module._distill_batch(batch))
        loss.backward()
        optimizer.step()

    return step, module


def torchdistill_kd_step(batch: dict, teacher, student) -> Callable[[], None]:
    """torchdistill's KD: its forward-hook manager collects the logits, its KDLoss mixes CE and KD."""
    from torchdistill.core.forward_hook import ForwardHookManager
    from torchdistill.losses.mid_level import KDLoss

    student_hooks, teacher_hooks = ForwardHookManager(torch.device("cpu")), ForwardHookManager(torch.device("cpu"))
    student_hooks.add_hook(student, "fc", requires_input=False, requires_output=True)
    teacher_hooks.add_hook(teacher, "fc", requires_input=False, requires_output=True)
    criterion = KDLoss("fc", "output", "fc", "output", temperature=4.0, alpha=0.1, beta=0.9)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            teacher(batch["image"])
        student(batch["image"])
        loss = criterion(student_hooks.pop_io_dict(), teacher_hooks.pop_io_dict(), batch["label"])
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/training.md"))
    args = parser.parse_args()
    torch.manual_seed(0)
    batch = {
        "image": torch.randn(args.batch, 3, SIZE, SIZE),
        "label": torch.randint(0, CLASSES, (args.batch,)),
        TEACHER_LOGITS: torch.randn(args.batch, CLASSES),
        TEACHER_MAP: torch.rand(args.batch, 1, SIZE, SIZE),
    }
    teacher = create_model(TEACHER, CLASSES, 3).eval().requires_grad_(False)
    started = time.perf_counter()
    seconds = {}
    for name, losses in METHODS.items():
        step, module = kdlens_step(losses, batch, teacher, create_model(STUDENT, CLASSES, 3))
        seconds[name] = median_seconds(step, args.steps)
        module.teardown("fit")  # remove its feature taps from the shared teacher
        print(f"{name:24s} {args.batch / seconds[name]:7.1f} img/s", flush=True)
    reference = median_seconds(torchdistill_kd_step(batch, teacher, create_model(STUDENT, CLASSES, 3)), args.steps)
    print(f"{'torchdistill KD':24s} {args.batch / reference:7.1f} img/s", flush=True)

    kd = seconds["KD"]
    lines = [
        "## Training step (CPU)",
        "",
        f"{TEACHER} → {STUDENT}, {CLASSES} classes, {SIZE}×{SIZE} inputs, batch {args.batch}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{date.today()}; median of 3 × {args.steps} steps. Total {time.perf_counter() - started:.0f} s.",
        "",
        "| method | images/s | step time vs KD |",
        "|---|---|---|",
        *(f"| {name} | {args.batch / s:.1f} | {s / kd:.2f}× |" for name, s in seconds.items()),
        "",
        "| reference | images/s | kdlens KD vs reference |",
        "|---|---|---|",
        f"| torchdistill 1.x KD (same pair, batch, τ, weights) | {args.batch / reference:.1f} | {reference / kd:.2f}× as fast |",
        "",
        f"Targets: e²KD/KD ≤ 1.5× with Grad-CAM (measured {seconds['e²KD (Grad-CAM)'] / kd:.2f}×), ≤ 1.2× with frozen "
        f"teacher explanations (measured {seconds['e²KD (frozen teacher)'] / kd:.2f}×); KD at least as fast as torchdistill "
        f"(measured {reference / kd:.2f}×).",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
