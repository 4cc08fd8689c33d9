"""The engine and the metric sweeps on a GPU: CUDA graphs, autocast and no host reads. Skipped
without a CUDA device (CI has none); run on a GPU machine with ``pytest tests/test_cuda.py``."""

from __future__ import annotations

import pytest
import torch

import kdlens.metrics as km
from kdlens.engine import InferenceEngine, set_default_backend
from kdlens.engine.core import PARITY_RTOL, auto_candidates, input_kind, parity_tolerance
from kdlens.models import create_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
CUDA = torch.device("cuda")


def resnet8() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("resnet8", 10, 3).eval().to(CUDA)


@pytest.mark.parametrize("precision", [None, torch.bfloat16, torch.float16])
def test_every_cuda_backend_matches_eager_and_keeps_its_outputs(precision):
    model = resnet8()
    x, other = torch.rand(16, 3, 32, 32, device=CUDA), torch.rand(16, 3, 32, 32, device=CUDA)
    with torch.inference_mode(), torch.autocast("cuda", dtype=precision or torch.float16, enabled=precision is not None):
        expected = model(x).float()
        for backend in auto_candidates(x):
            engine = InferenceEngine(model, backend)
            first = engine(x)
            engine(other)  # a CUDA graph replays into the same buffers: the first result must not change
            assert engine.chosen[input_kind(x)] == backend
            error = (first.float() - expected).abs().max() / expected.abs().max()
            assert error <= parity_tolerance(precision), backend
    assert parity_tolerance(None) == PARITY_RTOL


def test_sweeps_on_the_gpu_match_the_cpu_and_read_nothing_back():
    from test_sweep_syncs import HostReads, forward_only_metrics

    model = resnet8()
    x, a = torch.rand(4, 3, 32, 32), torch.rand(4, 1, 32, 32)
    y = model.cpu()(x).argmax(1)
    metrics = {name: m for name, m in forward_only_metrics().items() if name != "road"}
    set_default_backend("eager")
    try:
        on_cpu = km.evaluate_metrics(metrics, model.cpu(), x, y, a)
        model.to(CUDA)
        with HostReads() as reads:
            on_gpu = km.evaluate_metrics(metrics, model, x.to(CUDA), y.to(CUDA), a.to(CUDA))
    finally:
        set_default_backend("auto")
    assert reads.lines == {}
    for name in metrics:
        torch.testing.assert_close(on_gpu[name].cpu(), on_cpu[name], rtol=1e-3, atol=1e-4, equal_nan=True, msg=name)


def test_reduced_precision_sweeps_run_on_the_engine():
    model = resnet8()
    x, a = torch.rand(32, 3, 32, 32, device=CUDA), torch.rand(32, 1, 32, 32, device=CUDA)
    y = model(x).argmax(1)
    metric = {"pixel_flipping": km.PixelFlipping(features_in_step=64)}
    reference = km.evaluate_metrics(metric, model, x, y, a)["pixel_flipping"]
    reduced = km.evaluate_metrics(metric, model, x, y, a, precision=torch.bfloat16)["pixel_flipping"]
    assert not torch.equal(reduced, reference)
    torch.testing.assert_close(reduced, reference, rtol=0.02, atol=0.0)
