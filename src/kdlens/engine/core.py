"""The inference engine: a model's forward-only callable, run by the backend measured fastest for
each input kind (per-sample shapes, dtypes and device of its inputs, and the autocast precision in
effect) among those that reproduce the model's outputs. Models may take several tensors, each with
the batch first (e.g. the rest of a model cut at a layer, :class:`kdlens.explain.ModelSplit`).

Under ``torch.autocast`` (reduced-precision sweeps) the copies run under the same autocast and are
checked against the model under it, within a tolerance scaled to the precision (:func:`parity_tolerance`).

Every backend but ``eager`` runs a copy of the weights, so each call compares the parameters' and
buffers' storage and version counters with those the copy was built from and rebuilds it after any
change (``load_state_dict``, in-place re-initialisation, ``.to(device)``). Calls that a copy could
not serve run the model itself, the reason logged once: training mode, forward hooks (a copy would
skip them), gradients requested, B-cos layers (their explanation mode switches at run time).
"""

from __future__ import annotations

import copy
import io
import itertools
import logging
import time
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kdlens.engine.backends import BACKENDS
from kdlens.errors import UserError

logger = logging.getLogger(__name__)

PARITY_RTOL = 1e-4
"""A backend is used only if its logits on the first batch are within this fraction of the
logits' largest magnitude from the eager ones (in float32; see :func:`parity_tolerance`)."""
REDUCED_PRECISION_EPS = 4
"""Under autocast, the tolerance in units of the precision's machine epsilon: a BN-folded copy
rounds other weights than the model does (measured on resnet20 under the same autocast, the
model against its folded copy: 0.8 eps in bfloat16 and in float16)."""
SPEEDUP_MARGIN = 1.05
"""``auto`` keeps eager unless a backend is at least this much faster (timing noise)."""
SELECT_AFTER_SECONDS = 5.0
"""Shared engines (:func:`inference_forward`) run eager until this much eager forward time has
been spent on one input kind, so that short jobs never pay for building and timing backends
(a few seconds for a CIFAR net, measured: at 1 s, choosing took most of a demo's evaluation);
after that they measure once and keep the choice."""
MEASURE_BATCH = 32
"""Images of the batch at hand that building, the parity check and the timing rounds run on: the
choice then costs about the same whatever the batch size."""
CHOICE_MIN_BATCH = 8
"""Batches smaller than this run eager and never decide the backend: per-call overheads dominate
them (a probe batch of two would pick eager for every later batch of 64)."""
MEASURE_ROUNDS = 3
"""Timed rounds when choosing; each round runs every backend once, so that load from other jobs
hits them alike, and each backend keeps its best time."""

Forward = Callable[..., Tensor]
InputKind = tuple[tuple[tuple[tuple[int, ...], torch.dtype], ...], torch.device, torch.dtype | None]
"""Per input its per-sample shape and dtype; the device; the autocast precision (None: off)."""


def input_kind(*inputs: Tensor) -> InputKind:
    device = inputs[0].device
    return tuple((tuple(x.shape[1:]), x.dtype) for x in inputs), device, autocast_dtype(device)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The precision autocast runs ``device``'s operations in, None where it is off."""
    if not torch.is_autocast_enabled(device.type):
        return None
    return torch.get_autocast_dtype(device.type)


class UnknownBackend(UserError, ValueError):
    """An engine backend name that does not exist."""


class BackendRefused(Exception):
    """A backend cannot run this model; the message says why in a few words."""


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise UnknownBackend(f"unknown engine '{name}': choose one of {', '.join(BACKENDS)}")
    return name


_default_backend = "auto"


def set_default_backend(name: str) -> None:
    """The backend :func:`inference_forward` uses when none is given (``kdlens --engine``)."""
    global _default_backend
    _default_backend = check_backend(name)


def default_backend() -> str:
    return _default_backend


_shared: weakref.WeakKeyDictionary[nn.Module, dict[str, InferenceEngine]] = weakref.WeakKeyDictionary()


