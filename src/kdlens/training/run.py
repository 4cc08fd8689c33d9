"""Run one experiment: build the components → a Trainer from ``TrainerConfig`` → fit (or resume) →
evaluate best and last on the test splits → write results.json. Every file goes through the run
folder (:class:`kdlens.runs.RunFolder`); every static check of the config is the config's own
validation (so ``--dry-run`` makes it too)."""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from torch import nn
from torch.utils.data import default_collate

from kdlens.config import ConfigError, ExperimentConfig, ModelConfig, RecipeConfig, TrainerConfig
from kdlens.data import DataBundle, build_data
from kdlens.distill import DistillLoss, TermContext
from kdlens.distill.frozen import attach_frozen_teacher, frozen_teacher_outputs
from kdlens.metrics.evaluate import evaluate_models
from kdlens.models import count_parameters, create_model, get_model_spec
from kdlens.runs.checkpoints import (
    CheckpointInfo,
    check_fits,
    checkpoint_info,
    is_kdlens_checkpoint,
    load_checkpoint_file,
    model_from_checkpoint,
    pretrained_source,
    training_state,
)
from kdlens.runs.importing import import_or_load
from kdlens.runs.layout import CSV_LOGS, MLFLOW_LOGS, TENSORBOARD_LOGS, RunFolder
from kdlens.runs.results import CHECKPOINTS, CheckpointResults, RunResults
from kdlens.training.callbacks import RNGStateCallback
from kdlens.training.checkpoints import AtomicCheckpointIO
from kdlens.training.datamodule import BundleDataModule
from kdlens.training.module import DistillationModule
from kdlens.training.progress import RunProgress
from kdlens.verbosity import is_verbose, library_output_hidden


@dataclass
class RunResult:
    """What :func:`run_experiment` leaves: the run folder and its results."""

    folder: RunFolder
    results: RunResults | None
    """None on the non-zero ranks of a distributed run."""

    @property
    def run_dir(self) -> Path:
        return self.folder.path

    @property
    def best_checkpoint(self) -> Path:
        return self.folder.best

    @property
    def last_checkpoint(self) -> Path:
        return self.folder.last


@dataclass
class Components:
    """Everything a run trains with, built from the config and the data."""

    bundle: DataBundle
    model: nn.Module
    teacher: nn.Module | None
    losses: DistillLoss
    info: CheckpointInfo
    module: DistillationModule


def run_experiment(
    config: ExperimentConfig,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    bundle: DataBundle | None = None,
) -> RunResult:
    """Train ``config.model`` with ``config.losses``; write checkpoints/{best,last}.ckpt, logs/,
    config.yaml and results.json under ``config.run_dir``."""
    folder = RunFolder(config.run_dir)
    with folder.lock():
        folder.check_start(config, resume)
        L.seed_everything(config.seed, workers=True, verbose=False)
        parts = build_components(config, bundle)
        trainer = build_trainer(config, folder, callbacks)
        folder.write_config(config)
        train_seconds = fit(trainer, parts, config, folder, resume)
        if not trainer.is_global_zero:  # other DDP ranks only train; rank 0 evaluates and writes
            return RunResult(folder, None)
        results = evaluate_run(config, parts, folder, train_seconds)
        folder.write_results(results)
    return RunResult(folder, results)


# ---------------------------------------------------------------- components


