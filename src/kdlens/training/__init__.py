"""Training: the Lightning module, recipes and the experiment runner."""

from kdlens.training.module import DistillationModule
from kdlens.training.run import RunResult, run_experiment

__all__ = ["DistillationModule", "RunResult", "run_experiment"]