def inference_forward(model: nn.Module, backend: str | None = None) -> Forward:
    """``model``'s forward-only callable for ``backend`` (default: :func:`set_default_backend`'s),
    shared by every caller of the same model, so that a choice is measured and built once."""
    backend = check_backend(backend or _default_backend)
    if backend == "eager":
        return model
    engines = _shared.setdefault(model, {})
    if backend not in engines:
        engines[backend] = InferenceEngine(model, backend)
    return engines[backend]


@dataclass
class _Built:
    backend: str
    run: Forward
    weights: tuple[tuple[int, int], ...]


class InferenceEngine:
    """Call it like the model. ``select_after``: eager forward seconds per input kind before
    ``auto`` measures (0: at the first call, for callers that know many calls follow)."""

    def __init__(self, model: nn.Module, backend: str = "auto", *, select_after: float = SELECT_AFTER_SECONDS) -> None:
        self._model = weakref.ref(model)  # the shared cache is keyed weakly by the model
        self.backend = check_backend(backend)
        self.select_after = select_after
        self.chosen: dict[InputKind, str] = {}
        self.measured: dict[InputKind, dict[str, float]] = {}
        """Seconds per forward of the first batch of each input kind, by backend (``auto`` only)."""
        self._built: dict[InputKind, _Built] = {}
        self._eager_seconds: dict[InputKind, float] = {}
        self._logged: set[str] = set()

    @property
    def model(self) -> nn.Module:
        model = self._model()
        if model is None:
            raise RuntimeError("the engine's model no longer exists")
        return model

    def __call__(self, *inputs: Tensor) -> Tensor:
        model = self.model
        if self.backend == "eager" or self._needs_eager(model, inputs):
            return model(*inputs)
        kind = input_kind(*inputs)
        backend = self.chosen.get(kind)
        if backend is None:
            spent = self._eager_seconds.get(kind, 0.0)
            if self.backend == "auto" and (spent < self.select_after or len(inputs[0]) < CHOICE_MIN_BATCH):
                started = time.perf_counter()
                logits = model(*inputs)
                self._eager_seconds[kind] = spent + time.perf_counter() - started
                return logits
            backend = self.chosen[kind] = self._choose(model, inputs, kind)
        if backend == "eager":
            return model(*inputs)
        built = self._built.get(kind)
        if built is None or built.weights != weights_signature(model):
            built = self._build(backend, model, inputs)
            if built is None:  # the new weights broke parity or the build
                self.chosen[kind] = "eager"
                return model(*inputs)
            self._built[kind] = built
        return built.run(*inputs)

    def _needs_eager(self, model: nn.Module, inputs: tuple[Tensor, ...]) -> bool:
        reason = eager_reason(model, inputs)
        if reason is not None:
            self._log(f"{_name(model)} runs eager: {reason}")
        return reason is not None

    def _choose(self, model: nn.Module, inputs: tuple[Tensor, ...], kind: InputKind) -> str:
        reason = structural_reason(model)
        if reason is not None:
            self._log(f"{_name(model)} runs eager: {reason}")
            return "eager"
        probe = tuple(x[:MEASURE_BATCH] for x in inputs)
        if self.backend != "auto":
            built = self._build(self.backend, model, probe)
            if built is None:
                return "eager"
            self._built[kind] = built
            return self.backend
        builds = {name: built for name in auto_candidates(*inputs) if (built := self._build(name, model, probe)) is not None}
        times = _seconds_per_forward({"eager": model, **{name: built.run for name, built in builds.items()}}, probe)
        best = min(times, key=times.__getitem__)
        if times[best] * SPEEDUP_MARGIN > times["eager"]:
            best = "eager"
        self.measured[kind] = times
        if best != "eager":
            self._built[kind] = builds[best]
        logger.info(
            "%s on %s: %s (%s)", _name(model), ", ".join(str(tuple(x.shape)) for x in inputs), best,
            ", ".join(f"{name} {seconds * 1e3:.1f} ms" for name, seconds in times.items()),
        )
        return best

    def _build(self, backend: str, model: nn.Module, inputs: tuple[Tensor, ...]) -> _Built | None:
        """``backend``'s runner of ``model`` for inputs like ``inputs``, checked against eager on
        them; None (the reason logged) when it cannot take the model."""
        try:
            weights = weights_signature(model)
            with torch.inference_mode(False), torch.no_grad():
                example = tuple(x.detach().clone() for x in inputs)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    run = BUILDERS[backend](model, example)
                traced = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
                if traced:
                    raise BackendRefused(f"the forward depends on its input's values ({str(traced[0].message)[:80]})")
                check_parity(model, run, example)
        except Exception as error:  # any failure means this backend cannot take the model
            message = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
            self._log(f"{_name(model)}: {backend} refused ({message}); another backend runs it")
            return None
        return _Built(backend, run, weights)

    def _log(self, message: str) -> None:
        if message not in self._logged:
            self._logged.add(message)
            logger.info(message)


