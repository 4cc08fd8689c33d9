"""Throughput options run and keep checkpoints loadable (their speed is measured on GPUs, not here)."""

import pytest
import torch
from conftest import kd_sections, tiny_experiment
from lightning.pytorch.callbacks import Callback

from kdlens.config import ConfigError, validate_config
from kdlens.runs.checkpoints import load_model
from kdlens.training.run import run_experiment


class RecordInputFormat(Callback):
    def on_train_start(self, trainer, pl_module):
        self.channels_last = []
        pl_module.model.register_forward_pre_hook(
            lambda module, args: self.channels_last.append(args[0].is_contiguous(memory_format=torch.channels_last))
        )


def test_channels_last_and_bf16_on_cpu(tmp_path, teacher_checkpoint):
    recorder = RecordInputFormat()
    raw = tiny_experiment(tmp_path / "fast", recipe={"epochs": 1}, **kd_sections(teacher_checkpoint))
    raw["trainer"] = {**raw["trainer"], "channels_last": True, "precision": "bf16-mixed", "accelerator": "cpu"}
    run = run_experiment(validate_config(raw), callbacks=[recorder])
    assert recorder.channels_last and all(recorder.channels_last)
    assert 0.0 <= run.results.metric("best", "test", "top1") <= 1.0
    load_model(run.best_checkpoint)


def test_compile_keeps_checkpoint_names_and_refuses_feature_terms(tmp_path, teacher_checkpoint):
    raw = tiny_experiment(tmp_path / "compiled", recipe={"epochs": 1}, **kd_sections(teacher_checkpoint))
    raw["trainer"] = {**raw["trainer"], "compile": True}
    run = run_experiment(validate_config(raw))
    model, _ = load_model(run.best_checkpoint)  # parameter names without torch.compile's prefix
    assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 3)

    raw = tiny_experiment(tmp_path / "fitnet", recipe={"epochs": 1}, **kd_sections(teacher_checkpoint))
    raw["losses"] = [*raw["losses"], {"name": "at"}]
    raw["trainer"] = {**raw["trainer"], "compile": True}
    with pytest.raises(ConfigError, match="logit-based loss terms only"):
        run_experiment(validate_config(raw))
