"""Any timm model by name: ``timm:<name>`` (e.g. ``timm:resnet50.a1_in1k``, ``timm:vit_small_patch16_224``).

The names are not registered one by one: the model registry resolves ``timm:`` names on first use
(and caches the spec) by asking timm whether it knows the name. The spec's facts come from one
build of the model on the meta device (no memory, no weights): its stages are timm's
``feature_info`` modules, its classifier ``pretrained_cfg["classifier"]``, and its default
explained layer the module whose output ``forward_features`` returns (for vision transformers,
whose outputs are token sequences, the first norm of the last block, as pytorch-grad-cam advises).

Models are built by ``timm.create_model``: timm replaces the head for another ``num_classes`` and
adapts the input convolution for another ``in_channels``. ``weights="pretrained"`` loads timm's
published weights through timm (its Hugging Face hub cache; downloaded when online), or, with
``weights_file``, from a local file (a state_dict in timm's naming, ``.pth``/``.bin`` read with
``weights_only=True`` or ``.safetensors``).

timm is imported only inside these functions, so importing ``kdlens.models`` stays fast and timm
stays optional (``pip install 'kdlens[timm]'``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdlens.models import canonizers
from kdlens.models.base import MODELS, ModelSpec, WeightsError
from kdlens.registry import Resolver

PREFIX = "timm:"
PRETRAINED = "pretrained"
_INSTALL_HINT = "timm is not installed: pip install 'kdlens[timm]' (or pip install timm)"


def _timm() -> Any | None:
    try:
        import timm
    except ImportError:
        return None
    return timm


def _candidates() -> list[str]:
    timm = _timm()
    if timm is None:
        return []
    return sorted(set(timm.list_models()) | set(timm.list_models(pretrained=True)))


def _known(timm: Any, arch: str) -> bool:
    if not timm.is_model(arch):
        return False
    if "." in arch:  # a pretrained tag: timm.is_model checks the architecture only
        from timm.models import get_pretrained_cfg

        try:
            get_pretrained_cfg(arch)
        except RuntimeError:  # "Invalid pretrained tag"
            return False
    return True


def timm_spec(arch: str) -> ModelSpec | None:
    """The spec of timm model ``arch`` (without the ``timm:`` prefix), or None if timm does not
    know it (or is not installed)."""
    timm = _timm()
    if timm is None or not _known(timm, arch):
        return None
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False)
    stages = _stages(model)
    classifier = model.pretrained_cfg.get("classifier") or ""
    if isinstance(classifier, (tuple, list)):  # distilled ViTs: ("head", "head_dist")
        classifier = classifier[0]
    if not classifier or not _has_module(model, classifier):
        classifier = next((path for path, module in model.named_modules() if module is model.get_classifier()), "")
    return ModelSpec(
        name=PREFIX + arch,
        build=partial(build_timm, arch),
        family="timm",
        stages=stages,
        classifier=classifier,
        weights=lambda: [PRETRAINED],
        explain_layer=_explain_layer(model, stages),
        lrp_canonizers=_lrp_canonizers(model),
    )


def _lrp_canonizers(model: nn.Module) -> Callable[[nn.Module], list] | None:
    """ResNets: their BN merges and residual sums; models with attention: refused (zennit has no
    rules for it); others: the default (None)."""
    if canonizers.timm_class(model) == ("resnet", "ResNet"):
        return canonizers.timm_resnet
    if any(type(m).__name__.endswith("Attention") for m in model.modules()):
        return canonizers.timm_attention
    return None


def _has_module(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True


def _stages(model: nn.Module) -> tuple[str, ...]:
    info = getattr(model, "feature_info", None) or []
    paths = [entry["module"] for entry in info if isinstance(entry, dict) and entry.get("module")]
    return tuple(path for path in paths if _has_module(model, path))


def _explain_layer(model: nn.Module, stages: tuple[str, ...]) -> str | None:
    """Where CAMs look by default: the module whose output ``forward_features`` returns (the map
    that is pooled into the classifier), preferring the last stage when it is that module; for
    token outputs (B, N, C) the first norm of the last block. Found by one forward on the meta
    device; where that fails, the last stage."""
    fallback = stages[-1] if stages else None
    finished: list[tuple[str, nn.Module, object]] = []
    handles = [
        module.register_forward_hook(lambda m, i, o, path=path: finished.append((path, m, o)))
        for path, module in model.named_modules()
        if path
    ]
    size = tuple(model.pretrained_cfg.get("input_size") or (3, 224, 224))
    try:
        with torch.no_grad():
            features = model.forward_features(torch.empty(1, *size, device="meta"))
    except Exception:  # some models cannot run on the meta device (data-dependent shapes, ...)
        return fallback
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(features, torch.Tensor):
        return fallback
    if features.ndim == 3:  # token sequence: the last block's output tokens get no gradient from a class-token head
        for path in (f"{fallback}.norm1", fallback):
            if path and _has_module(model, path):
                return path
        return fallback
    producers = [path for path, module, output in finished if output is features and not isinstance(module, nn.Identity)]
    if fallback in producers or not producers:
        return fallback
    return producers[-1]


def build_timm(
    arch: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    weights: str | None = None,
    weights_file: str | Path | None = None,
) -> nn.Module:
    """``timm.create_model(arch, ...)`` with in-place activations off and ``model.pretrained_cfg``
    completed (mean, std, and the weights' class names where known)."""
    timm = _timm()
    if timm is None:
        raise WeightsError(_INSTALL_HINT)
    if weights not in (None, PRETRAINED):
        raise WeightsError(f"timm models take weights='{PRETRAINED}' or none, got {weights!r}")
    if weights is None:
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_channels)
        weights_classes = None
    else:
        model, weights_classes = _pretrained(timm, arch, num_classes, in_channels, weights_file)
    # In-place activations would overwrite the outputs of the modules before them, which
    # FeatureTaps may be holding (e.g. a BatchNorm tapped for pre-activation features).
    for module in model.modules():
        if isinstance(getattr(module, "inplace", None), bool):
            module.inplace = False
    model.pretrained_cfg = _completed_cfg(timm, model, arch, weights, weights_file, weights_classes)
    spec = MODELS[PREFIX + arch]
    if spec.explain_layer is not None:
        model.kdlens_explain_layer = spec.explain_layer
    return model


