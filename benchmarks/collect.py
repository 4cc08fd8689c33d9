"""Assemble docs/BENCHMARKS.md from the parts the benchmark scripts wrote to docs/benchmarks/."""

from __future__ import annotations

import platform
from datetime import date
from pathlib import Path

import torch

GPU_PARTS = ["training_cuda.md", "explainers_cuda.md", "metrics_cuda.md", "metrics_cuda_bfloat16.md", "precision_cuda.md"]
"""Written by ``make bench-gpu`` on a machine with a GPU; absent otherwise, without a warning."""
PARTS = ["fashion_mnist.md", "shortcut.md", "shortcut_cost.md", "bcos_recipe.md", "shortcut_bcos.md", "shortcut_bcos_cost.md",
         "training.md", "explainers.md", "metrics.md", "precision.md", *GPU_PARTS]


def _as_section(part: str) -> str:
    """A part whose title is a level-1 heading is demoted one level, to sit under the page title."""
    if not part.startswith("# "):
        return part
    return "\n".join("#" + line if line.startswith("#") else line for line in part.splitlines())


def main() -> None:
    parts_dir = Path("docs/benchmarks")
    sections = [_as_section((parts_dir / name).read_text().strip()) for name in PARTS if (parts_dir / name).exists()]
    missing = [name for name in PARTS if not (parts_dir / name).exists() and name not in GPU_PARTS]
    header = [
        "# Benchmarks",
        "",
        "Results on real data (the Fashion-MNIST method table, the shortcut table on `shapes`), then the",
        "speed of kdlens against the reference implementations, measured in the same run on the same",
        "inputs, as ratios (the absolute numbers depend on the machine). Regenerate with `make bench`.",
        "",
        f"Assembled {date.today()} on {platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, Python {platform.python_version()}. Each part states its own machine, "
        "settings and how long it took.",
    ]
    if missing:
        header.append(f"\nNot measured yet: {', '.join(missing)}.")
    Path("docs/BENCHMARKS.md").write_text("\n".join(header) + "\n\n" + "\n\n".join(sections) + "\n")
    print("wrote docs/BENCHMARKS.md")


if __name__ == "__main__":
    main()
