"""Typed experiment config: one YAML file per experiment plus ``key.sub=value`` overrides.

Every section is a pydantic model with ``extra="forbid"``. Options that only make sense for one
choice (a dataset's options, a schedule's warm-up, a loss term's temperature) live in that choice's
own model, selected by its ``name``, so an option that nothing reads is an unknown key — an error
that lists the valid keys.

The ``data`` section and each ``losses[i]`` are validated when a config is validated, against the
config model their registry holds for their ``name`` at that moment (see :mod:`kdlens.registry`):
a dataset or loss term registered by a user's module or plugin validates like kdlens's own.
Reading a config imports only pydantic and yaml; the registries import the packages that fill
them when a name is first looked up.
"""

from __future__ import annotations

import os
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    SerializeAsAny,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from kdlens.engine import EngineBackend
from kdlens.errors import ConfigError
from kdlens.registry import DATASETS, LOSSES, MODELS, Registry, unknown_name_message

__all__ = [
    "ConfigError", "DataConfig", "ExperimentConfig", "LossConfig", "ModelConfig", "RecipeConfig", "Registered",
    "SlurmConfig", "TrainerConfig", "apply_override", "dump_config", "load_config", "read_raw_config", "registered_section",
    "validate_config", "validate_data_config", "validate_section",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Section):
    name: str
    checkpoint: str | None = None
    """Weights to start from: a kdlens checkpoint, or any file ``kdlens import`` reads (converted
    on first use and cached beside it)."""
    weights: str | None = None
    """Published weights by name: a torchvision weights name (``IMAGENET1K_V2``, ``DEFAULT``) or
    ``pretrained`` for timm models. With another number of classes than the weights predict, the
    classifier is replaced (fine-tuning)."""
    weights_file: str | None = None
    """With ``weights: pretrained`` on a ``timm:`` model: a local file holding those weights
    (a state_dict in timm's naming, .pth or .safetensors), loaded without network."""

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str) -> str:
        if name not in MODELS:
            raise ValueError(MODELS.unknown_message(name))
        return name

    @model_validator(mode="after")
    def _weights_file_for_timm(self) -> ModelConfig:
        if self.weights_file is not None:
            if MODELS[self.name].family != "timm" or self.weights != "pretrained":
                raise ValueError(
                    "'weights_file' goes with 'weights: pretrained' on a timm model (name: timm:<name>); "
                    "start other models from a file with 'checkpoint'"
                )
        return self

    @model_validator(mode="after")
    def _one_source_of_weights(self) -> ModelConfig:
        if self.checkpoint is not None and self.weights is not None:
            raise ValueError("set either 'checkpoint' or 'weights', not both: they are two sources of the same weights")
        if self.weights is not None:
            names = MODELS[self.name].weights
            if names is None:
                raise ValueError(
                    f"model '{self.name}' has no published weights by name: use 'checkpoint' "
                    "(`kdlens import` converts other codebases' files)"
                )
            if self.weights not in names():
                raise ValueError(unknown_name_message(f"weights for '{self.name}'", self.weights, names()))
        return self


class SGDConfig(_Section):
    name: Literal["sgd"] = "sgd"
    lr: float = Field(0.05, gt=0, allow_inf_nan=False)
    momentum: float = Field(0.9, ge=0, allow_inf_nan=False)
    weight_decay: float = Field(5e-4, ge=0, allow_inf_nan=False)
    nesterov: bool = False


class AdamConfig(_Section):
    name: Literal["adam", "adamw", "radam"] = "adam"
    lr: float = Field(1e-3, gt=0, allow_inf_nan=False)
    weight_decay: float = Field(0.0, ge=0, allow_inf_nan=False)


class StepSchedule(_Section):
    """Multiply the learning rate by ``gamma`` at each milestone epoch."""

    name: Literal["step"] = "step"
    milestones: list[int] = [150, 180, 210]
    gamma: float = 0.1


