"""Training: the Lightning module, recipes, checkpoints and the experiment runner."""

from kdlens.training.checkpoints import CheckpointError, load_checkpoint_file, load_model
from kdlens.training.module import DistillationModule
from kdlens.training.run import RunResult, run_experiment

__all__ = ["CheckpointError", "DistillationModule", "RunResult", "load_checkpoint_file", "load_model", "run_experiment"]