def eager_reason(model: nn.Module, inputs: tuple[Tensor, ...]) -> str | None:
    """Why this call must run the model itself, or None (one pass over the modules: it runs at
    every call)."""
    if torch.is_grad_enabled() and any(x.requires_grad for x in inputs):
        return "gradients with respect to the input are requested"
    if any(_global_hooks()):
        return "it has hooks (a copy would not run them)"
    for module in model.modules():
        # The root and the leaves: a traced model's containers are fresh modules its forward never calls.
        if module.training and (module is model or next(module.children(), None) is None):
            return "it is in training mode"
        if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks:
            return "it has hooks (a copy would not run them)"
    if torch.is_grad_enabled() and any(p.requires_grad for p in model.parameters()):
        return "its parameters require gradients"
    return None


def structural_reason(model: nn.Module) -> str | None:
    """Why no copy of ``model`` can stand in for it, or None."""
    if any(type(m).__module__ == "kdlens.models.bcos" for m in model.modules()):
        return "B-cos layers switch to explanation mode at run time"
    try:
        weights_signature(model)
    except RuntimeError:
        return "its weights are inference tensors, whose changes cannot be detected"
    return None


def _global_hooks() -> list[dict]:
    from torch.nn.modules import module

    return [module._global_forward_hooks, module._global_forward_pre_hooks, module._global_backward_hooks]


def weights_signature(model: nn.Module) -> tuple[tuple[int, int], ...]:
    """Storage address and version counter of every parameter and buffer: any in-place change,
    reload or move changes it."""
    return tuple((t.data_ptr(), t._version) for t in itertools.chain(model.parameters(), model.buffers()))


def parity_tolerance(precision: torch.dtype | None) -> float:
    """The largest difference from eager, as a fraction of the logits' largest magnitude, that a
    backend may have at this autocast precision (None: off)."""
    if precision is None:
        return PARITY_RTOL
    return max(PARITY_RTOL, REDUCED_PRECISION_EPS * torch.finfo(precision).eps)


def check_parity(model: nn.Module, run: Forward, inputs: tuple[Tensor, ...]) -> None:
    expected, actual = model(*inputs), run(*inputs)
    if not isinstance(actual, Tensor) or actual.shape != expected.shape:
        raise BackendRefused("its output differs in type or shape")
    scale = expected.detach().abs().amax().float().clamp_min(torch.finfo(torch.float32).tiny)
    error = ((actual.to(expected) - expected).abs().amax().float() / scale).item()
    if not error <= parity_tolerance(autocast_dtype(inputs[0].device)):
        raise BackendRefused(f"its logits differ from eager by {error:.1e} of their scale")


def auto_candidates(*inputs: Tensor) -> list[str]:
    """The backends ``auto`` measures for inputs like these. torch.compile only on CUDA: on a CPU
    (1 thread, 32 px) it measured 0.59× eager on torchvision resnet18 and 1.8–1.9× on CIFAR
    resnet20/56, against 1.6–2.0× for jit and 1.3–2.4× for onnxruntime, after a compilation that
    costs far more than their builds. Under autocast only the copies that run under it (folded,
    compile): traced and exported graphs run in the precision they were made in."""
    device = inputs[0].device
    if autocast_dtype(device) is not None:
        return ["folded", "compile"] if device.type == "cuda" else ["folded"]
    if device.type == "cuda":
        return ["folded", "jit", "compile"]
    if device.type != "cpu":
        return ["folded"]
    candidates = ["folded", "jit"]
    if all(x.dtype == torch.float32 for x in inputs) and _has_onnxruntime():
        candidates.append("onnxruntime")
    return candidates