class CosineSchedule(_Section):
    """Linear warm-up, then cosine decay to zero at the last epoch."""

    name: Literal["cosine"] = "cosine"
    warmup_epochs: int = Field(5, ge=0)


class ConstantSchedule(_Section):
    name: Literal["constant"] = "constant"


Optimizer = Annotated[Union[SGDConfig, AdamConfig], Field(discriminator="name")]
Schedule = Annotated[Union[StepSchedule, CosineSchedule, ConstantSchedule], Field(discriminator="name")]


class RecipeConfig(_Section):
    epochs: int = Field(240, ge=1)
    optimizer: Optimizer = SGDConfig()
    schedule: Schedule = StepSchedule()
    no_decay_norm_bias: bool = False
    """Exclude normalisation and bias parameters from weight decay."""
    grad_clip_norm: float | None = Field(None, gt=0)
    backbone_lr_scale: float | None = Field(None, gt=0)
    """Fine-tuning: when set, every parameter outside the model's classifier trains at ``lr × this``
    (e.g. 0.1 for a pretrained backbone under a new head); loss-term connectors keep ``lr``."""
    lr_reference_batch: int | None = Field(None, gt=0)
    """Linear scaling rule: when set, the learning rate used is ``lr × global batch / this``, with
    global batch = data.batch_size × devices × nodes. When unset, ``lr`` is used as written,
    whatever the number of processes."""


class TrainerConfig(_Section):
    accelerator: str = "auto"
    devices: int | str = 1
    """Processes per node; ``data.batch_size`` is per process."""
    num_nodes: int = 1
    strategy: str = "auto"
    """Lightning strategy, e.g. ``ddp`` (one process per device, torchrun/SLURM aware)."""
    sync_batchnorm: bool = False
    precision: str = "32-true"
    """Lightning precision: ``32-true``, ``bf16-mixed``, ``16-mixed`` (GPU)."""
    channels_last: bool = False
    """Models and input batches in channels-last memory format (faster convolutions on GPUs)."""
    compile: bool = False
    """``torch.compile`` the student and teacher forwards; only with logit-based loss terms
    (feature taps are forward hooks, which compiled forwards do not run)."""
    teacher_engine: EngineBackend = "auto"
    """How the frozen teacher's forward runs where no loss term reads its features or gradients
    (:mod:`kdlens.engine`): ``auto`` measures eager, BN-folded channels-last, jit and onnxruntime
    on the first batch and keeps the fastest that reproduces the logits; ``eager`` turns it off."""
    deterministic: bool = True
    progress_bar: bool = True
    limit_train_batches: int | float = 1.0
    limit_val_batches: int | float = 1.0
    log_every_n_steps: int = 20
    loggers: list[Literal["csv", "tensorboard", "wandb", "mlflow"]] = ["csv", "tensorboard"]
    """Where metrics are logged, under ``<run>/logs/``: ``wandb`` and ``mlflow`` are offline by default
    (W&B offline mode, MLflow's local file store); ``csv`` is what ``kdlens runs`` and the report read."""

    @field_validator("loggers")
    @classmethod
    def _csv_logger_kept_and_trackers_installed(cls, loggers: list[str]) -> list[str]:
        if "csv" not in loggers or len(set(loggers)) != len(loggers):
            raise ValueError(
                f"trainer.loggers {loggers} must name each logger once and include csv (the learning curves "
                "`kdlens runs` and the report read), e.g. [csv, tensorboard, wandb]"
            )
        import importlib.util

        for logger in {"wandb", "mlflow"} & set(loggers):
            if importlib.util.find_spec(logger) is None:
                raise ValueError(f"trainer.loggers names {logger}, which is not installed: pip install 'kdlens[{logger}]'")
        return loggers

    @model_validator(mode="after")
    def _sync_batchnorm_needs_gpus(self) -> TrainerConfig:
        if self.sync_batchnorm:
            import torch

            if self.accelerator == "cpu" or not torch.cuda.is_available():
                raise ValueError(
                    "trainer.sync_batchnorm needs GPUs (torch's SyncBatchNorm is CUDA-only): set trainer.sync_batchnorm=false "
                    "on CPU"
                )
        return self


