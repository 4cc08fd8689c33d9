import json
import statistics

import pytest
import yaml
from conftest import kd_sections, tiny_experiment
from typer.testing import CliRunner

from kdlens.cli import app
from kdlens.config import ConfigError
from kdlens.training.sweep import mean_std, parse_axis, plan_sweep, summarise


def test_grid_axes_single_and_paired():
    axis = parse_axis("recipe.epochs=1,2,3")
    assert axis.keys == ("recipe.epochs",) and axis.values == (("1",), ("2",), ("3",))
    alpha = parse_axis("losses.0.weight,losses.1.weight=1:0,0.5:0.5,0:1")
    assert alpha.values == (("1", "0"), ("0.5", "0.5"), ("0", "1"))
    with pytest.raises(ConfigError, match="2 keys"):
        parse_axis("a,b=1:2,3")
    with pytest.raises(ConfigError, match="form"):
        parse_axis("recipe.epochs")


def test_plan_is_the_grid_times_seeds_with_one_folder_each(tmp_path, teacher_checkpoint):
    raw = tiny_experiment(tmp_path / "base", **kd_sections(teacher_checkpoint))
    alpha = parse_axis("losses.0.weight,losses.1.weight=1:0,0.25:0.75,0:1")
    runs = plan_sweep(raw, [alpha, parse_axis("losses.1.temperature=1,4")], seeds=2, sweep_dir=tmp_path / "sweep")
    assert len(runs) == 3 * 2 * 2
    assert len({run.config.run_dir for run in runs}) == len(runs)
    pure_kd = [r for r in runs if r.point["losses.1.weight"] == "1"]
    assert all(r.config.losses[0].weight == 0 and r.config.losses[1].weight == 1 for r in pure_kd)
    assert {r.seed for r in runs} == {0, 1}


def test_mean_std_uses_the_sample_deviation():
    values = [0.5, 0.7, 0.9]
    assert mean_std(values) == f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"
    assert mean_std([0.5]) == "0.5000"  # one seed: no spread (its std is undefined, not 0)


def test_sweep_command_runs_skips_finished_runs_and_aggregates(tmp_path, teacher_checkpoint):
    config = tmp_path / "kd.yaml"
    config.write_text(yaml.safe_dump(tiny_experiment(tmp_path / "kd", **kd_sections(teacher_checkpoint))))
    sweep_dir = tmp_path / "sweep"
    args = ["sweep", str(config), "recipe.epochs=1", "--grid", "losses.0.weight,losses.1.weight=1:0,0:1", "--seeds", "2", "--out", str(sweep_dir)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.output.count(": training") == 4

    summary = (sweep_dir / "summary.md").read_text()
    assert len(summary.splitlines()) == 4  # header, separator, one row per grid point
    for slug in ("losses.0.weight=1_losses.1.weight=0", "losses.0.weight=0_losses.1.weight=1"):
        tops = [json.loads((sweep_dir / slug / f"seed{s}" / "results.json").read_text())["best"]["test"]["top1"] for s in (0, 1)]
        assert mean_std(tops) in summary

    (sweep_dir / "losses.0.weight=0_losses.1.weight=1" / "seed1" / "results.json").unlink()  # as if it crashed
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert again.output.count("finished, skipped") == 3 and again.output.count(": resuming") == 1


def test_summary_reports_each_metric_the_runs_have(tmp_path, teacher_checkpoint):
    raw = tiny_experiment(tmp_path / "base", **kd_sections(teacher_checkpoint))
    runs = plan_sweep(raw, [], seeds=2, sweep_dir=tmp_path / "sweep")
    for run in runs:
        run.config.run_dir.mkdir(parents=True)
        report = {"top1": 0.5 + run.seed / 10, "agreement": 0.9}
        (run.config.run_dir / "results.json").write_text(json.dumps({"best": {"test": report}, "last": {"test": report}}))
    (row,) = summarise(runs)
    assert row["seeds"] == 2 and row["best top-1"] == mean_std([0.5, 0.6]) and row["agreement"] == mean_std([0.9, 0.9])
    assert "worst-group" not in row


HOLDER = """
import sys, time
from kdlens.runs import RunFolder
with RunFolder(sys.argv[1]).lock():
    print("holding", flush=True)
    time.sleep(60)
"""


def test_a_run_another_process_takes_after_planning_is_skipped_not_failed(tmp_path):
    """Two launchers over one root: the second may find a run free when it plans and taken when it
    gets to it. It goes on with the others and leaves the run's record to its owner."""
    import subprocess
    import sys

    from kdlens.config import validate_config
    from kdlens.runs import RunFolder
    from kdlens.training.sweep import LocalLauncher, SweepRun

    runs = [SweepRun({}, seed, validate_config(tiny_experiment(tmp_path / f"seed{seed}", seed=seed))) for seed in (0, 1)]
    taken = RunFolder(runs[0].config.run_dir)
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(taken.path)], stdout=subprocess.PIPE, text=True)
    trained, lines = [], []
    try:
        assert child.stdout.readline().strip() == "holding"
        LocalLauncher(lambda config, resume: trained.append(config.seed)).launch(
            [(f"run{run.seed}", run) for run in runs], lines.append)
    finally:
        child.kill()
        child.wait()
    assert trained == [1]
    assert lines[0] == f"run0: running in another process (PID {child.pid}), skipped"
    assert "error" not in taken.read_launch()
