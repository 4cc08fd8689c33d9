"""Forward-only execution: a model in eval mode run by the fastest backend that reproduces its
logits on this device (:mod:`kdlens.engine.core`, imported on first use so that configs and the
command line can check a backend name without importing torch)."""

from __future__ import annotations

from typing import Any

from kdlens.engine.backends import BACKENDS, EngineBackend

__all__ = ["BACKENDS", "SELECT_AFTER_SECONDS", "EngineBackend", "InferenceEngine", "UnknownBackend",
           "default_backend", "inference_forward", "set_default_backend"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from kdlens.engine import core

        return getattr(core, name)
    raise AttributeError(f"module 'kdlens.engine' has no attribute '{name}'")