class SlurmConfig(_Section):
    """Defaults of the jobs ``kdlens sweep --launcher slurm`` submits (``--slurm key=value`` sets
    them per invocation). A job runs one process per device, with Lightning DDP across them: the
    GPUs and nodes follow ``trainer.devices`` and ``trainer.num_nodes`` unless given here."""

    partition: str | None = None
    time: str | int = "24:00:00"
    """Wall-clock limit: minutes, or ``[D-]HH:MM[:SS]``. A job that reaches it is requeued and
    resumes from last.ckpt."""
    gpus_per_node: int | None = Field(None, ge=0)
    nodes: int | None = Field(None, ge=1)
    cpus_per_task: int | None = Field(None, ge=1)
    mem: str | int | None = None
    """Memory per node: GB, or a number with a unit (``64G``, ``500M``)."""
    account: str | None = None
    qos: str | None = None
    requeues: int = Field(10, ge=0)
    """How many times a job that timed out or was pre-empted is requeued."""

    @field_validator("time")
    @classmethod
    def _time_is_a_duration(cls, time: str | int) -> str | int:
        slurm_minutes(time)
        return time

    @field_validator("mem")
    @classmethod
    def _mem_is_a_size(cls, mem: str | int | None) -> str | int | None:
        if mem is not None:
            slurm_gigabytes(mem)
        return mem


class _ConfigLoader(yaml.SafeLoader):
    """Safe YAML, except that ``24:00:00`` stays a string, as in YAML 1.2: YAML 1.1 reads it as the
    base-60 integer 86400, which turned a Slurm time of 24 hours into 86400 minutes."""


_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:int"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)


def load_yaml(text: str) -> Any:
    """A config's YAML (a file or an override's value), with :class:`_ConfigLoader`."""
    return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass


def slurm_minutes(time: str | int) -> int:
    """Whole minutes (rounded up) of a duration in Slurm's formats: ``90`` (minutes), ``MM:SS``,
    ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``."""
    days, dash, clock = str(time).strip().rpartition("-") if not isinstance(time, bool) else ("", "", "x")
    parts = clock.split(":")
    if not all(part.isdigit() for part in parts) or (dash and not days.isdigit()) or len(parts) > 3:
        raise ValueError(f"slurm.time {time!r} is not a duration: give minutes (e.g. 90) or [D-]HH:MM:SS (e.g. 24:00:00)")
    numbers = [int(part) for part in parts]
    if dash:  # D-HH[:MM[:SS]]
        hours, minutes, seconds = (numbers + [0, 0])[:3]
        hours += int(days) * 24
    elif len(numbers) == 3:  # HH:MM:SS
        hours, minutes, seconds = numbers
    else:  # MM or MM:SS
        hours, (minutes, seconds) = 0, (numbers + [0])[:2]
    return hours * 60 + minutes + (1 if seconds else 0)