def build_components(config: ExperimentConfig, bundle: DataBundle | None = None) -> Components:
    """Data, model, teacher, loss terms (with their connectors) and the Lightning module."""
    bundle = bundle or build_data(config.data)
    model = build_model(config.model, bundle, "model").train()
    teacher = build_model(config.teacher, bundle, "teacher") if config.teacher else None
    info = checkpoint_info(
        config.model.name, **_data_facts(bundle), config=config.model_dump(mode="json"),
        source=_weights_source(config.model, model),
    )
    context = TermContext(
        student=model,
        student_spec=get_model_spec(config.model.name),
        teacher=teacher,
        teacher_spec=get_model_spec(config.teacher.name) if config.teacher else None,
    )
    losses = DistillLoss(config.losses, context)
    frozen_spec = losses.frozen_teacher_spec()
    if frozen_spec is not None:
        outputs = frozen_teacher_outputs(teacher, bundle.train, config.teacher.checkpoint, config.data, frozen_spec)
        bundle = dataclasses.replace(bundle, train=attach_frozen_teacher(bundle.train, outputs))
    samples = [bundle.train[i] for i in range(min(2, len(bundle.train)))]
    if len(bundle.train) < config.data.batch_size:  # whole batches only: nothing would train
        raise ConfigError(
            f"data.batch_size {config.data.batch_size} is larger than the training split ({len(bundle.train)} images): "
            "no batch would train. Lower data.batch_size"
        )
    probe = default_collate(samples)
    memory_format = torch.channels_last if config.trainer.channels_last else torch.contiguous_format
    networks = [network for network in (model, teacher) if network is not None]
    for network in networks:
        network.to(memory_format=memory_format)
    # trainer.compile compiles the teacher in place below: the engine must not bypass that forward.
    teacher_engine = "eager" if config.trainer.compile else config.trainer.teacher_engine
    module = DistillationModule(model, losses, config.recipe, bundle.num_classes, info, probe, teacher, memory_format,
                                teacher_engine)
    if config.trainer.compile:  # logit-based terms only: the config refuses the others
        for network in networks:
            network.compile()  # in place: parameter names (and checkpoints) stay the same
    return Components(bundle, model, teacher, losses, info, module)


def build_model(config: ModelConfig, bundle: DataBundle, role: str) -> nn.Module:
    """The model ``config`` describes, for ``bundle``'s classes and channels: from a checkpoint
    (kdlens's, or any format ``kdlens import`` reads), from published weights by name, or freshly
    initialised. A teacher must predict the dataset's classes as it is; a model being trained may
    get a new head (fine-tuning)."""
    if config.checkpoint is not None:
        checkpoint = load_checkpoint_file(config.checkpoint)
        if not is_kdlens_checkpoint(checkpoint):  # another codebase's file: converted once, then cached
            return import_or_load(config.checkpoint, config.name, bundle)[0]
        model, info = model_from_checkpoint(checkpoint, config.checkpoint)
        check_fits(info, bundle, f"{role} checkpoint '{config.checkpoint}'",
                   f"Use a {role} trained on this dataset, or fix {role}.name.", architecture=config.name)
        return model
    model = create_model(config.name, bundle.num_classes, bundle.in_channels, weights=config.weights, weights_file=config.weights_file)
    if config.weights is not None and role == "teacher":
        predicts = len(model.pretrained_cfg.get("class_names") or []) or None
        if predicts is not None:
            check_fits(
                {"num_classes": predicts}, bundle, f"teacher weights {config.weights} of '{config.name}'",
                "A teacher's head cannot be replaced untrained. Fine-tune it first (`kdlens train` with model.weights) "
                "and use that checkpoint as teacher.checkpoint, or use a dataset with the weights' label set "
                "(e.g. imagenet_s labels: imagenet1k)",
            )
    if get_model_spec(config.name).input_normalization:
        model.set_input_normalization(bundle.mean, bundle.std)
    return model


def _data_facts(bundle: DataBundle) -> dict[str, Any]:
    return {
        "num_classes": bundle.num_classes, "in_channels": bundle.in_channels, "image_size": bundle.image_size,
        "class_names": bundle.class_names, "mean": bundle.mean, "std": bundle.std,
    }


def _weights_source(config: ModelConfig, model: nn.Module) -> dict[str, Any] | None:
    """Where the model's starting weights came from, with the normalisation and class names they
    were published with (the checkpoint's own mean/std are the dataset's, which fed the training)."""
    if config.weights is not None:
        return pretrained_source(model, config.weights)
    if config.checkpoint is not None:
        return {"checkpoint": config.checkpoint}
    return None


