"""``kdlens import``: checkpoints of other codebases (mdistiller/CRD teachers, torchvision-style
state_dicts, Lightning checkpoints) converted into kdlens checkpoints of a registered architecture.

Files are read only through :func:`load_checkpoint_file` (``weights_only=True``). Foreign module
names are renamed with the architecture's ``ModelSpec.foreign_keys`` rules and the tensors must
then fit the kdlens model exactly, so that the imported model computes the source model's logits.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdlens.registry import unknown_name_message
from kdlens.runs.checkpoints import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    CheckpointInfo,
    check_fits,
    checkpoint_info,
    is_kdlens_checkpoint,
    load_checkpoint_file,
    load_model,
    load_state_dict_strictly,
    model_from_checkpoint,
    pretrained_source,
    save_model_checkpoint,
)

FORMATS = ("kdlens", "mdistiller", "state_dict", "lightning")
"""What :func:`import_checkpoint` reads; ``auto`` tries them in this order."""

MDISTILLER_ARCHITECTURES = {"MobileNetV2": "mobilenetv2", "ShuffleV1": "shufflenetv1", "ShuffleV2": "shufflenetv2"}
"""mdistiller/CRD model names that differ from kdlens's (the others, e.g. resnet56, vgg13,
wrn_40_2, ResNet50, are the same)."""

CACHE_SUFFIX = ".kdlens.ckpt"
_DATA_PARALLEL_PREFIX = "module."
_DATA_FIX = (
    "Pick the dataset the weights were trained on (--data, e.g. cifar100 for the mdistiller/CRD CIFAR teachers) "
    "or its options (--set)"
)
_FORMAT_HELP = (
    "kdlens imports a kdlens checkpoint, an mdistiller/CRD checkpoint ({'model': state_dict, 'epoch': ...}), "
    "a plain state_dict (name -> tensor) or a Lightning checkpoint ({'state_dict': ...})"
)


def import_checkpoint(
    source: str | Path,
    model_name: str,
    info: Any,
    fmt: str = "auto",
    *,
    config: dict[str, Any] | None = None,
) -> tuple[nn.Module, CheckpointInfo]:
    """The model (in eval mode) that the checkpoint ``source`` holds, as kdlens architecture
    ``model_name``, and its checkpoint facts (``checkpoint_info``, with ``source``: file, format,
    sha256, size, mtime_ns).

    ``info`` describes the dataset the model is used on (a ``DatasetInfo``, ``DataBundle`` or a
    mapping with num_classes, in_channels, image_size, class_names, mean, std); the file must
    predict its number of classes. ``fmt`` is ``auto`` or one of :data:`FORMATS`. ``config`` is
    stored as the checkpoint's config (e.g. ``{"data": ...}``). Every problem is a
    :class:`CheckpointError` that says what to do."""
    model, record, _ = _import(Path(source), model_name, info, fmt, config)
    return model, record


def _import(
    path: Path, model_name: str, info: Any, fmt: str, config: dict[str, Any] | None
) -> tuple[nn.Module, CheckpointInfo, str]:
    """:func:`import_checkpoint`, and the format it read."""
    from kdlens.models import MODELS

    if fmt != "auto" and fmt not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format '{fmt}': use auto, {', '.join(FORMATS)}")
    if model_name not in MODELS:
        raise CheckpointError(unknown_name_message("model", model_name, MODELS.names()))
    facts = dataset_facts(info)
    checkpoint = load_checkpoint_file(path)
    detected = detect_format(checkpoint, path) if fmt == "auto" else _check_format(checkpoint, fmt, path)
    source_record = {"file": str(path.resolve()), "format": detected, **file_identity(path)}

    if detected == "kdlens":
        return (*_from_kdlens(checkpoint, path, model_name, facts, source_record), detected)

    state, details = _foreign_state(checkpoint, detected, model_name, facts, path)
    source_record.update(details)
    model = _load_into_model(state, model_name, facts, path)
    record = checkpoint_info(model_name, **facts, config=config, source=source_record)
    return model.eval(), record, detected


def import_checkpoint_file(
    source: str | Path,
    dest: str | Path,
    model_name: str,
    info: Any,
    fmt: str = "auto",
    *,
    config: dict[str, Any] | None = None,
) -> CheckpointInfo:
    """:func:`import_checkpoint`, written to ``dest`` as a kdlens checkpoint (weights only); returns
    its facts."""
    if Path(dest).resolve() == Path(source).resolve():
        raise CheckpointError(f"--out '{dest}' is the source file itself: write the kdlens checkpoint elsewhere")
    model, record = import_checkpoint(source, model_name, info, fmt, config=config)
    save_model_checkpoint(dest, model, record)
    return record


def import_published(
    model_name: str, weights: str, info: Any, *, config: dict[str, Any] | None = None
) -> tuple[nn.Module, CheckpointInfo]:
    """A model with published ``weights`` by name (e.g. torchvision's ``IMAGENET1K_V2``) and its
    checkpoint facts, for a dataset whose classes the weights predict as they are (a teacher to
    evaluate or distil from; to train on other classes, use ``model.weights`` in a config)."""
    from kdlens.models import create_model

    facts = dataset_facts(info)
    model = create_model(model_name, facts["num_classes"], facts["in_channels"], weights=weights)
    published = model.pretrained_cfg.get("class_names")
    if published is not None:
        check_fits({"num_classes": len(published)}, facts, f"weights {weights} of '{model_name}'", _DATA_FIX)
    return model.eval(), checkpoint_info(model_name, **facts, config=config, source=pretrained_source(model, weights))


def import_or_load(
    path: str | Path, model_name: str, info: Any, fmt: str = "auto"
) -> tuple[nn.Module, CheckpointInfo]:
    """Like ``load_model(path)``, for any checkpoint :func:`import_checkpoint` reads (e.g. a
    config's ``teacher.checkpoint`` naming a published mdistiller teacher). A kdlens checkpoint
    is loaded as it is; another file is converted on first use and the kdlens checkpoint cached
    beside it as ``<file>.kdlens.ckpt`` (or, where that folder is read-only, under
    ``$KDLENS_CACHE/imported`` or ``~/.cache/kdlens/imported``). The cache is reused while the
    source keeps its size and modification time and the architecture and dataset facts are the
    same; otherwise the source is converted again."""
    path = Path(path)
    if not path.is_file():
        load_checkpoint_file(path)  # raises the usual "does not exist" error
    facts = dataset_facts(info)
    identity = file_identity(path, with_hash=False)
    for cached in cache_paths(path):
        hit = _valid_cache(cached, path, model_name, facts, identity)
        if hit is not None:
            return hit
    model, record, detected = _import(path, model_name, info, fmt, None)
    if detected == "kdlens":
        return model, record  # nothing to convert
    for cached in cache_paths(path):
        try:
            save_model_checkpoint(cached, model, record)
            break
        except OSError:
            continue  # read-only folder: try the user cache
    return model, record


def cache_paths(source: str | Path) -> list[Path]:
    """Where :func:`import_or_load` caches the conversion of ``source``, in order of preference:
    beside it, then in the user's cache folder."""
    source = Path(source).resolve()
    env = os.environ.get("KDLENS_CACHE")
    root = Path(env) / "imported" if env else Path.home() / ".cache" / "kdlens" / "imported"
    key = hashlib.sha256(str(source).encode()).hexdigest()[:16]
    return [source.with_name(source.name + CACHE_SUFFIX), root / f"{key}-{source.name}{CACHE_SUFFIX}"]


def infer_architecture(source: str | Path) -> str | None:
    """The kdlens architecture an mdistiller/CRD teacher file names by its folder,
    ``<arch>_vanilla/ckpt_epoch_240.pth`` (``ResNet50_vanilla`` -> ``ResNet50``,
    ``MobileNetV2_vanilla`` -> ``mobilenetv2``); None when the folder is not named so."""
    from kdlens.models import MODELS

    match = re.fullmatch(r"(.+)_vanilla", Path(source).parent.name)
    if match is None:
        return None
    name = MDISTILLER_ARCHITECTURES.get(match.group(1), match.group(1))
    if name not in MODELS:
        raise CheckpointError(
            f"the folder '{Path(source).parent.name}' names architecture '{match.group(1)}', which kdlens "
            f"does not have: name the architecture with --model ({unknown_name_message('model', name, MODELS.names())})"
        )
    return name


def detect_format(checkpoint: Any, path: str | Path) -> str:
    """The first of :data:`FORMATS` whose layout ``checkpoint`` has."""
    for fmt in FORMATS:
        if _has_layout(checkpoint, fmt):
            return fmt
    raise CheckpointError(f"'{path}' has an unknown checkpoint format ({_describe(checkpoint)}): {_FORMAT_HELP}")


def dataset_facts(info: Any) -> dict[str, Any]:
    """The keyword arguments of ``checkpoint_info`` from a DatasetInfo, DataBundle or mapping."""
    keys = ("num_classes", "in_channels", "image_size", "class_names", "mean", "std")
    get = info.get if isinstance(info, Mapping) else lambda key: getattr(info, key)
    facts = {key: get(key) for key in keys}
    return {
        "num_classes": int(facts["num_classes"]),
        "in_channels": int(facts["in_channels"]),
        "image_size": list(facts["image_size"]),
        "class_names": list(facts["class_names"]),
        "mean": [float(x) for x in facts["mean"]],
        "std": [float(x) for x in facts["std"]],
    }


def file_identity(path: str | Path, *, with_hash: bool = True) -> dict[str, Any]:
    """Size and modification time (what the cache compares) and, with ``with_hash``, the sha256
    of the file's bytes (what identifies the weights)."""
    stat = Path(path).stat()
    identity: dict[str, Any] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if with_hash:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        identity = {"sha256": digest.hexdigest(), **identity}
    return identity


# ---------------------------------------------------------------- formats


def _is_tensor_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _has_layout(checkpoint: Any, fmt: str) -> bool:
    if fmt == "kdlens":
        return is_kdlens_checkpoint(checkpoint)
    if fmt == "mdistiller":
        return isinstance(checkpoint, Mapping) and _is_tensor_dict(checkpoint.get("model"))
    if fmt == "state_dict":
        return _is_tensor_dict(checkpoint)
    return isinstance(checkpoint, Mapping) and _is_tensor_dict(checkpoint.get("state_dict"))


def _check_format(checkpoint: Any, fmt: str, path: Path) -> str:
    if not _has_layout(checkpoint, fmt):
        expected = {
            "kdlens": "a dict with a 'kdlens' section",
            "mdistiller": "a dict whose 'model' entry is a state_dict",
            "state_dict": "a dict of tensors",
            "lightning": "a dict whose 'state_dict' entry maps names to tensors",
        }[fmt]
        try:
            hint = f"; its layout is that of a '{detect_format(checkpoint, path)}' checkpoint: use --format auto"
        except CheckpointError:
            hint = f". {_FORMAT_HELP}"
        raise CheckpointError(f"'{path}' is not a {fmt} checkpoint ({expected}); it holds {_describe(checkpoint)}{hint}")
    return fmt


def _describe(obj: Any) -> str:
    if isinstance(obj, torch.Tensor):
        return f"a single tensor of shape {tuple(obj.shape)}, not a checkpoint"
    if isinstance(obj, Mapping):
        keys = list(obj)[:6]
        return f"a dict with keys {', '.join(map(repr, keys))}{' …' if len(obj) > 6 else ''}" if keys else "an empty dict"
    return f"a {type(obj).__name__}, not a checkpoint"


def _from_kdlens(
    checkpoint: Mapping[str, Any], path: Path, model_name: str, facts: dict[str, Any], source: dict[str, Any]
) -> tuple[nn.Module, CheckpointInfo]:
    stored = checkpoint["kdlens"]
    if stored.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"'{path}' is a kdlens checkpoint of format {stored.get('format')!r}; this kdlens reads format "
            f"{CHECKPOINT_FORMAT}: convert it with the kdlens version that wrote it"
        )
    stored = CheckpointInfo.from_dict(stored, path)
    fix = f"It is a kdlens checkpoint: use --model {stored.model}" if stored.model != model_name else _DATA_FIX
    check_fits(stored, facts, f"'{path}'", fix, architecture=model_name)
    model, stored = model_from_checkpoint(checkpoint, path)
    if stored.source:  # imported or pretrained weights: keep where they came from
        source = {**source, "origin": stored.source}
    return model.eval(), stored.replace(source=source)


def _foreign_state(
    checkpoint: Mapping[str, Any], fmt: str, model_name: str, facts: dict[str, Any], path: Path
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors of a foreign checkpoint renamed to ``model_name``'s keys, and what was done."""
    from kdlens.models import MODELS, create_model, get_model_spec

    spec = get_model_spec(model_name)
    if fmt == "mdistiller":
        if "mdistiller" not in spec.foreign_keys:
            known = [name for name in MODELS.names() if "mdistiller" in get_model_spec(name).foreign_keys]
            raise CheckpointError(
                f"'{path}' is an mdistiller/CRD checkpoint, but kdlens knows no mdistiller layout of '{model_name}': "
                f"name the architecture it holds (one of {', '.join(known)})"
            )
        layouts = {"mdistiller": spec.foreign_keys["mdistiller"]}
        candidates = {"": _strip_data_parallel(checkpoint["model"])}
    else:
        # torchvision's names (with its own renames, if any) or kdlens's; then any foreign layout.
        layouts = {"kdlens": spec.foreign_keys.get("torchvision", ()), **spec.foreign_keys}
        tensors = checkpoint if fmt == "state_dict" else checkpoint["state_dict"]
        prefixes = [""] if fmt == "state_dict" else _prefixes(tensors)
        candidates = {p: _strip_data_parallel({k[len(p):]: v for k, v in tensors.items() if k.startswith(p)})
                      for p in prefixes}

    expected = set(create_model(model_name, facts["num_classes"], facts["in_channels"]).state_dict())
    best: tuple[int, dict[str, torch.Tensor], dict[str, Any]] | None = None
    for prefix, tensors in candidates.items():
        for layout, rules in layouts.items():
            renamed = rename_keys(tensors, rules)
            details = {"layout": layout, **({"prefix": prefix} if fmt == "lightning" else {})}
            if set(renamed) == expected:
                return renamed, details
            overlap = len(expected & set(renamed)) - len(set(renamed) - expected)
            if best is None or overlap > best[0]:
                best = (overlap, renamed, details)
    assert best is not None
    return best[1], best[2]  # does not fit: loading it reports what is missing and unexpected


def _prefixes(tensors: Mapping[str, Any]) -> list[str]:
    """Candidate module prefixes of a Lightning state_dict, most common first: the first one or
    two dotted components of its keys (``model.``, ``student.model.``), and none."""
    counts: dict[str, int] = {}
    for key in tensors:
        parts = key.split(".")
        for depth in (1, 2):
            if len(parts) > depth:
                prefix = ".".join(parts[:depth]) + "."
                counts[prefix] = counts.get(prefix, 0) + 1
    preferred = ("model.", "net.", "student.", "teacher.")
    ordered = sorted(counts, key=lambda p: (preferred.index(p) if p in preferred else len(preferred), -counts[p], p))
    return [*ordered, ""]


def _strip_data_parallel(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if tensors and all(k.startswith(_DATA_PARALLEL_PREFIX) for k in tensors):
        return {k[len(_DATA_PARALLEL_PREFIX):]: v for k, v in tensors.items()}
    return dict(tensors)


def rename_keys(tensors: Mapping[str, torch.Tensor], rules: tuple[tuple[str, str], ...]) -> dict[str, torch.Tensor]:
    """``tensors`` with each key renamed by the first ``(regex, replacement)`` rule that matches it."""
    compiled = [(re.compile(pattern), replacement) for pattern, replacement in rules]
    renamed: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        for pattern, replacement in compiled:
            if pattern.search(key):
                key = pattern.sub(replacement, key)
                break
        renamed[key] = value
    return renamed


def _load_into_model(state: dict[str, torch.Tensor], model_name: str, facts: dict[str, Any], path: Path) -> nn.Module:
    """The architecture with ``state`` loaded; built for the number of classes the file predicts,
    so that a wrong architecture and a wrong dataset give different errors."""
    from kdlens.models import create_model, get_model_spec

    classifier = state.get(f"{get_model_spec(model_name).classifier}.weight")
    predicts = int(classifier.shape[0]) if isinstance(classifier, torch.Tensor) and classifier.dim() >= 2 else facts["num_classes"]
    model = create_model(model_name, predicts, facts["in_channels"])
    load_state_dict_strictly(model, state, model_name, path)
    check_fits({"num_classes": predicts}, facts, f"'{path}'", _DATA_FIX)
    return model


# ---------------------------------------------------------------- cache


def _valid_cache(
    cached: Path, source: Path, model_name: str, facts: dict[str, Any], identity: dict[str, Any]
) -> tuple[nn.Module, CheckpointInfo] | None:
    if not cached.is_file():
        return None
    try:
        model, record = load_model(cached)
    except CheckpointError:
        return None  # a torn or foreign file: convert again
    recorded = record.source or {}
    same_source = recorded.get("file") == str(source.resolve()) and all(recorded.get(k) == v for k, v in identity.items())
    same_target = record.model == model_name and all(record.get(k) == v for k, v in facts.items())
    return (model, record) if same_source and same_target else None