def slurm_gigabytes(mem: str | int) -> float:
    """GB of a memory size: ``64``, ``"64G"``, ``"64GB"``, ``"500M"``, ``"1T"``."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([MGT]?)B?", str(mem).strip(), flags=re.IGNORECASE)
    if match is None or isinstance(mem, bool):
        raise ValueError(f"slurm.mem {mem!r} is not a memory size: give GB (e.g. 64) or a number with a unit (64G, 500M)")
    return float(match.group(1)) * {"M": 1 / 1024, "": 1, "G": 1, "T": 1024}[match.group(2).upper()]


def validate_section(registry: Registry, raw: Any) -> BaseModel:
    """``raw`` (a mapping with a ``name``) validated against the config model ``registry`` holds
    for that name now. Errors are pydantic's, located as in a discriminated union: under the name
    (``shapes.download``), or at ``name`` for an unknown name (with the close matches)."""
    if isinstance(raw, BaseModel):  # e.g. ExperimentConfig(data=ShapesConfig(), ...)
        name = getattr(raw, "name", None)
        config = registry.config(name) if isinstance(name, str) and name in registry else None
        if config is not None and isinstance(raw, config):
            return raw
        raw = raw.model_dump()
    if not isinstance(raw, dict):
        raise _errors([("model_type", (), raw, f"a {registry.kind} is a section with a 'name' key (e.g. {{name: ...}})")])
    name = raw.get("name")
    if name is None:
        raise _errors([("missing", ("name",), raw, f"required key is missing: the {registry.kind}")])
    if not isinstance(name, str) or name not in registry:
        raise _errors([("value_error", ("name",), name, f"Value error, {registry.unknown_message(str(name))}")])
    config = registry.config(name)
    if config is None:
        raise _errors([("value_error", ("name",), name, f"Value error, {registry.kind} '{name}' has no config section")])
    try:
        return config.model_validate(raw)
    except ValidationError as err:
        raise _errors([(e["type"], (name, *e["loc"]), e["input"], e["msg"]) for e in err.errors(include_url=False)]) from None


def _errors(errors: list[tuple[str, tuple, Any, str]]) -> ValidationError:
    return ValidationError.from_exception_data(
        "config section",
        [{"type": PydanticCustomError(kind, "{message}", {"message": message}), "loc": loc, "input": value}
         for kind, loc, value, message in errors],
    )


@dataclass(frozen=True)
class Registered:
    """Marks a config section that validates against the config ``registry`` holds for its name,
    when it is validated (:func:`validate_section`)."""

    registry: Registry

    def __call__(self, raw: Any) -> BaseModel:
        return validate_section(self.registry, raw)


def registered_section(registry: Registry) -> Any:
    """The type of a config section validated at use against ``registry``'s configs."""
    marker = Registered(registry)
    return Annotated[SerializeAsAny[BaseModel], PlainValidator(marker), marker]


DataConfig = registered_section(DATASETS)
"""A ``data`` section: a :class:`kdlens.data.DataConfigBase` subclass, chosen by ``name``."""
LossConfig = registered_section(LOSSES)
"""One ``losses[i]``: a :class:`kdlens.distill.LossConfigBase` subclass, chosen by ``name``."""


def _default_losses() -> list[BaseModel]:
    return [validate_section(LOSSES, {"name": "ce"})]


class ExperimentConfig(_Section):
    name: str = "experiment"
    seed: int = 0
    output_dir: str | None = None
    """Where checkpoints, logs and results go; default ``runs/<name>``."""
    data: DataConfig
    model: ModelConfig
    teacher: ModelConfig | None = None
    losses: list[LossConfig] = Field(default_factory=_default_losses)
    recipe: RecipeConfig = RecipeConfig()
    trainer: TrainerConfig = TrainerConfig()
    tags: list[str] = []
    """Labels the experiment trackers show (W&B and MLflow tags); a sweep adds its grid point
    (``key=value``) and its folder (``sweep=<name>``)."""
    slurm: SlurmConfig | None = None
    """Job defaults for ``kdlens sweep --launcher slurm``; nothing else reads it."""

    @field_validator("name")
    @classmethod
    def _name_is_a_folder_name(cls, name: str) -> str:
        check_run_name(name)
        return name

    @field_validator("losses")
    @classmethod
    def _some_loss(cls, losses: list) -> list:
        if not losses:
            raise ValueError("no loss terms: give at least one, e.g. losses: [{name: ce}] (the default when omitted)")
        return losses

    @model_validator(mode="after")
    def _compile_without_feature_taps(self) -> ExperimentConfig:
        if self.trainer.compile:
            tapping = [c.name for c in self.losses if LOSSES[c.name].reads_features(c)]
            if tapping:
                raise ValueError(
                    f"trainer.compile works with logit-based loss terms only: {tapping} read features through "
                    "forward hooks, which compiled forwards do not run. Set trainer.compile=false or remove those terms"
                )
        return self

    @model_validator(mode="after")
    def _teacher_matches_losses(self) -> ExperimentConfig:
        users = [c.name for c in self.losses if LOSSES[c.name].needs_teacher]
        if users and self.teacher is None:
            raise ValueError(
                f"loss term(s) {users} need a teacher: add a 'teacher' section "
                "(name and checkpoint) or remove those terms"
            )
        if self.teacher is not None and not users:
            raise ValueError(
                "'teacher' is set but no loss term uses it: add a distillation term "
                "(e.g. {name: kd}) or remove the 'teacher' section"
            )
        if self.teacher is not None and self.teacher.checkpoint is None and self.teacher.weights is None:
            raise ValueError(
                "teacher.checkpoint or teacher.weights is required: a trained teacher's checkpoint (kdlens's or "
                "another codebase's) or published weights by name (e.g. IMAGENET1K_V2)"
            )
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or f"runs/{self.name}")


