"""Intermediate outputs of a model read by module path through forward hooks, so that no model
has to expose features itself (distillation hints, attention transfer, Grad-CAM)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from types import TracebackType

import torch
from torch import Tensor, nn

from kdlens.errors import UserError


class UnknownModulePath(UserError, ValueError):
    """A module path (a feature tap, an explained layer) that the model does not have."""


def resolve_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at ``path`` (as in ``model.named_modules()``); ``""`` is the model itself."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise UnknownModulePath(_unknown_path_message(model, path)) from None


def _unknown_path_message(model: nn.Module, path: str) -> str:
    valid = [name for name, _ in model.named_modules() if name]
    close = difflib.get_close_matches(path, valid, n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else "."
    top_level = ", ".join(name for name, _ in model.named_children())
    return (
        f"module path '{path}' not found in {type(model).__name__}{hint} "
        f"Top-level modules: {top_level} (model.named_modules() lists every path)."
    )


class FeatureTaps:
    """Keeps the output of each tapped module from the model's latest forward pass.

    Outputs are kept as returned, not detached, so losses on them backpropagate into the model.
    Use as a context manager, which removes the hooks on exit, or call :meth:`close` when a
    long-lived owner (e.g. a LightningModule) is done. Outputs stay readable after closing. A
    module called several times in one forward keeps its last output.
    """

    def __init__(self, model: nn.Module, paths: Iterable[str]) -> None:
        self.paths = tuple(dict.fromkeys(paths))
        self.as_grad_leaves = False
        # Resolve every path before registering any hook, so a typo leaves the model untouched.
        modules = {path: resolve_module(model, path) for path in self.paths}
        self._outputs: dict[str, Tensor] = {}
        self._versions: dict[str, int | None] = {}
        self._handles = [
            module.register_forward_hook(self._make_hook(path)) for path, module in modules.items()
        ]

    def _make_hook(self, path: str) -> Callable[[nn.Module, tuple[object, ...], object], None]:
        def store_output(module: nn.Module, inputs: tuple[object, ...], output: object) -> Tensor | None:
            if not isinstance(output, Tensor):
                raise TypeError(
                    f"FeatureTaps: '{path}' ({type(module).__name__}) returned "
                    f"{type(output).__name__}, not a Tensor; tap a module that returns a tensor"
                )
            leaf = self.as_grad_leaves and torch.is_grad_enabled() and not output.is_inference()
            if leaf:
                output = output.detach().requires_grad_()
            self._outputs[path] = output
            # Inference tensors have no version counter, so overwrites cannot be detected on them.
            self._versions[path] = None if output.is_inference() else output._version
            return output if leaf else None  # a returned tensor replaces the module's output

        return store_output

    def __getitem__(self, path: str) -> Tensor:
        if path not in self._outputs:
            if path in self.paths:
                raise KeyError(f"'{path}' has no output yet: run the model's forward first")
            raise KeyError(f"'{path}' is not tapped; tapped paths: {', '.join(self.paths)}")
        output = self._outputs[path]
        version = self._versions[path]
        if version is not None and output._version != version:
            # An in-place op after the module (e.g. ReLU(inplace=True), `out += identity`)
            # changed the tensor, so it no longer is that module's output.
            raise RuntimeError(
                f"the output of '{path}' was modified in place after the module returned it; "
                "tap a module whose output is not overwritten (e.g. the block, not its last BN)"
            )
        return output

    @contextmanager
    def grad_leaves(self, enabled: bool = True) -> Iterator[FeatureTaps]:
        """Within this block (if ``enabled``), each tapped output is replaced by a detached copy
        that requires grad, so gradients with respect to it exist even for a frozen model on an
        input without grad (a teacher's Grad-CAM): the graph starts at the tap. Outside it, the
        model's forward is untouched (e.g. input gradients through the whole model still work)."""
        previous, self.as_grad_leaves = self.as_grad_leaves, enabled
        try:
            yield self
        finally:
            self.as_grad_leaves = previous

    def as_dict(self) -> dict[str, Tensor]:
        """Every tapped output, in the order the paths were given."""
        return {path: self[path] for path in self.paths}

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> FeatureTaps:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
