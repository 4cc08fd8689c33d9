"""A disk cache of explanation maps, shared by training (frozen teacher explanations) and
evaluation, so that a teacher's maps of a split are computed once.

Entries are keyed by what determines the maps: the model (its checkpoint file's content hash,
or a hash of its state), the dataset's identity, the split, the method and its options. Typical
use::

    cache = ExplanationCache()
    maps = cache.get_or_compute(
        {"model": file_fingerprint(checkpoint), "data": data_fingerprint(data_config),
         "split": "train", "method": "gradcam", "options": {"target": "pred"}},
        lambda: explain_dataset(teacher, bundle.train, "gradcam", target="pred"),
    )
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdlens.data import DataConfigBase
from kdlens.io import atomic_write

_LOADER_ONLY_FIELDS = {"batch_size", "eval_batch_size", "num_workers"}


def default_cache_dir() -> Path:
    """``$KDLENS_CACHE`` when set, else ``~/.cache/kdlens/explanations``."""
    env = os.environ.get("KDLENS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "kdlens" / "explanations"


class ExplanationCache:
    """Maps stored as ``<root>/<sha256 of the key>.pt`` (a dict of the maps and the key itself),
    written atomically and read with ``weights_only=True``.

    ``dtype`` is the storage precision: float16 (default) halves the disk size and keeps ~3
    significant digits (relative error ≤ 2⁻¹¹), ample for maps used as targets or compared by
    rank/cosine; it flushes values below ~6·10⁻⁸ to zero, so store raw gradient attributions of
    tiny magnitude as float32. What ``get_or_compute`` returns is always the stored (rounded) maps
    as float32, so a first run and a cached run see identical values."""

    def __init__(self, root: str | Path | None = None, dtype: torch.dtype = torch.float16) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.dtype = dtype

    def path(self, key_parts: Mapping[str, Any]) -> Path:
        return self.root / f"{hashlib.sha256(canonical_key(key_parts).encode()).hexdigest()}.pt"

    def get_or_compute(self, key_parts: Mapping[str, Any], compute: Callable[[], Tensor]) -> Tensor:
        """The cached maps for ``key_parts``, or ``compute()``'s, stored first. An entry that cannot
        be read (truncated, corrupt, another key) is recomputed and replaced."""
        key = canonical_key(key_parts)
        path = self.path(key_parts)
        stored = _read_entry(path)
        if stored is not None and stored.get("key") == key:
            return stored["maps"].float()
        maps = compute().detach().to("cpu", self.dtype).contiguous()
        atomic_write(path, lambda f: torch.save({"key": key, "maps": maps}, f))
        return maps.float()


def _read_entry(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a damaged file makes torch.load raise nearly anything (IndexError, EOFError, ...)
        return None
    return entry if isinstance(entry, dict) else None


def canonical_key(key_parts: Mapping[str, Any]) -> str:
    """Key parts as canonical JSON (sorted keys); tensors enter by the hash of their contents."""
    return json.dumps(key_parts, sort_keys=True, separators=(",", ":"), default=_json_value)


def _json_value(value: Any) -> Any:
    if isinstance(value, Tensor):
        return {"tensor_sha256": _tensor_digest(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"explanation cache keys hold JSON values, tensors and paths, not {type(value).__name__}")


def _tensor_digest(tensor: Tensor) -> str:
    tensor = tensor.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def file_fingerprint(path: str | Path) -> str:
    """sha256 of a file's content (e.g. a checkpoint), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def model_fingerprint(model: nn.Module) -> str:
    """sha256 of a model's class and state (parameter and buffer names, dtypes, shapes, values)."""
    digest = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(_tensor_digest(tensor).encode())
    return f"sha256:{digest.hexdigest()}"


def data_fingerprint(config: DataConfigBase) -> str:
    """A dataset's identity: its config without the options that only affect loading."""
    return json.dumps(config.model_dump(mode="json", exclude=_LOADER_ONLY_FIELDS), sort_keys=True)