def check_run_name(name: str) -> None:
    """A run's name becomes a folder name (``runs/<name>``, a sweep's ``runs/<name>-sweep``): one
    path component, so that no run writes outside its root. A ValueError names the fix."""
    separators = {"/", "\\", os.sep, *([os.altsep] if os.altsep else [])}
    if not name or ".." in name or name == "." or any(sep in name for sep in separators):
        raise ValueError(
            f"name {name!r} must be a plain folder name (no '/', '\\' or '..', not empty): it names the run's "
            "folder under runs/. Use e.g. name: my_run, and output_dir to put the run elsewhere"
        )


def load_config(path: str | Path, overrides: list[str] = ()) -> ExperimentConfig:
    """Read a YAML file, apply ``key.sub=value`` overrides, validate."""
    return validate_config(read_raw_config(path, overrides))


def read_raw_config(path: str | Path, overrides: list[str] = ()) -> dict[str, Any]:
    """The YAML file's mapping with overrides applied, not yet validated (sweeps vary it further)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"'{path}' is a folder, not a config file: give an experiment YAML file (e.g. configs/demo/teacher.yaml)")
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist: check the path")
    raw = parse_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of sections, not {type(raw).__name__}")
    for override in overrides:
        apply_override(raw, override)
    return raw


def parse_yaml(path: Path) -> Any:
    """A YAML file's content; a ConfigError for a file that is not text or not YAML (with the
    line and column of the first syntax error)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"config file '{path}' is not a text file (byte {err.start} is not UTF-8): give an experiment YAML file"
        ) from None
    except OSError as err:
        raise ConfigError(f"config file '{path}' cannot be read ({err.strerror or err}): check its permissions") from None
    if "\x00" in text:
        raise ConfigError(f"config file '{path}' is not a text file (it holds NUL bytes): give an experiment YAML file")
    try:
        return load_yaml(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"config file '{path}' is not valid YAML: {_yaml_problem(err)}") from None


