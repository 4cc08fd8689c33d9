"""Run one experiment: build data and models, train (or resume), evaluate best and last on test."""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torch.utils.data import default_collate

from kdlens.config import ConfigError, ExperimentConfig, ModelConfig, dump_config
from kdlens.data import DataBundle, build_data
from kdlens.distill import DistillLoss, TermContext
from kdlens.distill.frozen import attach_frozen_teacher, frozen_teacher_outputs
from kdlens.io import atomic_write_text, write_json
from kdlens.metrics.evaluate import evaluate_models
from kdlens.models import count_parameters, create_model, get_model_spec
from kdlens.training.callbacks import RNGStateCallback
from kdlens.runs.checkpoints import (
    checkpoint_info,
    is_kdlens_checkpoint,
    load_checkpoint_file,
    model_from_checkpoint,
    pretrained_source,
)
from kdlens.runs.importing import import_or_load
from kdlens.training.checkpoints import AtomicCheckpointIO
from kdlens.training.datamodule import BundleDataModule
from kdlens.training.module import DistillationModule


@dataclass
class RunResult:
    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    results: dict[str, Any] | None
    """None on the non-zero ranks of a distributed run."""


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
        problems = [
            f"{key} {info[key]} != the dataset's {value}"
            for key, value in (("num_classes", bundle.num_classes), ("in_channels", bundle.in_channels))
            if info[key] != value
        ]
        if info["model"] != config.name:
            problems.append(f"architecture '{info['model']}' != the config's '{config.name}'")
        if problems:
            raise ConfigError(
                f"{role} checkpoint '{config.checkpoint}' does not fit this experiment: {'; '.join(problems)}. "
                f"Use a {role} trained on this dataset, or fix {role}.name."
            )
        return model
    model = create_model(config.name, bundle.num_classes, bundle.in_channels, weights=config.weights, weights_file=config.weights_file)
    if config.weights is not None and role == "teacher":
        predicts = len(model.pretrained_cfg.get("class_names") or []) or None
        if predicts is not None and predicts != bundle.num_classes:
            raise ConfigError(
                f"teacher weights {config.weights} of '{config.name}' predict {predicts} classes but "
                f"the dataset has {bundle.num_classes}: a teacher's head cannot be "
                "replaced untrained. Fine-tune it first (`kdlens train` with model.weights) and use that checkpoint "
                "as teacher.checkpoint, or use a dataset with the weights' label set (e.g. imagenet_s labels: imagenet1k)"
            )
    if hasattr(model, "set_input_normalization"):  # B-cos nets encode [x, 1−x] of pixels in [0, 1]
        model.set_input_normalization(bundle.mean, bundle.std)
    return model