def _has_onnxruntime() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def _seconds_per_forward(forwards: dict[str, Forward], inputs: tuple[Tensor, ...]) -> dict[str, float]:
    """Per backend, the best time of one forward of ``inputs`` over :data:`MEASURE_ROUNDS` rounds,
    after a warm-up forward each."""
    times: dict[str, list[float]] = {name: [] for name in forwards}
    device = inputs[0].device
    with torch.inference_mode():
        for forward in forwards.values():
            forward(*inputs)
        for _ in range(MEASURE_ROUNDS):
            for name, forward in forwards.items():
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                started = time.perf_counter()
                forward(*inputs)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times[name].append(time.perf_counter() - started)
    return {name: min(seconds) for name, seconds in times.items()}


def _name(model: nn.Module) -> str:
    return getattr(model, "kdlens_model", None) or type(model).__name__


# ---------------------------------------------------------------- backends


def _channels_last(x: Tensor) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


def _few(inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Two samples of each input: what tracing and export run on (the parity check then runs
    another batch size, which shows whether the batch size was baked in)."""
    return tuple(x[:2] for x in inputs)


def _refuse_autocast(inputs: tuple[Tensor, ...]) -> None:
    if autocast_dtype(inputs[0].device) is not None:
        raise BackendRefused("it runs in the precision it was made in, not under autocast")


def build_folded(model: nn.Module, inputs: tuple[Tensor, ...]) -> Forward:
    """A copy with each batch norm folded into the convolution before it (torch.fx), channels-last;
    it runs under the caller's autocast, if any."""
    from torch.fx.experimental.optimization import fuse

    folded = fuse(model, inplace=False)
    if any(x.ndim == 4 for x in inputs):
        folded = folded.to(memory_format=torch.channels_last)
    return lambda *batch: folded(*map(_channels_last, batch))


def build_jit(model: nn.Module, inputs: tuple[Tensor, ...]) -> Forward:
    """Traced, frozen (weights become constants, batch norms folded) and optimised for inference."""
    _refuse_autocast(inputs)
    traced = torch.jit.trace(model, _few(inputs), check_trace=False)
    return torch.jit.optimize_for_inference(torch.jit.freeze(traced))


def build_onnxruntime(model: nn.Module, inputs: tuple[Tensor, ...]) -> Forward:
    """Exported to ONNX with a dynamic batch size, run by onnxruntime's CPU provider with torch's
    thread count and without spinning: between its calls torch works (a student's step, the next
    perturbations), and onnxruntime's idle threads spinning on the same cores slowed a KD step by
    ~15% (measured: 1.17× torchdistill without spinning, 0.99× with), for ≤ 6% of pure throughput."""
    if inputs[0].device.type != "cpu":
        raise BackendRefused("onnxruntime runs models on the CPU only here")
    _refuse_autocast(inputs)
    import onnxruntime

    names = [f"x{i}" for i in range(len(inputs))]
    buffer = io.BytesIO()
    torch.onnx.export(
        model, _few(inputs), buffer, input_names=names, output_names=["logits"],
        dynamic_axes={name: {0: "batch"} for name in [*names, "logits"]}, dynamo=False,
    )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only
    session = onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])

    def run(*batch: Tensor) -> Tensor:
        feed = {name: x.detach().contiguous().numpy() for name, x in zip(names, batch, strict=True)}
        return torch.from_numpy(session.run(None, feed)[0])

    return run


def build_compile(model: nn.Module, inputs: tuple[Tensor, ...]) -> Forward:
    """torch.compile of a copy; on CUDA with CUDA graphs (``reduce-overhead``), whose outputs live
    in buffers the next call overwrites, hence the clone."""
    compiled = torch.compile(copy.deepcopy(model), mode="reduce-overhead" if inputs[0].device.type == "cuda" else None)
    compiled(*inputs)  # compile now, not in the first measured call
    return lambda *batch: compiled(*batch).clone()


BUILDERS: dict[str, Callable[[nn.Module, tuple[Tensor, ...]], Forward]] = {
    "folded": build_folded,
    "jit": build_jit,
    "onnxruntime": build_onnxruntime,
    "compile": build_compile,
}
