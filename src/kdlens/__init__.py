"""kdlens: explainable knowledge distillation.

``from kdlens import create_model, load_model`` gives the model registry's constructor and the
checkpoint loader; both are resolved on first use so that ``import kdlens`` stays light."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["create_model", "load_model"]


def __getattr__(name: str) -> Any:
    if name == "create_model":
        from kdlens.models import create_model

        return create_model
    if name == "load_model":
        from kdlens.runs.checkpoints import load_model

        return load_model
    raise AttributeError(f"module 'kdlens' has no attribute '{name}'")
