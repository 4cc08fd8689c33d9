"""A run's health: exploding-but-finite training (huge logits, runaway weights) is warned about once
and marked in results.json; a diverged run says truthfully what it left behind."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from conftest import tiny_experiment
from lightning.pytorch.callbacks import Callback

from kdlens.config import validate_config
from kdlens.runs.checkpoints import load_checkpoint_file
from kdlens.runs.results import RunHealth, RunResults
from kdlens.training.health import MAX_ABS_LOGIT, MAX_WEIGHT_NORM_GROWTH, STATE_KEY, HealthMonitor
from kdlens.training.module import TrainingDiverged
from kdlens.training.run import run_experiment

HUGE_LR = 5.0
"""Plain SGD at this rate on the tiny shapes run: the loss stays finite while the logits reach
~1e9 (the weights grow ~100×) and test top-1 falls to chance."""


def exploding_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("kdlens") and "exploding" in r.getMessage()]


def test_a_huge_learning_rate_explodes_finitely_and_is_warned_once_and_marked(tmp_path, caplog):
    sections = {"recipe": {"epochs": 3, "optimizer": {"name": "sgd", "lr": HUGE_LR, "weight_decay": 0.0},
                           "schedule": {"name": "constant"}}}
    config = validate_config(tiny_experiment(tmp_path / "boom", **sections))
    with caplog.at_level(logging.WARNING, logger="kdlens"):
        run = run_experiment(config)
    health = run.results.health
    assert health.exploding and health.exploded_epoch is not None
    assert health.max_abs_logit > MAX_ABS_LOGIT or health.weight_norm_growth > MAX_WEIGHT_NORM_GROWTH
    (warning,) = exploding_warnings(caplog)  # once, though every epoch is past the thresholds
    assert warning.startswith("warning: ") and "recipe.optimizer.lr" in warning
    saved = json.loads(run.folder.results_file.read_text())["health"]
    assert saved["exploding"] is True and saved["exploded_epoch"] == health.exploded_epoch
    assert RunResults.from_dict(json.loads(run.folder.results_file.read_text())).health == health


class BlowUpTheHead(Callback):
    """After the first epoch's first batch, scale the classifier by 1e6: finite, but its logits explode."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 0 and batch_idx == 0:
            with torch.no_grad():
                pl_module.model.fc.weight.mul_(1e6)


def test_exploding_logits_and_weights_are_each_recorded(tmp_path, caplog):
    config = validate_config(tiny_experiment(tmp_path / "scaled", recipe={"epochs": 1}))
    with caplog.at_level(logging.WARNING, logger="kdlens"):
        run = run_experiment(config, callbacks=[BlowUpTheHead()])
    health = run.results.health
    assert health.exploding_logits and health.max_abs_logit > MAX_ABS_LOGIT
    assert health.exploding_weights and health.weight_norm_growth > MAX_WEIGHT_NORM_GROWTH
    assert health.exploded_epoch == 1
    (warning,) = exploding_warnings(caplog)
    assert "|logit|" in warning and "norm grew" in warning
    # The monitor's state travels in the checkpoints, so that a resumed run keeps the starting norm.
    state = load_checkpoint_file(run.last_checkpoint)[STATE_KEY]
    assert state["start_norm"] > 0 and state["max_abs_logit"] > MAX_ABS_LOGIT


def test_a_normal_run_is_healthy_and_silent(tmp_path, caplog):
    config = validate_config(tiny_experiment(tmp_path / "fine"))
    with caplog.at_level(logging.WARNING, logger="kdlens"):
        run = run_experiment(config)
    health = run.results.health
    assert not health.exploding and health.exploded_epoch is None
    assert 0 < health.max_abs_logit < 100 and 0.5 < health.weight_norm_growth < 10
    assert exploding_warnings(caplog) == []
    assert json.loads(run.folder.results_file.read_text())["health"]["exploding"] is False


def test_health_reads_back_leniently():
    assert RunResults.from_dict({"name": "old"}).health is None  # results.json from before the field
    inf = RunHealth(max_abs_logit=float("inf"), exploding_logits=True, exploded_epoch=2)
    assert inf.to_dict()["max_abs_logit"] is None and inf.to_dict()["exploding"] is True
    assert RunHealth.from_dict(inf.to_dict()) == RunHealth(exploding_logits=True, exploded_epoch=2)
    monitor = HealthMonitor()
    monitor.load_state_dict("not a dict")  # a checkpoint from before the monitor
    assert monitor.start_norm is None


# --- diverged runs ------------------------------------------------------------------------------


class PoisonWeights(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == 2:
            with torch.no_grad():
                pl_module.model.fc.weight.fill_(float("nan"))


def test_a_divergence_before_any_checkpoint_says_nothing_was_saved(tmp_path):
    config = validate_config(tiny_experiment(tmp_path / "run"))
    with pytest.raises(TrainingDiverged) as caught:
        run_experiment(config, callbacks=[PoisonWeights(epoch=0)])
    message = str(caught.value)
    assert "became nan at epoch 0" in message and "nothing was saved" in message
    assert "check the data" in message and "lower the learning rate" in message.lower()
    assert "last good epoch" not in message and "--resume" not in message
    assert not (config.run_dir / "checkpoints" / "last.ckpt").exists()


def test_a_divergence_after_a_checkpoint_points_to_it(tmp_path):
    config = validate_config(tiny_experiment(tmp_path / "run", recipe={"epochs": 3}))
    with pytest.raises(TrainingDiverged) as caught:
        run_experiment(config, callbacks=[PoisonWeights(epoch=1)])
    message = str(caught.value)
    assert "last.ckpt still holds the last good epoch (1 epoch completed)" in message and "--resume" in message
    assert load_checkpoint_file(config.run_dir / "checkpoints" / "last.ckpt")["epoch"] == 0
