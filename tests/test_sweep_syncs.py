"""The metrics' perturbation sweeps stay on the device: no value goes back to the host (on a GPU,
each would stall the queue of forward passes) except where an algorithm must read one."""

from __future__ import annotations

import collections
import dataclasses
import traceback

import torch
from torch.overrides import TorchFunctionMode

import kdlens.metrics as km
from kdlens.models import create_model
from kdlens.registry import METRICS

HOST_READS = {
    torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.__bool__,
    torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__, torch.Tensor.nonzero, torch.nonzero,
    torch.Tensor.unique, torch.unique, torch.masked_select, torch.Tensor.masked_select,
}


class HostReads(TorchFunctionMode):
    """Counts the torch calls that read tensor values on the host (or have a data-dependent
    shape), by the kdlens line that made them."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: collections.Counter[str] = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        index = args[1] if func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__) and len(args) > 1 else None
        by_mask = any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                      for i in (index if isinstance(index, tuple) else (index,)))
        if func in HOST_READS or by_mask:
            frames = [f for f in traceback.extract_stack()[:-1] if "/kdlens/" in f.filename]
            if frames:
                self.lines[f"{frames[-1].filename.rsplit('/kdlens/', 1)[1]}:{frames[-1].lineno}"] += 1
        return func(*args, **(kwargs or {}))


def forward_only_metrics() -> dict[str, km.ExplanationMetric]:
    """Every registered metric that reads the model through forward passes only, at small settings."""
    metrics = {}
    for name in km.forward_only_metric_names():
        cls = METRICS.get(name)
        fields = {f.name for f in dataclasses.fields(cls)}
        metrics[name] = cls(**({"features_in_step": 64} if "features_in_step" in fields else {}),
                            **({"nr_samples": 5} if "nr_samples" in fields else {}))
    return metrics


def test_forward_only_metrics_read_nothing_back_but_road_a_few_times_per_chunk():
    from kdlens.engine import set_default_backend

    torch.manual_seed(0)
    model = create_model("resnet8", 10, 3).eval()
    x, a = torch.rand(4, 3, 32, 32), torch.rand(4, 1, 32, 32)
    y = model(x).argmax(1)
    metrics = forward_only_metrics()
    assert {"pixel_flipping", "road", "faithfulness_correlation", "infidelity", "monotonicity"} <= set(metrics)
    set_default_backend("eager")  # the sweeps are under test, not the CPU backends' hand-over to NumPy
    try:
        with HostReads() as reads:
            scores = km.evaluate_metrics(metrics, model, x, y, a, max_batch=32)
    finally:
        set_default_backend("auto")
    assert set(scores) == set(metrics)
    road = {line: n for line, n in reads.lines.items() if line.startswith("metrics/road.py")}
    assert {line: n for line, n in reads.lines.items() if line not in road} == {}
    # ROAD reads its chunk's steps once (one noise stream per step), and its conjugate-gradient
    # solver tests convergence every few iterations (~50 iterations per chunk here).
    chunks = -(-len(metrics["road"].percentages) * len(x) // 32)
    assert sum(road.values()) <= 10 * chunks
