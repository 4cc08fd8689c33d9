"""Crash safety: diverging losses, kills during checkpoint writes and mid-epoch, resumed runs."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_experiment
from lightning.pytorch.callbacks import Callback

from kdlens.config import validate_config
from kdlens.runs.checkpoints import load_checkpoint_file
from kdlens.training.module import TrainingDiverged
from kdlens.training.run import run_experiment


def same_threads_env() -> dict[str, str]:
    """Child processes must use this process's torch thread count: CPU kernels split their
    reductions by thread, so bit-exact comparisons need the same count on both sides."""
    return {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}


class PoisonWeightsInSecondEpoch(Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 2:
            with torch.no_grad():
                pl_module.model.fc.weight.fill_(float("nan"))


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    config = validate_config(tiny_experiment(tmp_path / "run", recipe={"epochs": 3}))
    with pytest.raises(TrainingDiverged, match=r"became nan at epoch 1.*last good epoch"):
        run_experiment(config, callbacks=[PoisonWeightsInSecondEpoch()])
    checkpoint = load_checkpoint_file(config.run_dir / "checkpoints" / "last.ckpt")
    assert checkpoint["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point())


WRITER = """
import sys, torch
from kdlens.io import atomic_write  # what atomic_torch_save writes through
path = sys.argv[1]
atomic_write(path, lambda f: torch.save({"payload": torch.zeros(10)}, f))
print("ready", flush=True)
while True:
    atomic_write(path, lambda f: torch.save({"payload": torch.randn(4_000_000)}, f))
"""


def test_a_kill_while_writing_a_checkpoint_never_leaves_a_corrupt_one(tmp_path):
    path = tmp_path / "last.ckpt"
    for delay in (0.02, 0.1, 0.3):
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        checkpoint = load_checkpoint_file(path)  # the old or a new one, whole
        assert checkpoint["payload"].numel() in (10, 4_000_000)


ANNOUNCING_TRAINER = """
import sys
from lightning.pytorch.callbacks import Callback
from kdlens.config import load_config
from kdlens.training.run import run_experiment

class Announce(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        print(trainer.current_epoch, batch_idx, flush=True)

run_experiment(load_config(sys.argv[1]), callbacks=[Announce()])
"""


def test_a_run_killed_mid_epoch_and_resumed_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    raw = tiny_experiment(tmp_path / "straight")
    straight = run_experiment(validate_config(raw))

    killed_dir = tmp_path / "killed"
    config_file = tmp_path / "killed.yaml"
    config_file.write_text(yaml.safe_dump({**raw, "name": "killed", "output_dir": str(killed_dir)}))
    child = subprocess.Popen([sys.executable, "-c", ANNOUNCING_TRAINER, str(config_file)], stdout=subprocess.PIPE, text=True, env=same_threads_env())
    for line in child.stdout:
        if line.split() == ["1", "2"]:  # third step of the second epoch done
            child.send_signal(signal.SIGKILL)
            break
    child.wait()
    last = killed_dir / "checkpoints" / "last.ckpt"
    assert child.returncode == -signal.SIGKILL and load_checkpoint_file(last)["epoch"] == 0

    kdlens = str(Path(sys.executable).parent / "kdlens")
    resumed = subprocess.run([kdlens, "train", str(config_file), "--resume"], capture_output=True, text=True, env=same_threads_env())
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected = load_checkpoint_file(straight.last_checkpoint)["state_dict"]
    actual = load_checkpoint_file(last)["state_dict"]
    assert expected.keys() == actual.keys()
    for key, value in expected.items():
        assert torch.equal(value, actual[key]), key


def test_two_process_ddp_on_cpu_matches_one_process_with_the_same_global_batch(tmp_path):
    """gloo DDP with 2 ranks × 16 images = one process × 32 images. The B-cos net has no BatchNorm,
    whose per-rank statistics would differ from the global batch's (SyncBatchNorm is CUDA-only)."""
    raw = tiny_experiment(tmp_path / "single", model={"name": "bcos_resnet20"}, recipe={"epochs": 2, "optimizer": {"name": "sgd", "lr": 0.01}, "schedule": {"name": "constant"}})
    raw["data"] = {**raw["data"], "augment": False, "batch_size": 32}
    single = run_experiment(validate_config(raw))

    ddp_dir = tmp_path / "ddp"
    ddp = {
        **raw,
        "name": "ddp",
        "output_dir": str(ddp_dir),
        "data": {**raw["data"], "batch_size": 16},
        "trainer": {**raw["trainer"], "accelerator": "cpu", "devices": 2, "strategy": "ddp"},
    }
    config_file = tmp_path / "ddp.yaml"
    config_file.write_text(yaml.safe_dump(ddp))
    kdlens = str(Path(sys.executable).parent / "kdlens")
    result = subprocess.run([kdlens, "train", str(config_file)], capture_output=True, text=True, timeout=300, env=same_threads_env())
    assert result.returncode == 0, result.stderr[-3000:]

    expected = load_checkpoint_file(single.last_checkpoint)
    actual = load_checkpoint_file(ddp_dir / "checkpoints" / "last.ckpt")
    assert actual["global_step"] == expected["global_step"]
    for key, value in expected["state_dict"].items():
        other = actual["state_dict"][key]
        if value.is_floating_point():
            # Float noise of a different reduction order; a sharding or averaging error is ~1e-2.
            assert torch.allclose(value, other, rtol=1e-3, atol=1e-4), (key, (value - other).abs().max())
        else:
            assert torch.equal(value, other), key
