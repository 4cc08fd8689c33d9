"""The engine's backend names, without importing torch (configs and the command line check them)."""

from __future__ import annotations

from typing import Literal, get_args

EngineBackend = Literal["auto", "eager", "folded", "jit", "onnxruntime", "compile"]
"""auto: the fastest of the others that reproduces the model's logits, measured on the first
inputs; eager: the model itself; folded: a copy with batch norms folded into the convolutions
before them, channels-last; jit: traced, ``torch.jit.freeze`` + ``optimize_for_inference``;
onnxruntime: exported to ONNX and run by onnxruntime (CPU, optional dependency); compile:
``torch.compile`` (CUDA graphs on a GPU)."""
BACKENDS: tuple[str, ...] = get_args(EngineBackend)
