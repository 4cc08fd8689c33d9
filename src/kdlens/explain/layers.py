"""Finding the layer to explain, reading its activations and gradients, and cutting a model at it."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.fx as fx
from torch import Tensor, nn

from kdlens.engine import inference_forward
from kdlens.explain.errors import ExplainError, require_autograd
from kdlens.models import FeatureTaps, resolve_module
from kdlens.models.modes import eval_mode

_GLOBAL_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_POOLS = (nn.AvgPool2d, nn.MaxPool2d)


def default_layer(model: nn.Module, x: Tensor) -> str:
    """The path of the last module whose output is a 4-D feature map before the classification
    head: global pooling modules and per-position class-evidence maps (a fully convolutional head,
    e.g. B-cos' 1×1 conv whose spatial mean is the logits) are skipped.

    Found by one probe forward of ``x[:1]`` (in eval mode, without gradients) with a hook on every
    module, so no model has to declare it. A container finishes after its last child, so the
    answer is the outermost module producing that map (``layer3`` rather than ``layer3.1``): for
    the models of ``kdlens.models`` it is the last of ``get_model_spec(name).stages`` (or, for
    torchvision MobileNets, the ``features`` container whose output is that stage's).

    A model that declares its layer (``model.kdlens_explain_layer``, set by specs with an
    ``explain_layer``, e.g. timm models: a vision transformer's last block's first norm) is not
    probed.
    """
    declared = getattr(model, "kdlens_explain_layer", None)
    if isinstance(declared, str):
        resolve_module(model, declared)
        return declared
    finished: list[tuple[str, nn.Module, Tensor]] = []

    def record(path: str) -> Callable[[nn.Module, object, object], None]:
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            if isinstance(output, Tensor):
                finished.append((path, module, output))

        return hook

    handles = [m.register_forward_hook(record(path)) for path, m in model.named_modules() if path]
    try:
        with eval_mode(model), torch.no_grad():
            logits = model(x[:1])
    finally:
        for handle in handles:
            handle.remove()
    for path, module, output in reversed(finished):
        if output.ndim == 4 and not _is_global_pool(module, output) and not _is_class_evidence(output, logits):
            return path
    raise ExplainError(f"{type(model).__name__} has no module returning a 4-D feature map; pass layer= explicitly")


def _is_global_pool(module: nn.Module, output: Tensor) -> bool:
    return isinstance(module, _GLOBAL_POOLS) or (isinstance(module, _POOLS) and output.shape[-2:] == (1, 1))


def _is_class_evidence(output: Tensor, logits: Tensor) -> bool:
    pooled = output.mean((2, 3))
    return pooled.shape == logits.shape and torch.allclose(pooled, logits, rtol=1e-4, atol=1e-6)


def token_layout(model: nn.Module, tokens: Tensor) -> tuple[int, int, int] | None:
    """(prefix tokens, h, w) of a vision transformer's (B, N, C) token sequence: N = prefix + h·w
    patch tokens in row-major order. The prefix (class, distillation, register tokens) is the
    model's ``num_prefix_tokens`` (timm) or else 0 or 1, whichever leaves a square number of
    patches; the grid is ``model.patch_embed.grid_size`` when it fits, else square. None when no
    layout fits."""
    count = tokens.shape[1]
    declared = getattr(model, "num_prefix_tokens", None)
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    for prefix in [declared] if isinstance(declared, int) else [0, 1]:
        patches = count - prefix
        if patches < 1:
            continue
        if grid is not None and len(grid) == 2 and int(grid[0]) * int(grid[1]) == patches:
            return prefix, int(grid[0]), int(grid[1])
        side = math.isqrt(patches)
        if side * side == patches:
            return prefix, side, side
    return None


def tokens_to_grid(tokens: Tensor, layout: tuple[int, int, int]) -> Tensor:
    """(B, prefix + h·w, C) tokens -> (B, C, h, w) map of the patch tokens (prefix tokens dropped)."""
    prefix, h, w = layout
    return tokens[:, prefix:].transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)


def grid_to_tokens(grid: Tensor, prefix_tokens: Tensor) -> Tensor:
    """The inverse of :func:`tokens_to_grid`, given the (B, prefix, C) prefix tokens."""
    return torch.cat([prefix_tokens, grid.flatten(2).transpose(1, 2)], 1)


def layer_activations(model: nn.Module, layer: str, x: Tensor) -> tuple[Tensor, Tensor]:
    """The logits and the layer's output for ``x``, both still attached to the graph (if any).

    A layer returning a vision transformer's tokens (B, N, C) gives its patch tokens as a
    (B, C, h, w) map (:func:`token_layout`). The model then runs on that map (turned back into
    tokens), so gradients with respect to it are those of the patch tokens."""
    grids: list[Tensor] = []

    def as_grid(module: nn.Module, inputs: object, output: object) -> Tensor | None:
        if isinstance(output, Tensor) and output.ndim == 3:
            layout = token_layout(model, output)
            if layout is not None:
                grids.append(tokens_to_grid(output, layout))
                return grid_to_tokens(grids[-1], output[:, : layout[0]])
        return None

    with FeatureTaps(model, [layer]) as taps:
        handle = resolve_module(model, layer).register_forward_hook(as_grid)
        try:
            logits = model(x)
        finally:
            handle.remove()
    activations = grids[-1] if grids else taps[layer]
    if activations.ndim != 4:
        raise ExplainError(
            f"layer '{layer}' returns a {activations.ndim}-D tensor of shape {tuple(activations.shape)}; CAM methods "
            "need a (B, C, h, w) feature map or a vision transformer's (B, prefix + h·w, C) tokens"
        )
    return logits, activations


def layer_gradients(
    model: nn.Module, layer: str, x: Tensor, target: Tensor, create_graph: bool
) -> tuple[Tensor, Tensor]:
    """The layer's activations A and ∂(Σ_b logit[b, target_b])/∂A, by ``torch.autograd.grad``
    (parameters' ``.grad`` are never touched). Samples do not interact in eval mode, so one
    backward of the summed target logits gives every sample's own gradient.

    With ``create_graph`` both stay in the graph, so a loss on maps built from them reaches the
    parameters before and after the layer; otherwise both are detached."""
    require_autograd()
    with torch.enable_grad(), unfused_attention(model, create_graph):
        # Without create_graph the input is made a leaf, so that frozen models (no parameter
        # requires grad) still build the graph from which the layer's gradient is read.
        logits, activations = layer_activations(model, layer, x if create_graph else x.detach().requires_grad_())
        if not activations.requires_grad:
            raise ExplainError(
                "create_graph=True needs a graph from the parameters or the input to the layer's output: "
                "the model has no parameter that requires grad and the input does not require grad"
            )
        (grads,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), activations, create_graph=create_graph)
    if create_graph:
        return activations, grads
    return activations.detach(), grads


@contextmanager
def unfused_attention(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Within this block (if ``enabled``), timm attention layers (``fused_attn`` set) compute
    softmax(QKᵀ)V explicitly instead of by ``F.scaled_dot_product_attention``, whose backward
    has no derivative: maps built with ``create_graph`` are differentiated twice (explanation
    losses). Restored on exit."""
    fused = [m for m in model.modules() if getattr(m, "fused_attn", None) is True] if enabled else []
    for module in fused:
        module.fused_attn = False
    try:
        yield
    finally:
        for module in fused:
            module.fused_attn = True


class ModelSplit:
    """A model's forward cut at one module: ``prefix(x) -> (layer output, carried values)`` and
    ``rest(layer output, *carried) -> logits``, so that many edited copies of one layer output
    re-run only the modules after the layer.

    Built by tracing the forward with ``torch.fx`` (the layer kept as one call). ``carried`` are
    the values computed before the layer that the rest still reads (e.g. a residual shortcut's
    input when the layer is inside a block); each has the batch as its first dimension, so
    ``carried[b_index]`` selects the samples whose edited layer outputs are evaluated.

    A traced ``rest`` runs on :mod:`kdlens.engine` (the fastest backend that reproduces it; the
    module itself wherever gradients, hooks or training mode need it).
    """

    def __init__(self, prefix: Callable[..., tuple[Tensor, ...]], rest: Callable[..., Tensor]) -> None:
        self.prefix = prefix
        self.rest_module = rest  # the engine refers to its model weakly
        self.rest = inference_forward(rest) if isinstance(rest, nn.Module) else rest

    @classmethod
    def at(cls, model: nn.Module, layer: str, probe: Tensor) -> ModelSplit | None:
        """The split at ``layer``, or None where the model cannot be traced or cut there.

        The split is accepted only if ``rest(*prefix(probe))`` reproduces ``model(probe)`` and every
        carried value is batch-indexed, checked here on ``probe`` (in eval mode, without gradients).
        """
        resolve_module(model, layer)
        try:
            graph = _LeafAt(layer).trace(model)
            split = cls(*_cut(model, graph, layer))
            with eval_mode(model), torch.no_grad():
                expected = model(probe)
                layer_output, *carried = split.prefix(probe)
                reproduced = split.rest(layer_output, *carried)
        except Exception:  # fx fails in many ways (data-dependent control flow, ...): use no split
            return None
        batch_indexed = all(isinstance(v, Tensor) and v.shape[:1] == probe.shape[:1] for v in [layer_output, *carried])
        if batch_indexed and reproduced.shape == expected.shape and torch.allclose(reproduced, expected, rtol=1e-4, atol=1e-5):
            layout = token_layout(model, layer_output) if layer_output.ndim == 3 else None
            return split if layout is None else split._on_token_grid(layout)
        return None

    def _on_token_grid(self, layout: tuple[int, int, int]) -> ModelSplit:
        """This split with the layer's tokens as a (B, C, h, w) map: the prefix tokens are carried
        (first), so ``rest(map, prefix tokens, *carried)``."""
        split = self

        def grid_prefix(x: Tensor) -> tuple[Tensor, ...]:
            tokens, *carried = split.prefix(x)
            return (tokens_to_grid(tokens, layout), tokens[:, : layout[0]], *carried)

        def grid_rest(grid: Tensor, prefix_tokens: Tensor, *carried: Tensor) -> Tensor:
            return split.rest(grid_to_tokens(grid, prefix_tokens), *carried)

        return ModelSplit(grid_prefix, grid_rest)


class _LeafAt(fx.Tracer):
    """Traces through every module except ``path`` (and torch's own layers), which stays one call."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name == self.path or super().is_leaf_module(m, module_qualified_name)


def _cut(model: nn.Module, graph: fx.Graph, layer: str) -> tuple[fx.GraphModule, fx.GraphModule]:
    # Forward arguments with a default (e.g. timm ViTs' attn_mask=None) keep it in both parts.
    placeholders = [n for n in graph.nodes if n.op == "placeholder" and not n.args]
    calls = [n for n in graph.nodes if n.op == "call_module" and n.target == layer]
    if len(placeholders) != 1 or len(calls) != 1:
        raise ValueError("only single-input models whose layer runs once per forward can be cut")
    (cut,) = calls
    after = _descendants(cut)
    output = next(n for n in graph.nodes if n.op == "output")
    if output not in after:
        raise ValueError("the model's output does not depend on the layer")
    input_dependent = _descendants(placeholders[0]) | set(placeholders)
    outside = {arg for node in after for arg in node.all_input_nodes if arg not in after and arg is not cut}
    # Values from before the cut that depend on the input are carried over; the rest recomputes
    # the input-independent ones (parameters and functions of them, e.g. normalised weights).
    carried = [node for node in graph.nodes if node in outside and node in input_dependent]
    constants = _ancestors([node for node in outside if node not in input_dependent])

    prefix_graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    needed = _ancestors([cut, *carried])
    for node in graph.nodes:
        if node in needed:
            env[node] = prefix_graph.node_copy(node, env.__getitem__)
    prefix_graph.output(tuple(env[n] for n in [cut, *carried]))

    rest_graph = fx.Graph()
    env = {cut: rest_graph.placeholder("layer_output")}
    env.update({node: rest_graph.placeholder(f"carried_{i}") for i, node in enumerate(carried)})
    for node in graph.nodes:
        if node in after or node in constants:
            env[node] = rest_graph.node_copy(node, env.__getitem__)
    prefix, rest = fx.GraphModule(model, prefix_graph), fx.GraphModule(model, rest_graph)
    # Their own training flags are read by nothing (their modules keep theirs): off, so that the
    # engine, which runs eager while the root or a leaf module trains, looks at the leaves alone.
    prefix.training = rest.training = False
    return prefix, rest


def _reachable(start: list[fx.Node], neighbours: Callable[[fx.Node], Iterable[fx.Node]]) -> set[fx.Node]:
    """Every node reached from ``start`` by following ``neighbours`` (``start`` itself only if reached)."""
    found: set[fx.Node] = set()
    stack = [n for node in start for n in neighbours(node)]
    while stack:
        current = stack.pop()
        if current not in found:
            found.add(current)
            stack.extend(neighbours(current))
    return found


def _descendants(node: fx.Node) -> set[fx.Node]:
    return _reachable([node], lambda n: n.users)


def _ancestors(nodes: list[fx.Node]) -> set[fx.Node]:
    """The nodes themselves and everything they are computed from."""
    return _reachable(nodes, lambda n: n.all_input_nodes) | set(nodes)

