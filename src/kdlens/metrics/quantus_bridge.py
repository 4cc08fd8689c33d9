"""Run a Quantus metric through kdlens's conventions: tensors in, per-sample tensors out.

Quantus is a test/benchmark dependency only (``pip install kdlens[test]``); it is imported by the
caller, not here. With NumPy >= 2.4 Quantus needs ``np.trapz`` (removed), which the caller must
provide (e.g. ``np.trapz = np.trapezoid`` in a test fixture).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdlens.metrics.base import ExplainFn, eval_mode


def quantus_explain_func(explain_fn: ExplainFn) -> Any:
    """``explain_fn(model, x, y) -> Tensor`` as a Quantus ``explain_func(model, inputs, targets, **kw) -> ndarray``."""

    def explain_func(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **kwargs: Any) -> np.ndarray:
        parameter = next(model.parameters())
        x = torch.as_tensor(inputs, dtype=parameter.dtype, device=parameter.device)
        y = torch.as_tensor(targets, device=parameter.device)
        return explain_fn(model, x, y).detach().cpu().numpy()

    return explain_func


def _numpy(t: Tensor | None) -> np.ndarray | None:
    # A copy: some Quantus metrics modify their inputs in place (e.g. Sparseness's ``a_batch += 1e-7``).
    return None if t is None else t.detach().cpu().numpy().copy()


def to_tensor(result: Any) -> Tensor | dict[str, Tensor]:
    if isinstance(result, dict):
        return {str(k): to_tensor(v) for k, v in result.items()}  # type: ignore[misc]
    return torch.as_tensor(np.asarray(result, dtype=np.float64))


def run_quantus_metric(
    metric: Any,
    model: nn.Module | None,
    x: Tensor,
    y: Tensor,
    a: Tensor | None = None,
    s: Tensor | None = None,
    explain_fn: ExplainFn | None = None,
    *,
    batch_size: int = 64,
    **call_kwargs: Any,
) -> Tensor | dict[str, Tensor]:
    """Call a Quantus metric instance on tensors; the model runs in eval mode on ``x``'s device.

    Returns ``(B,)`` for per-sample scores, ``(B, steps)`` for curves, and a dict of those for
    metrics that return one (MPRT: per layer; ROAD: per percentage, batch means). ``batch_size`` is
    Quantus's: attributions are normalised and the model is run over batches of that many samples.
    """
    with eval_mode(model):
        result = metric(
            model=model,
            x_batch=_numpy(x),
            y_batch=_numpy(y),
            a_batch=_numpy(a),
            s_batch=_numpy(s),
            explain_func=None if explain_fn is None else quantus_explain_func(explain_fn),
            device=str(x.device),
            batch_size=batch_size,
            **call_kwargs,
        )
    return to_tensor(result)
