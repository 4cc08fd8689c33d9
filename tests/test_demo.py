import csv
import json

from typer.testing import CliRunner

from kdlens.cli import app


def test_demo_prints_the_table_writes_results_and_reuses_finished_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("KDLENS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--epochs", "1", "--teacher-epochs", "1", "--train-size", "128"])
    assert result.exit_code == 0, result.output
    assert "worst-group" in result.output and "decoy energy" in result.output
    for model in ("teacher", "scratch", "kd", "e2kd"):
        assert f"\n{model} " in result.output

    results = json.loads((out / "results.json").read_text())
    assert set(results["results"]) == {"teacher", "scratch", "kd", "e2kd"}
    for report in results["results"].values():
        assert {"test", "shifted"} <= set(report)
        shifted = report["shifted"]
        assert 0.0 <= shifted["worst_group_accuracy"] <= shifted["top1"] <= 1.0
        assert -1.0 <= shifted["shortcut_gap"] <= 1.0
        assert 0.0 <= shifted["decoy_energy"] <= 1.0 and 0.0 <= shifted["energy_pointing_game"] <= 1.0
        assert shifted["decoy_energy"] + shifted["energy_pointing_game"] <= 1.0 + 1e-6  # disjoint masks
    assert results["results"]["teacher"]["test"]["agreement"] == 1.0
    with open(out / "results.csv") as f:
        assert [row["model"] for row in csv.DictReader(f)] == ["teacher", "scratch", "kd", "e2kd"]

    again = CliRunner().invoke(app, ["demo", "--out", str(out), "--epochs", "1", "--teacher-epochs", "1", "--train-size", "128"])
    assert again.exit_code == 0 and again.output.count("already trained") == 4


def test_demo_refuses_zero_epochs_instead_of_falling_back_to_the_default(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--epochs", "0"])
    assert result.exit_code == 2 and "--epochs" in result.output
    assert not (tmp_path / "demo").exists()
