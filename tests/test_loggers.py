import pytest
from conftest import tiny_experiment

from kdlens.config import ConfigError, validate_config
from kdlens.training.run import run_experiment


def test_loggers_are_checked_when_the_config_is(monkeypatch, tmp_path):
    raw = tiny_experiment(tmp_path / "run")
    with pytest.raises(ConfigError, match="include csv"):
        validate_config({**raw, "trainer": {"loggers": ["tensorboard"]}})
    assert validate_config(raw).trainer.loggers == ["csv", "tensorboard"]
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'kdlens\[wandb\]'"):
        validate_config({**raw, "trainer": {"loggers": ["csv", "wandb"]}})


@pytest.mark.slow
def test_wandb_offline_and_mlflow_file_store_record_the_run(monkeypatch, tmp_path):
    for variable in ("WANDB_MODE", "WANDB_PROJECT", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))  # wandb's own settings files, not the home folder's
    raw = tiny_experiment(
        tmp_path / "run", recipe={"epochs": 1}, tags=["alpha=0.5"],
        trainer={"progress_bar": False, "log_every_n_steps": 1, "loggers": ["csv", "wandb", "mlflow"]},
    )
    raw["data"]["train_size"] = 64
    logs = run_experiment(validate_config(raw)).folder.logs_dir

    (wandb_run,) = (logs / "wandb").glob("offline-run-*")
    (records,) = wandb_run.glob("run-*.wandb")  # what `wandb sync` uploads
    assert b"val/top1" in records.read_bytes() and b"alpha=0.5" in records.read_bytes()
    (mlflow_run,) = [p.parent for p in (logs / "mlruns").glob("*/*/meta.yaml") if (p.parent / "metrics").is_dir()]
    timestamp, top1, step = (mlflow_run / "metrics" / "val" / "top1").read_text().split()
    assert 0.0 <= float(top1) <= 1.0
    assert (mlflow_run / "tags" / "mlflow.runName").read_text() == "run"
    assert (mlflow_run / "tags" / "alpha").read_text() == "0.5" and (mlflow_run / "tags" / "seed").read_text() == "0"
    assert (mlflow_run / "params" / "recipe" / "epochs").read_text() == "1"
