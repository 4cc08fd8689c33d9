"""One registry mechanism for every kind, validation against the registered config at use, and
plugins: the package in tests/plugin_pkg (a loss term, a dataset, an explainer and a metric in one
module, found through entry points) is installed offline into a temporary folder and run through
the CLI."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ConfigDict

from kdlens import registry
from kdlens.registry import Registry

PLUGIN_SOURCE = Path(__file__).parent / "plugin_pkg"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """tests/plugin_pkg installed (no network, no dependencies) into a folder of its own."""
    root = tmp_path_factory.mktemp("plugin")
    source = shutil.copytree(PLUGIN_SOURCE, root / "src")  # the build writes beside its sources
    site = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--target", str(site), str(source)],
        check=True, capture_output=True, text=True,
    )
    assert list(site.glob("kdlens_example_plugin-*.dist-info/entry_points.txt"))
    return site


def with_plugin(site: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH")) if p)
    return env


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_plugin_names_are_listed_and_its_configs_validate(plugin_site, tmp_path):
    script = textwrap.dedent("""
        import json, sys
        from kdlens.config import ConfigError, validate_config
        from kdlens.registry import DATASETS, EXPLAINERS, LOSSES, METRICS

        out = {"names": {kind: reg.names() for kind, reg in
                         [("losses", LOSSES), ("datasets", DATASETS), ("explainers", EXPLAINERS), ("metrics", METRICS)]}}
        config = validate_config({"data": {"name": "stripes", "image_size": 8}, "model": {"name": "resnet8"},
                                  "losses": [{"name": "ce"}, {"name": "confidence_penalty", "beta": 0.5}]})
        out["config"] = [type(config.data).__name__, [type(term).__name__ for term in config.losses]]
        out["dump"] = config.model_dump(mode="json")
        try:
            validate_config({"data": {"name": "stripes", "colour": 1}, "model": {"name": "resnet8"},
                             "losses": [{"name": "confidence_penalty", "betta": 1}, {"name": "confidence_penalti"}]})
        except ConfigError as err:
            out["error"] = str(err)
        json.dump(out, sys.stdout)
    """)
    out = json.loads(run(["-c", script], with_plugin(plugin_site), tmp_path).stdout)
    assert "confidence_penalty" in out["names"]["losses"] and "kd" in out["names"]["losses"]
    assert "stripes" in out["names"]["datasets"] and "shapes" in out["names"]["datasets"]
    assert "plain_gradient" in out["names"]["explainers"] and "gradcam" in out["names"]["explainers"]
    assert "positive_fraction" in out["names"]["metrics"] and "pointing_game" in out["names"]["metrics"]
    assert out["config"] == ["StripesConfig", ["CEConfig", "ConfidencePenaltyConfig"]]
    assert out["dump"]["data"]["image_size"] == 8 and out["dump"]["losses"][1] == {
        "name": "confidence_penalty", "weight": 1.0, "active_epochs": None, "beta": 0.5}
    error = out["error"]
    assert "data.stripes.colour: unknown key" in error and "train_size" in error
    assert "losses.0.confidence_penalty.betta: unknown key" in error and "beta" in error
    assert "unknown loss term 'confidence_penalti'. Did you mean 'confidence_penalty'" in error


@pytest.mark.slow
def test_plugin_trains_and_is_evaluated_through_the_cli(plugin_site, tmp_path):
    env = with_plugin(plugin_site)
    config = tmp_path / "stripes.yaml"
    config.write_text(yaml.safe_dump({
        "name": "stripes-run",
        "output_dir": str(tmp_path / "run"),
        "data": {"name": "stripes", "batch_size": 16, "image_size": 16, "train_size": 64, "test_size": 16},
        "model": {"name": "resnet8"},
        "losses": [{"name": "ce"}, {"name": "confidence_penalty", "beta": 0.05}],
        "recipe": {"epochs": 1, "optimizer": {"name": "sgd", "lr": 0.05}, "schedule": {"name": "constant"}},
        "trainer": {"progress_bar": False, "log_every_n_steps": 1},
    }))
    trained = run(["-m", "kdlens", "train", str(config)], env, tmp_path)
    assert "stripes-run: best epoch" in trained.stdout
    [checkpoint] = (tmp_path / "run").rglob("best.ckpt")

    out = tmp_path / "evaluation"
    evaluated = run(["-m", "kdlens", "evaluate", str(checkpoint), "--explainer", "plain_gradient,gradcam",
                     "--metrics", "positive_fraction,sparseness", "--n", "8", "--out", str(out)], env, tmp_path)
    assert "plain_gradient" in evaluated.stdout
    with open(out / "explanations_summary.csv", newline="") as f:
        rows = {(row["explainer"], row["metric"]): row for row in csv.DictReader(f)}
    assert set(rows) == {(e, m) for e in ("plain_gradient", "gradcam") for m in ("positive_fraction", "sparseness")}
    fraction = rows[("plain_gradient", "positive_fraction")]
    assert int(fraction["n"]) == 8 and int(fraction["nan"]) == 0 and 0.0 <= float(fraction["mean"]) <= 1.0


# ---------------------------------------------------------------- the mechanism


class _ThingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "thing"
    size: int = 1


def test_register_directly_or_as_a_decorator_with_its_config():
    things = Registry("thing")
    assert things.register("a", 1) == 1

    @things.register("b", config=_ThingConfig)
    def b():
        return 2

    assert things["b"] is b and things.config("b") is _ThingConfig and things.config("a") is None
    assert things.names() == ["a", "b"] and list(things) == ["a", "b"] and "b" in things and "c" not in things
    with pytest.raises(ValueError, match="registered twice"):
        things.register("a", 3)
    with pytest.raises(KeyError, match="unknown thing 'bb'. Did you mean 'b'"):
        things.config("bb")


def test_a_config_whose_name_literal_disagrees_is_refused():
    from kdlens.distill.kd import KDConfig

    with pytest.raises(ValueError, match="only allows 'kd'"):
        Registry("loss term").register("kd2", object(), config=KDConfig)


class _EntryPoint:
    def __init__(self, name: str, load) -> None:
        self.name, self.value, self.load = name, f"pkg_{name}", load


def test_modules_and_plugins_load_on_first_use(monkeypatch):
    imported, loaded = [], []
    things = Registry("thing", group="test.things", modules=("json",))
    monkeypatch.setattr(registry, "_import_module", lambda name: imported.append(name))
    monkeypatch.setattr(registry, "_entry_points", lambda group: [
        _EntryPoint("extra", lambda: loaded.append("extra") or things.register("extra", 2)),
        _EntryPoint("broken", lambda: 1 / 0),
    ])
    things.register("own", 1)
    assert imported == [] and loaded == []
    assert things["own"] == 1 and loaded == []  # a known name needs no plugin
    assert imported == [] and things._modules_loaded is False  # found before the modules were needed
    with pytest.warns(RuntimeWarning, match="plugin 'broken = pkg_broken'.*ZeroDivisionError"):
        assert things["extra"] == 2
    assert imported == ["json"] and loaded == ["extra"]
    with pytest.raises(KeyError, match="failed to load"):
        things["missing"]
    assert loaded == ["extra"]  # plugins load once


def test_looking_up_one_explainer_imports_only_its_module():
    script = ("import sys\nfrom kdlens.registry import EXPLAINERS\nassert 'gradcam' in EXPLAINERS\n"
              "assert 'lrp' in EXPLAINERS.names()\n"
              "print(sorted(m for m in ('kdlens.explain.lrp', 'kdlens.explain.gradient', 'captum', 'zennit', 'skimage') "
              "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
