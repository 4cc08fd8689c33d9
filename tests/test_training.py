import json

import pytest
import torch
from conftest import kd_sections, tiny_experiment
from lightning.pytorch.callbacks import Callback

from kdlens.config import ConfigError, validate_config
from kdlens.runs.checkpoints import CheckpointError, load_checkpoint_file, load_model
from kdlens.training.run import run_experiment


class StopAfterFirstEpoch(Callback):
    """Ends the run cleanly after epoch 1, as an interruption would (its checkpoints are written)."""

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    straight = run_experiment(validate_config(tiny_experiment(tmp_path / "straight")))
    interrupted_config = validate_config(tiny_experiment(tmp_path / "interrupted"))
    first = run_experiment(interrupted_config, callbacks=[StopAfterFirstEpoch()])
    assert first.results.last.epoch == 1
    resumed = run_experiment(interrupted_config, resume=True)
    assert resumed.results.last.epoch == 2

    expected = load_checkpoint_file(straight.last_checkpoint)
    actual = load_checkpoint_file(resumed.last_checkpoint)
    assert expected["state_dict"].keys() == actual["state_dict"].keys()
    for key, value in expected["state_dict"].items():
        assert torch.equal(value, actual["state_dict"][key]), key
    expected_moments = expected["optimizer_states"][0]["state"]
    for index, state in actual["optimizer_states"][0]["state"].items():
        assert torch.equal(state["momentum_buffer"], expected_moments[index]["momentum_buffer"])


def test_a_finished_run_is_not_overwritten_and_resume_refuses_a_changed_config(tmp_path):
    raw = tiny_experiment(tmp_path / "run", recipe={"epochs": 1})
    run_experiment(validate_config(raw))
    with pytest.raises(ConfigError, match="--resume"):
        run_experiment(validate_config(raw))
    changed = {**raw, "seed": 7}
    with pytest.raises(ConfigError, match=r"differs in \['seed'\]"):
        run_experiment(validate_config(changed), resume=True)


def test_run_outputs_record_best_and_last_epoch_and_logs(tmp_path):
    run = run_experiment(validate_config(tiny_experiment(tmp_path / "run")))
    results = json.loads((run.run_dir / "results.json").read_text())
    assert results["last"]["epoch"] == 2 and results["best"]["epoch"] in (1, 2)
    for which in ("best", "last"):
        assert 0.0 <= results[which]["test"]["top1"] <= 1.0
        assert "worst_group_accuracy" in results[which]["shifted"]
    assert (run.run_dir / "logs" / "csv" / "version_0" / "metrics.csv").exists()
    assert list((run.run_dir / "logs" / "tensorboard").glob("events.out.tfevents*"))
    assert (run.run_dir / "config.yaml").exists()
    assert not list(run.best_checkpoint.parent.glob("*.tmp"))


class RecordModes(Callback):
    def __init__(self):
        self.train_modes = []  # (epoch, student.training, teacher.training) at each training batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.train_modes.append((trainer.current_epoch, pl_module.model.training, pl_module.teacher.training))


def test_teacher_stays_frozen_in_eval_and_student_trains_again_after_validation(tmp_path, teacher_checkpoint):
    recorder = RecordModes()
    config = validate_config(tiny_experiment(tmp_path / "kd", **kd_sections(teacher_checkpoint)))
    run = run_experiment(config, callbacks=[recorder])
    epochs = {epoch for epoch, _, _ in recorder.train_modes}
    assert epochs == {0, 1}  # epoch 1 comes after a validation
    assert all(student for _, student, _ in recorder.train_modes)
    assert not any(teacher for _, _, teacher in recorder.train_modes)
    teacher_before = load_checkpoint_file(teacher_checkpoint)["state_dict"]
    model, _ = load_model(teacher_checkpoint)
    assert all(torch.equal(v, teacher_before[f"model.{k}"]) for k, v in model.state_dict().items())
    assert "agreement" in run.results.best.test and "kl_teacher_student" in run.results.best.test
    assert not any(k.startswith("teacher.") for k in load_checkpoint_file(run.last_checkpoint)["state_dict"])


def test_teacher_with_other_class_count_is_refused(tmp_path, teacher_checkpoint):
    raw = tiny_experiment(tmp_path / "kd", **kd_sections(teacher_checkpoint))
    raw["data"] = {**raw["data"], "num_classes": 4}
    with pytest.raises(ConfigError, match="predicts 3 classes, the dataset has 4"):
        run_experiment(validate_config(raw))


def flag_code_ran():
    flag_code_ran.ran = True


class CarriesCode:
    def __reduce__(self):
        return (flag_code_ran, ())


def test_checkpoint_with_pickled_code_is_refused_and_never_run(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": CarriesCode()}, path)
    flag_code_ran.ran = False
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint_file(path)
    assert not flag_code_ran.ran


def test_truncated_and_missing_checkpoints_have_clear_errors(tmp_path, teacher_checkpoint):
    data = teacher_checkpoint.read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(truncated)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing.ckpt")
    not_kdlens = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, not_kdlens)
    with pytest.raises(CheckpointError, match="not a kdlens checkpoint"):
        load_model(not_kdlens)


def test_atomic_writes_respect_the_umask(tmp_path):
    import os
    import stat

    from kdlens.io import atomic_write_text

    previous = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "results.json", "{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
