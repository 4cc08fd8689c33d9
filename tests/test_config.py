import pytest

from kdlens.config import ConfigError, apply_override, load_config, validate_config, validate_data_config

BASE = {"data": {"name": "shapes"}, "model": {"name": "resnet8"}}


def with_(**sections):
    return {**BASE, **sections}


def test_minimal_config_has_the_documented_defaults():
    config = validate_config(BASE)
    assert [term.name for term in config.losses] == ["ce"]
    assert config.recipe.optimizer.name == "sgd" and config.recipe.schedule.name == "step"
    assert str(config.run_dir) == "runs/experiment"


def test_unknown_top_level_key_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        validate_config(with_(epochs=3))
    message = str(err.value)
    assert "epochs: unknown key" in message
    for key in ("data", "model", "teacher", "losses", "recipe", "trainer"):
        assert key in message


def test_option_a_dataset_does_not_read_is_an_error_naming_its_options():
    with pytest.raises(ConfigError) as err:
        validate_config(with_(data={"name": "shapes", "download": True}))
    message = str(err.value)
    assert "data.shapes.download: unknown key" in message
    assert "shortcut" in message and "num_classes" in message


def test_option_of_another_schedule_is_unused_and_rejected():
    with pytest.raises(ConfigError) as err:
        validate_config(with_(recipe={"schedule": {"name": "step", "warmup_epochs": 5}}))
    assert "recipe.schedule.step.warmup_epochs: unknown key" in str(err.value)
    assert "milestones" in str(err.value)


def test_loss_option_errors_point_into_the_list():
    with pytest.raises(ConfigError) as err:
        validate_config(with_(losses=[{"name": "ce"}, {"name": "kd", "temprature": 2}], teacher={"name": "resnet20", "checkpoint": "t.ckpt"}))
    assert "losses.1.kd.temprature: unknown key" in str(err.value)
    assert "temperature" in str(err.value)


def test_wrong_type_is_reported_with_the_value():
    with pytest.raises(ConfigError) as err:
        validate_config(with_(recipe={"epochs": "many"}))
    assert "recipe.epochs" in str(err.value) and "'many'" in str(err.value)


def test_unknown_model_suggests_the_close_name():
    with pytest.raises(ConfigError) as err:
        validate_config(with_(model={"name": "resnet8x5"}))
    assert "resnet8x4" in str(err.value)


def test_distillation_term_without_teacher_and_teacher_without_term():
    with pytest.raises(ConfigError, match="need a teacher"):
        validate_config(with_(losses=[{"name": "kd"}]))
    with pytest.raises(ConfigError, match="no loss term uses it"):
        validate_config(with_(teacher={"name": "resnet20", "checkpoint": "t.ckpt"}))
    with pytest.raises(ConfigError, match="teacher.checkpoint or teacher.weights is required"):
        validate_config(with_(teacher={"name": "resnet20"}, losses=[{"name": "kd"}]))


def test_overrides_reach_nested_sections_and_list_items(tmp_path):
    path = tmp_path / "experiment.yaml"
    path.write_text(
        "data: {name: shapes}\nmodel: {name: resnet8}\nteacher: {name: resnet20, checkpoint: t.ckpt}\n"
        "losses: [{name: ce, weight: 0.1}, {name: kd, weight: 0.9}]\n"
    )
    config = load_config(path, ["recipe.epochs=3", "losses.1.temperature=2", "data.shortcut=0.9", "recipe.schedule={name: cosine}"])
    assert config.recipe.epochs == 3
    assert config.losses[1].temperature == 2.0
    assert config.data.shortcut == 0.9
    assert config.recipe.schedule.warmup_epochs == 5


def test_malformed_overrides_are_errors():
    raw = {"losses": [{"name": "ce"}]}
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_override(raw, "recipe.epochs")
    with pytest.raises(ConfigError, match="not an index"):
        apply_override(raw, "losses.3.weight=1")


def test_missing_file_and_data_section_alone(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="data.shapes.colour: unknown key"):
        validate_data_config({"name": "shapes", "colour": 1})
    with pytest.raises(ConfigError, match="data"):
        validate_data_config({"name": "imagenet22k"})


def test_every_shipped_config_validates():
    from pathlib import Path

    root = Path(__file__).parent.parent / "configs"
    # configs/benchmarks/ holds table specs (a config per row), checked in test_benchmark_tables.py
    configs = sorted(p for p in root.rglob("*.yaml") if "benchmarks" not in p.relative_to(root).parts)
    assert configs
    for path in configs:
        load_config(path)


def test_clock_times_stay_strings_so_a_slurm_time_of_a_day_is_1440_minutes():
    from kdlens.config import load_yaml, slurm_minutes

    assert load_yaml("time: 24:00:00\nepochs: 12\nlr: 3.0e-3") == {"time": "24:00:00", "epochs": 12, "lr": 3.0e-3}
    assert slurm_minutes(load_yaml("24:00:00")) == 1440  # YAML 1.1 would read 86400