def _yaml_problem(err: yaml.YAMLError) -> str:
    """The first problem of a YAML error, at its line and column (1-based), and the fix."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}. Fix the syntax there (indentation, a missing ':' or closing bracket, or quote the value)"


def validate_config(raw: dict[str, Any]) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_errors(err)) from None


def validate_data_config(raw: dict[str, Any]) -> Any:
    """A ``data`` section on its own (e.g. for ``kdlens evaluate --data``): a
    :class:`kdlens.data.DataConfigBase` subclass."""
    try:
        return TypeAdapter(DataConfig).validate_python(raw)
    except ValidationError as err:
        raise ConfigError(format_errors(err, prefix=("data",))) from None


def apply_override(raw: dict[str, Any], override: str) -> None:
    """``a.b.0.c=value``: the value is parsed as YAML (numbers, booleans, lists, null)."""
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override '{override}' is not of the form key.sub=value")
    *parents, leaf = key.split(".")
    if not all(key.split(".")):
        raise ConfigError(f"override '{override}': '{key}' has an empty part; write key.sub=value, e.g. recipe.epochs=5")
    node: Any = raw
    for i, part in enumerate(parents):
        if i and not isinstance(node, (dict, list)):
            raise ConfigError(_not_a_section(key, ".".join(parents[:i]), node))
        node = _child(node, part, key)
    try:
        value = load_yaml(text)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(
            f"override '{override}': the value '{text}' is not valid YAML ({problem}); close its brackets or quotes, "
            f"or quote it as a string ({key}='\"...\"')"
        ) from None
    if isinstance(node, list):
        node[_list_index(node, leaf, key)] = value
    elif isinstance(node, dict):
        node[leaf] = value
    else:
        raise ConfigError(_not_a_section(key, ".".join(parents), node))


def _child(node: Any, part: str, key: str) -> Any:
    if isinstance(node, list):
        return node[_list_index(node, part, key)]
    if not isinstance(node, dict):
        raise ConfigError(f"override '{key}': '{part}' is inside a value that is not a section")
    return node.setdefault(part, {})


def _not_a_section(key: str, path: str, value: Any) -> str:
    return (
        f"override '{key}': '{path}' is a value ({value!r}), not a section with keys; "
        f"set it directly ({path}=...) or check the key's spelling"
    )


def _list_index(node: list, part: str, key: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"override '{key}': '{part}' is not an index of a list of {len(node)} items")
    return int(part)


def format_errors(err: ValidationError, prefix: tuple = ()) -> str:
    """One line per problem; ``prefix`` is where the validated object sits in an experiment config."""
    lines = [f"invalid config ({err.error_count()} problem{'s' * (err.error_count() > 1)}):"]
    for e in err.errors(include_url=False):
        loc = prefix + tuple(e["loc"])
        where = ".".join(str(p) for p in loc) or "<top>"
        if e["type"] == "extra_forbidden":
            try:
                valid = _valid_keys(loc[:-1])
            except (IndexError, KeyError, TypeError, AttributeError):  # a location the models do not describe
                valid = []
            lines.append(f"  {where}: unknown key." + (f" Valid keys here: {', '.join(valid)}" if valid else " Remove it"))
        elif e["type"] == "missing":
            lines.append(f"  {where}: required key is missing")
        else:
            got = repr(e["input"])
            lines.append(f"  {where}: {e['msg']} (got {got if len(got) <= 200 else got[:200] + ' …'})")
    return "\n".join(lines)


def _valid_keys(loc: tuple) -> list[str]:
    """The field names of the model found at ``loc`` (which includes union tags, as pydantic reports,
    and registered names, as :func:`validate_section` reports)."""
    kind: Any = ExperimentConfig
    for part in loc:
        marker = _registered_marker(kind)
        kind = _unwrap(kind)
        if marker is not None and isinstance(part, str):
            kind = marker.registry.config(part) if part in marker.registry else None
        elif isinstance(part, int):
            kind = typing.get_args(kind)[0]
        elif isinstance(kind, type) and issubclass(kind, BaseModel) and part in kind.model_fields:
            field = kind.model_fields[part]
            kind = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
        else:
            kind = _union_member(kind, part)
    kind = _unwrap(kind)
    return list(kind.model_fields) if isinstance(kind, type) and issubclass(kind, BaseModel) else []


def _registered_marker(kind: Any) -> Registered | None:
    if typing.get_origin(kind) is Annotated:
        return next((m for m in kind.__metadata__ if isinstance(m, Registered)), None)
    return None


def _unwrap(kind: Any) -> Any:
    """Strip Annotated and Optional."""
    while typing.get_origin(kind) is Annotated:
        kind = typing.get_args(kind)[0]
    if typing.get_origin(kind) in (Union, types.UnionType):
        members = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(members) == 1:
            return _unwrap(members[0])
    return kind


def _union_member(kind: Any, tag: str) -> Any:
    for member in typing.get_args(kind):
        if isinstance(member, type) and issubclass(member, BaseModel):
            if tag in typing.get_args(member.model_fields["name"].annotation):
                return member
    return None


def dump_config(config: ExperimentConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