def run_experiment(
    config: ExperimentConfig,
    resume: bool = False,
    callbacks: list[Callback] = (),
    bundle: DataBundle | None = None,
) -> RunResult:
    """Train ``config.model`` with ``config.losses``; write checkpoints/{best,last}.ckpt, logs/,
    config.yaml and results.json under ``config.run_dir``."""
    run_dir = config.run_dir
    checkpoint_dir = run_dir / "checkpoints"
    last_path, best_path = checkpoint_dir / "last.ckpt", checkpoint_dir / "best.ckpt"
    _check_run_dir(config, run_dir, last_path, resume)

    if config.trainer.sync_batchnorm and (config.trainer.accelerator == "cpu" or not torch.cuda.is_available()):
        raise ConfigError("trainer.sync_batchnorm needs GPUs (torch's SyncBatchNorm is CUDA-only): set it to false on CPU")
    L.seed_everything(config.seed, workers=True, verbose=False)
    bundle = bundle or build_data(config.data)
    model = build_model(config.model, bundle, "model").train()
    teacher = build_model(config.teacher, bundle, "teacher") if config.teacher else None
    info = checkpoint_info(
        config.model.name, num_classes=bundle.num_classes, in_channels=bundle.in_channels, image_size=bundle.image_size,
        class_names=bundle.class_names, mean=bundle.mean, std=bundle.std, config=config.model_dump(mode="json"),
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
    probe = default_collate([bundle.train[i] for i in range(2)])
    memory_format = torch.channels_last if config.trainer.channels_last else torch.contiguous_format
    for network in (model, teacher):
        if network is not None:
            network.to(memory_format=memory_format)
    module = DistillationModule(model, losses, config.recipe, bundle.num_classes, info, probe, teacher, memory_format)
    if config.trainer.compile:
        if any(losses.feature_paths()):
            raise ConfigError(
                "trainer.compile works with logit-based loss terms only: the terms here read features through "
                "forward hooks, which compiled forwards do not run. Set trainer.compile=false"
            )
        for network in (model, teacher):
            if network is not None:
                network.compile()  # in place: parameter names (and checkpoints) stay the same

    # Two callbacks: Lightning's save_last only writes when a top-k checkpoint was written in the
    # same step, which would leave last.ckpt stale after an epoch without improvement.
    best_checkpoint = ModelCheckpoint(
        dirpath=checkpoint_dir, filename="best", monitor="val/top1", mode="max", save_top_k=1, enable_version_counter=False
    )
    last_checkpoint = ModelCheckpoint(dirpath=checkpoint_dir, filename="last", enable_version_counter=False)
    trainer = L.Trainer(
        max_epochs=config.recipe.epochs,
        accelerator=config.trainer.accelerator,
        devices=config.trainer.devices,
        num_nodes=config.trainer.num_nodes,
        strategy=config.trainer.strategy,
        sync_batchnorm=config.trainer.sync_batchnorm,
        precision=config.trainer.precision,
        deterministic=config.trainer.deterministic,
        gradient_clip_val=config.recipe.grad_clip_norm,
        limit_train_batches=config.trainer.limit_train_batches,
        limit_val_batches=config.trainer.limit_val_batches,
        log_every_n_steps=config.trainer.log_every_n_steps,
        enable_progress_bar=config.trainer.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # BundleDataModule shards by (seed, epoch) itself
        default_root_dir=run_dir,
        # A new CSV version folder per attempt: CSVLogger would otherwise overwrite an interrupted
        # attempt's metrics.csv on resume. TensorBoard appends event files by itself.
        logger=[CSVLogger(run_dir / "logs", name="csv"), TensorBoardLogger(run_dir / "logs", name="tensorboard", version="")],
        callbacks=[best_checkpoint, last_checkpoint, RNGStateCallback(), *callbacks],
        plugins=[AtomicCheckpointIO()],
    )
    # The frozen teacher is in eval mode on purpose.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    atomic_write_text(run_dir / "config.yaml", dump_config(config))
    started = time.perf_counter()
    trainer.fit(module, datamodule=BundleDataModule(bundle, config.data, config.seed), ckpt_path=last_path if resume and last_path.exists() else None)
    train_seconds = time.perf_counter() - started
    if not trainer.is_global_zero:  # other DDP ranks only train; rank 0 evaluates and writes
        return RunResult(run_dir, best_path, last_path, None)

    results = {
        "name": config.name,
        "model": config.model.name,
        "teacher": config.teacher.name if config.teacher else None,
        "train_seconds": round(train_seconds, 2),
        "parameters": count_parameters(model),
        "connector_parameters": count_parameters(losses),
        **_best_and_last(best_path, last_path, bundle, config, teacher),
    }
    write_json(run_dir / "results.json", results)
    return RunResult(run_dir, best_path, last_path, results)


def _weights_source(config: ModelConfig, model: nn.Module) -> dict[str, Any] | None:
    """Where the model's starting weights came from, with the normalisation and class names they
    were published with (the checkpoint's own mean/std are the dataset's, which fed the training)."""
    if config.weights is not None:
        return pretrained_source(model, config.weights)
    if config.checkpoint is not None:
        return {"checkpoint": config.checkpoint}
    return None


def _check_run_dir(config: ExperimentConfig, run_dir: Path, last_path: Path, resume: bool) -> None:
    saved = run_dir / "config.yaml"
    if not resume:
        if last_path.exists():
            raise ConfigError(f"'{run_dir}' already holds a run: pass --resume to continue it, or set output_dir to a new folder")
        return
    if saved.exists():
        before = yaml.safe_load(saved.read_text())
        now = config.model_dump(mode="json")
        changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        if changed:
            raise ConfigError(
                f"cannot resume '{run_dir}': its config differs in {changed}. Resume with the saved "
                f"config ({saved}) or start a new output_dir"
            )


def _best_and_last(best_path: Path, last_path: Path, bundle: DataBundle, config: ExperimentConfig, teacher: nn.Module | None) -> dict:
    """Test-split reports of the best-on-val and the last checkpoint, with the epochs they come from."""
    models, epochs, val_top1 = {}, {}, {}
    for which, path in (("best", best_path), ("last", last_path)):
        checkpoint = load_checkpoint_file(path)
        models[which], _ = model_from_checkpoint(checkpoint, path)
        epochs[which] = checkpoint["epoch"] + 1  # epochs completed, counting from 1
        val_top1[which] = checkpoint["val_metrics"].get("val/top1")
    reports = evaluate_models(models, bundle, config.data, teacher)
    return {which: {"epoch": epochs[which], "val_top1": val_top1[which], **reports[which]} for which in models}
