"""Name -> object registries (models, datasets, loss terms, explainers, metrics): one mechanism.

Every kind is registered the same way, in kdlens and in a user's own package::

    @LOSSES.register("my_loss", config=MyLossConfig)
    class MyLoss(LossTerm): ...

``config`` is the pydantic model that the name's config section (``losses[i]``, ``data``)
validates against; it is looked up when a config is validated, so anything registered before
that, in or out of kdlens, validates. The five registries live here, below everything that fills
them, so that reading a config needs none of the packages until a name is used:

* built-in modules register on import and are imported on first lookup or listing
  (``modules``; a mapping ``name -> module`` imports only the module of the name looked up);
* plugins are Python entry points in the registry's ``group`` (``kdlens.losses``,
  ``kdlens.datasets``, ``kdlens.models``, ``kdlens.explainers``, ``kdlens.metrics``): each names a
  module that registers its objects when imported, loaded on the first lookup of a name kdlens
  does not know, or the first listing;
* resolvers resolve whole families by prefix on use (``timm:<name>``).
"""

from __future__ import annotations

import difflib
import importlib
import threading
import typing
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
_MISSING: Any = object()


@dataclass(frozen=True)
class Resolver(Generic[T]):
    """Resolves names that start with ``prefix`` on first use (e.g. ``timm:<any timm model>``),
    for families too large or too dynamic to register one by one."""

    prefix: str
    resolve: Callable[[str], T | None]
    """The name without the prefix -> its object, or None when the name is unknown."""
    candidates: Callable[[], list[str]]
    """Known names without the prefix, for close-match hints (may be empty)."""
    describe: str
    """What such names are, for error messages (e.g. "timm:<name> for any timm model")."""


class Registry(Generic[T]):
    """A named collection, filled by ``register(name, obj, config=...)`` (or its decorator form).

    ``kind`` names the entries in messages (e.g. "loss term"); ``group`` is the entry-point group
    of plugins; ``modules`` are the built-in modules that register into it, imported on first use:
    a sequence (all of them at once), or a mapping ``name -> module`` (only the module of the name
    looked up, e.g. so that looking up ``gradcam`` does not import LRP's dependencies)."""

    def __init__(
        self, kind: str, *, group: str | None = None, modules: Sequence[str] | Mapping[str, str] = ()
    ) -> None:
        self.kind = kind
        self.group = group
        self._items: dict[str, T] = {}
        self._configs: dict[str, type | None] = {}
        self._resolvers: list[Resolver[T]] = []
        self._resolved: dict[str, T] = {}
        self._homes: dict[str, str] = dict(modules) if isinstance(modules, Mapping) else {}
        self._modules: list[str] = [] if isinstance(modules, Mapping) else list(modules)
        self._modules_loaded = not self._modules
        self._plugins_loaded = group is None
        self._plugin_errors: list[str] = []
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ registering

    def register(self, name: str, obj: T = _MISSING, *, config: type | None = None) -> Any:
        """Register ``obj`` under ``name`` and return it; without ``obj``, a decorator that does.

        ``config``: the pydantic model (``extra="forbid"``) a config section naming ``name``
        validates against; if it has a ``name`` field with a ``Literal`` type, the literal must
        allow ``name``."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"a {self.kind} is registered under a non-empty string name, got {name!r}")
        if config is not None:
            _check_config(self.kind, name, config)

        def add(item: T) -> T:
            with self._lock:
                if name in self._items:
                    raise ValueError(f"{self.kind} '{name}' is registered twice")
                self._items[name] = item
                self._configs[name] = config
            return item

        return add if obj is _MISSING else add(obj)

    def add_resolver(self, resolver: Resolver[T]) -> None:
        """Resolve unregistered names starting with ``resolver.prefix`` on use, caching each."""
        self._resolvers.append(resolver)

    # ------------------------------------------------------------------ looking up

    def __getitem__(self, name: str) -> T:
        obj = self._lookup(name)
        if obj is None:
            raise KeyError(self.unknown_message(name))
        return obj

    def get(self, name: str, default: Any = None) -> T | Any:
        obj = self._lookup(name) if isinstance(name, str) else None
        return default if obj is None else obj

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._lookup(name) is not None

    def config(self, name: str) -> type | None:
        """The config model registered with ``name`` (None: the name has no options of its own).
        Raises ``KeyError`` (with close matches) for an unknown name."""
        self[name]
        return self._configs.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def names(self) -> list[str]:
        """Every registered name, plugins' included (names resolved on use, e.g. ``timm:...``,
        are not listed)."""
        self._load_modules()
        self._load_plugins()
        return sorted({*self._items, *self._homes})

    def _lookup(self, name: str) -> T | None:
        if name in self._items:
            return self._items[name]
        if name in self._resolved:
            return self._resolved[name]
        if name in self._homes:
            _import_module(self._homes[name])
            if name in self._items:
                return self._items[name]
        self._load_modules()
        if name in self._items:
            return self._items[name]
        for resolver in self._resolvers:
            if name.startswith(resolver.prefix):
                obj = resolver.resolve(name[len(resolver.prefix):])
                if obj is not None:
                    self._resolved[name] = obj
                return obj
        self._load_plugins()
        return self._items.get(name)

    # ------------------------------------------------------------------ lazy loading

    def _load_modules(self) -> None:
        if self._modules_loaded:
            return
        with self._lock:
            if self._modules_loaded:
                return
            self._modules_loaded = True  # before importing: a module may look names up while it loads
            try:
                for module in self._modules:
                    _import_module(module)
            except BaseException:
                self._modules_loaded = False
                raise

    def _load_plugins(self) -> None:
        """Import every module of this registry's entry-point group (once)."""
        if self._plugins_loaded:
            return
        with self._lock:
            if self._plugins_loaded:
                return
            self._plugins_loaded = True
            self._load_modules()
            for entry_point in _entry_points(self.group):
                try:
                    entry_point.load()
                except Exception as err:  # a broken plugin must not break kdlens: say which, go on
                    problem = (f"plugin '{entry_point.name} = {entry_point.value}' (entry point group "
                               f"{self.group}) failed to load: {type(err).__name__}: {err}")
                    self._plugin_errors.append(problem)
                    warnings.warn(problem, RuntimeWarning, stacklevel=3)

    # ------------------------------------------------------------------ messages

    def unknown_message(self, name: str) -> str:
        """'unknown X' for ``name``, with close matches among the registered names or, for a
        resolver's prefix, among the names that resolver knows."""
        for resolver in self._resolvers:
            if name.startswith(resolver.prefix):
                known = [resolver.prefix + n for n in resolver.candidates()]
                close = difflib.get_close_matches(name, known, n=3)
                hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
                return f"unknown {self.kind} '{name}'.{hint} Valid: {resolver.describe}"
        message = unknown_name_message(self.kind, name, self.names())
        for resolver in self._resolvers:
            if name in resolver.candidates():
                message = f"unknown {self.kind} '{name}'. Did you mean '{resolver.prefix}{name}'? Valid: {', '.join(self.names())}"
        notes = [f"also {resolver.describe}" for resolver in self._resolvers] + self._plugin_errors
        return "; ".join([message, *notes])


