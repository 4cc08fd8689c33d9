"""The one ``eval_mode``: a model evaluated in eval mode, every module's own mode restored after."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

from torch import nn

M = TypeVar("M", bound=nn.Module)


@contextmanager
def eval_mode(model: M | None) -> Iterator[M | None]:
    """``model`` in eval mode (batch norm must not depend on batch-mates, dropout is off); on exit
    each module gets back its own mode (a frozen batch-norm layer inside a training model stays in
    eval mode). ``None`` is allowed and left alone."""
    if model is None:
        yield None
        return
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training