# ---------------------------------------------------------------- trainer

KDLENS_TRAINER_OPTIONS = frozenset({"channels_last", "compile", "teacher_engine", "loggers"})
"""TrainerConfig options kdlens applies to the models itself; every other option is a Lightning
Trainer argument, under its own name or the one in :data:`TRAINER_ARGUMENT_NAMES`."""
TRAINER_ARGUMENT_NAMES = {"progress_bar": "enable_progress_bar"}


def trainer_arguments(trainer: TrainerConfig, recipe: RecipeConfig) -> dict[str, Any]:
    """The Lightning Trainer arguments a config asks for: every TrainerConfig option (see
    :data:`KDLENS_TRAINER_OPTIONS`), the recipe's epochs and gradient clipping, and what kdlens
    always sets (no sanity steps or model summary; its own data sharding)."""
    options = trainer.model_dump(exclude=set(KDLENS_TRAINER_OPTIONS))
    return {
        **{TRAINER_ARGUMENT_NAMES.get(name, name): value for name, value in options.items()},
        "max_epochs": recipe.epochs,
        "gradient_clip_val": recipe.grad_clip_norm,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "use_distributed_sampler": False,  # BundleDataModule shards by (seed, epoch) itself
    }


def build_trainer(config: ExperimentConfig, folder: RunFolder, callbacks: Sequence[Callback] = ()) -> L.Trainer:
    """A Trainer writing best/last checkpoints (atomically) and CSV/TensorBoard logs into ``folder``,
    with kdlens's one-line progress display (:class:`RunProgress`, unless ``trainer.progress_bar``
    is off or ``callbacks`` bring their own progress bar) and without Lightning's start-up chatter
    (:func:`kdlens.verbosity.library_output_hidden`; ``kdlens --verbose`` shows it)."""
    # Two callbacks: Lightning's save_last only writes when a top-k checkpoint was written in the
    # same step, which would leave last.ckpt stale after an epoch without improvement.
    best, last = (folder.checkpoint(which) for which in CHECKPOINTS)
    best_checkpoint = ModelCheckpoint(
        dirpath=best.parent, filename=best.stem, monitor="val/top1", mode="max", save_top_k=1, enable_version_counter=False
    )
    last_checkpoint = ModelCheckpoint(dirpath=last.parent, filename=last.stem, enable_version_counter=False)
    progress = [RunProgress()] if config.trainer.progress_bar and not any(isinstance(c, ProgressBar) for c in callbacks) else []
    with library_output_hidden():
        return L.Trainer(
            **trainer_arguments(config.trainer, config.recipe),
            default_root_dir=folder.path,
            logger=build_loggers(config, folder),
            callbacks=[best_checkpoint, last_checkpoint, RNGStateCallback(), *progress, *callbacks],
            plugins=[AtomicCheckpointIO()],
        )


