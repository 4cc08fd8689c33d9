import os
from pathlib import Path

import pytest
import torch

from kdlens.config import validate_config
from kdlens.training.run import run_experiment


if os.environ.get("PYTEST_XDIST_WORKER"):
    # Parallel test workers share the 2 cores: more torch threads than cores makes OpenMP spin-wait.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory):
    """Caches (frozen teacher outputs, explanations) go to a temporary folder, not ~/.cache."""
    previous = os.environ.get("KDLENS_CACHE")
    os.environ["KDLENS_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if previous is None:
        del os.environ["KDLENS_CACHE"]
    else:
        os.environ["KDLENS_CACHE"] = previous


def tiny_experiment(output_dir: Path, **sections) -> dict:
    """A run that trains in seconds: small shapes, resnet8, two epochs, no progress bar."""
    raw = {
        "name": output_dir.name,
        "output_dir": str(output_dir),
        "data": {"name": "shapes", "num_classes": 3, "image_size": 16, "train_size": 192, "test_size": 64, "batch_size": 32, "shortcut": 0.9},
        "model": {"name": "resnet8"},
        "recipe": {"epochs": 2, "optimizer": {"name": "sgd", "lr": 0.05}, "schedule": {"name": "cosine", "warmup_epochs": 1}},
        "trainer": {"progress_bar": False, "log_every_n_steps": 1},
    }
    raw.update(sections)
    return raw


@pytest.fixture(scope="session")
def teacher_checkpoint(tmp_path_factory) -> Path:
    """A resnet8 teacher trained for one epoch on tiny shapes, shared by the tests that need one."""
    out = tmp_path_factory.mktemp("teacher") / "teacher"
    run = run_experiment(validate_config(tiny_experiment(out, recipe={"epochs": 1})))
    return run.best_checkpoint


def kd_sections(teacher_checkpoint: Path) -> dict:
    return {
        "teacher": {"name": "resnet8", "checkpoint": str(teacher_checkpoint)},
        "losses": [{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9, "temperature": 4.0}],
    }
