"""The Lightning module: one model trained with a weighted sum of loss terms, optionally from a
frozen teacher. Plain training is the same module with ``losses: [ce]`` and no teacher."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics.classification import MulticlassAccuracy

from kdlens.config import RecipeConfig
from kdlens.errors import UserError
from kdlens.distill import DistillBatch, DistillLoss
from kdlens.distill.frozen import TEACHER_LOGITS
from kdlens.engine import SELECT_AFTER_SECONDS, InferenceEngine
from kdlens.models import FeatureTaps, get_model_spec
from kdlens.runs.checkpoints import CheckpointInfo, write_training_checkpoint
from kdlens.runs.layout import CHECKPOINTS_DIR, LAST
from kdlens.training.health import STATE_KEY, HealthMonitor, logger
from kdlens.training.recipes import build_optimizer, lr_factor, parameter_groups


class TrainingDiverged(UserError, RuntimeError):
    """The loss stopped being finite."""


class DistillationModule(L.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        losses: DistillLoss,
        recipe: RecipeConfig,
        num_classes: int,
        checkpoint_info: CheckpointInfo,
        probe: dict[str, torch.Tensor],
        teacher: nn.Module | None = None,
        memory_format: torch.memory_format = torch.contiguous_format,
        teacher_engine: str = "auto",
    ) -> None:
        """``probe`` is a small batch used once to size the loss terms' connectors, so that they
        exist before the optimiser is built and before a checkpoint is restored. ``teacher_engine``:
        the :mod:`kdlens.engine` backend of the teacher's forward where no term reads its features
        or differentiates it (``eager``: the teacher itself)."""
        super().__init__()
        self.model = model
        self.losses = losses
        self.teacher = teacher
        if teacher is not None:
            teacher.requires_grad_(False).eval()
        self.memory_format = memory_format
        student_paths, teacher_paths = losses.feature_paths()
        self.student_taps = FeatureTaps(model, student_paths)
        self.teacher_taps = FeatureTaps(teacher, teacher_paths) if teacher is not None else None
        # With the teacher's logits in every training batch (frozen), it runs only for validation:
        # a backend is chosen once its eager time says the choice pays. Else many calls follow:
        # choose at the first batch.
        frozen = TEACHER_LOGITS in probe
        self.teacher_forward = (InferenceEngine(teacher, teacher_engine, select_after=SELECT_AFTER_SECONDS if frozen else 0.0)
                                if teacher is not None else None)
        model.eval()
        with torch.no_grad():
            losses.build_connectors(self._distill_batch(probe))
        model.train()
        self.recipe = recipe
        self.checkpoint_info = checkpoint_info
        self.val_top1 = MulticlassAccuracy(num_classes, average="micro")
        self.val_agreement = MulticlassAccuracy(num_classes, average="micro") if teacher is not None else None
        self.health = HealthMonitor()
        self.saved_epochs: int | None = None
        """Epochs completed (from 1) in the last checkpoint this run wrote or resumed from; None
        while there is none."""

    def train(self, mode: bool = True) -> DistillationModule:
        # Lightning switches the whole module to train() around validation; the frozen teacher must
        # stay in eval() so that its BatchNorm statistics and dropout never change.
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def _teacher_outputs(
        self, images: torch.Tensor, frozen_logits: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        """The teacher's (logits, tapped features, graph). Logits and features are detached for
        every term; the graph (logits and features still attached, from the tapped layers on) only
        exists when a term differentiates the teacher's activations. With frozen logits in the
        batch and nothing else needed, no teacher pass runs at all."""
        if self.teacher is None:
            return frozen_logits, {}, None
        needs_pass = frozen_logits is None or self.teacher_taps.paths or self.losses.needs_teacher_graph
        if not needs_pass:
            return frozen_logits, {}, None
        needs_graph = self.losses.needs_teacher_graph and torch.is_grad_enabled()
        if not needs_graph and not self.teacher_taps.paths:
            with torch.no_grad():
                return self.teacher_forward(images), {}, None
        with torch.set_grad_enabled(needs_graph), self.teacher_taps.grad_leaves(needs_graph):
            logits = self.teacher(images)
        features = self.teacher_taps.as_dict()
        graph = {"logits": logits, **features} if logits.requires_grad else None
        return logits.detach(), {path: f.detach() for path, f in features.items()}, graph

    def _distill_batch(self, batch: dict[str, torch.Tensor]) -> DistillBatch:
        images = batch["image"].contiguous(memory_format=self.memory_format)
        teacher_logits, teacher_features, teacher_graph = self._teacher_outputs(images, batch.get(TEACHER_LOGITS))
        student_logits = self.model(images)
        return DistillBatch(
            images,
            batch["label"],
            student_logits,
            teacher_logits,
            student_features=self.student_taps.as_dict(),
            teacher_features=teacher_features,
            epoch=self.current_epoch,
            step=self.global_step,
            extras={k: v for k, v in batch.items() if k not in ("image", "label", "index", TEACHER_LOGITS)},
            teacher_graph=teacher_graph,
        )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        distill_batch = self._distill_batch(batch)
        loss, parts = self.losses(distill_batch)
        if not torch.isfinite(loss):
            # Stop before the optimiser step so that no NaN reaches the weights or a checkpoint.
            terms = ", ".join(f"{name}={value.item():.4g}" for name, value in parts.items())
            raise TrainingDiverged(
                f"the loss became {loss.item()} at epoch {self.current_epoch}, step {self.global_step} ({terms}). "
                f"The run stopped; {self._what_was_kept()}"
            )
        self.health.observe(distill_batch.student_logits)
        self.log_dict({f"train/{name}": value for name, value in parts.items()}, on_step=True, on_epoch=True)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch["image"].contiguous(memory_format=self.memory_format), batch["label"]
        logits = self.model(images)
        self.health.observe(logits)
        self.val_top1(logits, labels)
        self.log("val/top1", self.val_top1, on_epoch=True, prog_bar=True)
        self.log("val/loss", F.cross_entropy(logits, labels), on_epoch=True, sync_dist=True)
        if self.teacher is not None:
            self.val_agreement(logits.argmax(1), self.teacher_forward(images).argmax(1))
            self.log("val/agreement", self.val_agreement, on_epoch=True)

    def _what_was_kept(self) -> str:
        """What a diverged run leaves behind, truthfully: the last checkpoint written (or resumed
        from), or nothing at all."""
        if self.saved_epochs is None:
            return (
                "nothing was saved, since no epoch had finished with a checkpoint, so there is nothing to resume. "
                "Lower the learning rate (recipe.optimizer.lr) or set recipe.grad_clip_norm, check the data "
                "(e.g. inputs that are not normalised, or broken images), and start the run again."
            )
        epochs = f"{self.saved_epochs} epoch{'' if self.saved_epochs == 1 else 's'} completed"
        return (
            f"{CHECKPOINTS_DIR}/{LAST} still holds the last good epoch ({epochs}). Lower the learning rate or set "
            "recipe.grad_clip_norm, then continue with --resume."
        )

    def on_fit_start(self) -> None:
        self.health.start(self.model)

    def on_train_epoch_end(self) -> None:
        warning = self.health.end_epoch(self.model, self.current_epoch + 1)
        if warning is not None and self.trainer.is_global_zero:
            logger.warning(warning)

    def teardown(self, stage: str) -> None:
        self.student_taps.close()
        if self.teacher_taps is not None:
            self.teacher_taps.close()

    def configure_optimizers(self) -> dict[str, Any]:
        global_batch = self.trainer.datamodule.config.batch_size * self.trainer.world_size
        head = get_model_spec(self.checkpoint_info.model).classifier
        optimizer = build_optimizer(parameter_groups([self.model, self.losses], self.recipe, self.model, head), self.recipe, global_batch)
        steps_per_epoch = max(1, self.trainer.estimated_stepping_batches // self.recipe.epochs)
        scheduler = LambdaLR(optimizer, lr_factor(self.recipe, steps_per_epoch))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        val_metrics = {name: float(value) for name, value in self.trainer.callback_metrics.items() if name.startswith("val/")}
        write_training_checkpoint(checkpoint, self.checkpoint_info, val_metrics)
        checkpoint[STATE_KEY] = self.health.state_dict()
        self.saved_epochs = checkpoint["epoch"] + 1
        # The teacher comes from its own checkpoint; copying it into every student checkpoint only
        # wastes disk.
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("teacher.")}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.health.load_state_dict(checkpoint.get(STATE_KEY))
        if isinstance(checkpoint.get("epoch"), int):
            self.saved_epochs = checkpoint["epoch"] + 1
        if self.teacher is not None:
            checkpoint["state_dict"].update({f"teacher.{k}": v for k, v in self.teacher.state_dict().items()})