def unknown_name_message(kind: str, name: str, valid: list[str]) -> str:
    """'unknown X' with the closest valid names first, then all of them."""
    close = difflib.get_close_matches(name, valid, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown {kind} '{name}'.{hint} Valid: {', '.join(valid)}"


def _import_module(name: str) -> Any:
    return importlib.import_module(name)


def _entry_points(group: str | None) -> list[Any]:
    if group is None:
        return []
    from importlib.metadata import entry_points

    return list(entry_points(group=group))


def _check_config(kind: str, name: str, config: type) -> None:
    fields = getattr(config, "model_fields", None)
    if fields is None:
        raise TypeError(f"the config of {kind} '{name}' must be a pydantic model, got {config!r}")
    field = fields.get("name")
    if field is not None and typing.get_origin(field.annotation) is typing.Literal:
        if name not in typing.get_args(field.annotation):
            raise ValueError(
                f"{kind} '{name}' is registered with {config.__name__}, whose 'name' only allows "
                f"{', '.join(map(repr, typing.get_args(field.annotation)))}"
            )


# The registries of kdlens. Each package re-exports its own (kdlens.models.MODELS, ...).

MODELS: Registry[Any] = Registry("model", group="kdlens.models", modules=("kdlens.models",))
"""Model name -> :class:`kdlens.models.ModelSpec` (and ``timm:<name>`` by resolver)."""

DATASETS: Registry[Any] = Registry("dataset", group="kdlens.datasets", modules=("kdlens.data",))
"""Dataset name -> :class:`kdlens.data.DatasetEntry`; config: its ``data`` section's model."""

LOSSES: Registry[Any] = Registry("loss term", group="kdlens.losses", modules=("kdlens.distill",))
"""Loss term name -> :class:`kdlens.distill.LossTerm` subclass; config: its ``losses[i]`` model."""

_EXPLAINER_MODULES = {
    "kdlens.explain.cam": ("cam", "gradcam", "gradcampp", "xgradcam", "hirescam", "layercam", "scorecam",
                           "ablationcam", "eigencam"),
    "kdlens.explain.gradient": ("saliency", "inputxgradient", "integrated_gradients", "smoothgrad", "gradientshap",
                                "guided_backprop"),
    "kdlens.explain.perturbation": ("occlusion", "lime", "kernelshap"),
    "kdlens.explain.lrp": ("lrp",),
    "kdlens.explain.bcos": ("bcos",),
}

EXPLAINERS: Registry[Any] = Registry(
    "explanation method",
    group="kdlens.explainers",
    modules={name: module for module, names in _EXPLAINER_MODULES.items() for name in names},
)
"""Explanation method name -> :class:`kdlens.explain.Explainer` subclass. Each built-in method's
module is imported when that method is first looked up (captum, zennit and scikit-image load
only with the methods that use them)."""

METRICS: Registry[Any] = Registry("explanation metric", group="kdlens.metrics", modules=("kdlens.metrics",))
"""Explanation metric name -> :class:`kdlens.metrics.ExplanationMetric` subclass."""