def _pretrained(
    timm: Any, arch: str, num_classes: int, in_channels: int, weights_file: str | Path | None
) -> tuple[nn.Module, int | None]:
    """The model with timm's published weights, or those of ``weights_file``; and the number of
    classes the weights predict."""
    from timm.models import get_pretrained_cfg

    published = get_pretrained_cfg(arch)
    overlay: dict[str, Any] = {}
    if weights_file is not None:
        state = _read_weights_file(timm, weights_file)
        overlay["state_dict"] = state
        classes = _classes_in(state, published.classifier if published else None)
        if classes is not None:  # keep a fine-tuned head of the file (timm drops heads of another size)
            overlay["num_classes"] = classes
    elif published is None or not (published.hf_hub_id or published.url or published.file):
        raise WeightsError(
            f"timm publishes no weights for '{arch}': give a local file with model.weights_file, "
            "or pick a tagged name with weights (timm.list_models(pretrained=True))"
        )
    else:
        classes = published.num_classes
    try:
        model = timm.create_model(
            arch, pretrained=True, num_classes=num_classes, in_chans=in_channels, pretrained_cfg_overlay=overlay or None
        )
    except Exception as err:  # hub/network errors, missing cache, wrong keys: one message with the fix
        first_line = str(err).splitlines()[0] if str(err) else ""
        source = f"file '{weights_file}'" if weights_file is not None else "timm's hub (or its cache)"
        raise WeightsError(
            f"could not load pretrained weights for 'timm:{arch}' from {source} ({type(err).__name__}: {first_line}). "
            "Offline, download the weights on a machine that is online and set model.weights_file to the file"
        ) from None
    return model, classes


def _read_weights_file(timm: Any, path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights_file '{path}' does not exist")
    from timm.models import load_state_dict

    try:
        return load_state_dict(str(path), use_ema=False)  # .safetensors, or torch.load(weights_only=True)
    except Exception as err:
        raise WeightsError(
            f"weights_file '{path}' could not be read as a state_dict ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''})"
        ) from None


def _classes_in(state: dict[str, torch.Tensor], classifier: Any) -> int | None:
    heads = classifier if isinstance(classifier, (tuple, list)) else [classifier]
    for head in heads:
        weight = state.get(f"{head}.weight") if head else None
        if isinstance(weight, torch.Tensor) and weight.ndim >= 1:
            return int(weight.shape[0])
    return None


def _completed_cfg(
    timm: Any, model: nn.Module, arch: str, weights: str | None, weights_file: str | Path | None, classes: int | None
) -> dict[str, Any]:
    cfg = {key: value for key, value in dict(getattr(model, "pretrained_cfg", None) or {}).items() if key != "state_dict"}
    if "mean" not in cfg or "std" not in cfg:
        data = timm.data.resolve_data_config({}, model=model)
        cfg.setdefault("mean", data["mean"])
        cfg.setdefault("std", data["std"])
    cfg["mean"], cfg["std"] = [float(v) for v in cfg["mean"]], [float(v) for v in cfg["std"]]
    if weights is not None:
        cfg["weights"] = f"{PREFIX}{arch}"
        if weights_file is not None:
            cfg["file"] = str(weights_file)
        names = _class_names(timm, cfg, classes)
        if names is not None:
            cfg["class_names"] = names
    return cfg


def _class_names(timm: Any, cfg: dict[str, Any], classes: int | None) -> list[str] | None:
    """The label names of weights predicting ``classes`` classes: the config's own, else an
    ImageNet subset told apart by its number of classes (timm's own guess)."""
    if classes is None:
        return None
    names = cfg.get("label_names")
    if names is not None and len(names) == classes:
        return [str(name) for name in names]
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset
    except ImportError:  # timm < 0.9.8
        return None
    subset = infer_imagenet_subset({"num_classes": classes})
    if subset is None:
        return None
    return [str(name) for name in ImageNetInfo(subset).label_descriptions()]


MODELS.add_resolver(
    Resolver(
        prefix=PREFIX,
        resolve=timm_spec,
        candidates=_candidates,
        describe=(
            f"'{PREFIX}<name>' for any timm model (timm.list_models())"
            if importlib.util.find_spec("timm") is not None
            else f"'{PREFIX}<name>' for any timm model once timm is installed (pip install 'kdlens[timm]')"
        ),
    )
)