def build_loggers(config: ExperimentConfig, folder: RunFolder) -> list[Logger]:
    """The loggers ``trainer.loggers`` names, each writing under ``folder``'s logs/. W&B runs offline
    unless ``WANDB_MODE`` says otherwise; MLflow writes to its file store in logs/mlruns unless
    ``MLFLOW_TRACKING_URI`` names a server. Both get the run's name, its tags and its config."""
    made: list[Logger] = []
    labels = {"model": config.model.name, "teacher": config.teacher.name if config.teacher else "none", "seed": str(config.seed)}
    for name in config.trainer.loggers:
        if name == "csv":
            # A new version folder per attempt: CSVLogger would otherwise overwrite an interrupted
            # attempt's metrics.csv on resume.
            made.append(CSVLogger(folder.logs_dir, name=CSV_LOGS))
        elif name == "tensorboard":  # appends event files by itself
            made.append(TensorBoardLogger(folder.logs_dir, name=TENSORBOARD_LOGS, version=""))
        elif name == "wandb":
            import wandb

            tracker = WandbLogger(
                name=config.name, project=os.environ.get("WANDB_PROJECT", "kdlens"), save_dir=str(folder.logs_dir),
                offline=os.environ.get("WANDB_MODE", "offline") == "offline",
                tags=[*config.tags, *(f"{key}={value}" for key, value in labels.items())],
                config=config.model_dump(mode="json"), settings=wandb.Settings(silent=not is_verbose()),
            )
            # Lightning passes wandb.init anonymous=None, which wandb warns has no effect.
            getattr(tracker, "_wandb_init", {}).pop("anonymous", None)
            made.append(tracker)
        elif name == "mlflow":
            from lightning.pytorch.loggers import MLFlowLogger

            tracking_uri = os.environ.get("MLFLOW_TRACKING_URI")
            if not tracking_uri:  # MLflow 3 keeps its file store in maintenance mode, refused unless allowed
                tracking_uri = (folder.logs_dir / MLFLOW_LOGS).resolve().as_uri()
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            tracker = MLFlowLogger(
                experiment_name=os.environ.get("MLFLOW_EXPERIMENT_NAME", "kdlens"), run_name=config.name, tracking_uri=tracking_uri,
                tags={**labels, **dict(tag.partition("=")[::2] for tag in config.tags)},
            )
            tracker.log_hyperparams(config.model_dump(mode="json"))
            made.append(tracker)
    return made


def fit(trainer: L.Trainer, parts: Components, config: ExperimentConfig, folder: RunFolder, resume: bool) -> float:
    """Train (from last.ckpt when resuming); the seconds it took. Lightning's own log lines and
    the libraries' warnings are hidden unless ``kdlens --verbose`` (kdlens's warnings always show)."""
    started = time.perf_counter()
    with library_output_hidden(), warnings.catch_warnings():
        # The frozen teacher is in eval mode on purpose.
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
        trainer.fit(
            parts.module,
            datamodule=BundleDataModule(parts.bundle, config.data, config.seed),
            ckpt_path=folder.last if resume and folder.resumable else None,
        )
        for logger in trainer.loggers:  # W&B writes in the background until its run is finished
            if isinstance(logger, WandbLogger):
                logger.experiment.finish()
    return time.perf_counter() - started


# ---------------------------------------------------------------- evaluation


def evaluate_run(config: ExperimentConfig, parts: Components, folder: RunFolder, train_seconds: float) -> RunResults:
    """The run's results: test-split reports of the best-on-val and the last checkpoint, with the
    epochs they come from, the run's sizes and its health (whether logits or weights exploded:
    :mod:`kdlens.training.health`)."""
    models, states = {}, {}
    for which in CHECKPOINTS:
        path = folder.checkpoint(which)
        if not path.is_file():
            raise ConfigError(f"the run ended without writing {path}: no epoch finished. Check trainer.limit_train_batches")
        checkpoint = load_checkpoint_file(path)
        models[which], _ = model_from_checkpoint(checkpoint, path)
        states[which] = training_state(checkpoint)
    if states["best"][0] is not None and states["best"][0] == states["last"][0]:  # the last epoch was the best: evaluated once
        del models["last"]
    reports = evaluate_models(models, parts.bundle, config.data, parts.teacher)
    reports.setdefault("last", reports["best"])
    evaluated = {
        which: CheckpointResults(epoch=epoch, val_top1=val_metrics.get("val/top1"), splits=reports[which])
        for which, (epoch, val_metrics) in states.items()
    }
    return RunResults(
        name=config.name,
        model=config.model.name,
        teacher=config.teacher.name if config.teacher else None,
        train_seconds=round(train_seconds, 2),
        parameters=count_parameters(parts.model),
        connector_parameters=count_parameters(parts.losses),
        **evaluated,  # best and last
        health=parts.module.health.results(),
    )
