from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from kdlens.cli import app

PUBLISHED = sorted((Path(__file__).parent.parent / "configs" / "published").rglob("*.yaml"))


def test_the_published_recipes_are_there():
    names = {path.stem for path in PUBLISHED}
    for method in ("kd", "dkd", "expkd", "e2kd", "oracle_kd"):
        for pair in ("resnet32x4_resnet8x4", "wrn_40_2_wrn_16_2", "resnet56_resnet20", "vgg13_vgg8"):
            assert f"{method}_{pair}" in names
    assert {"kd_resnet34_resnet18", "dkd_resnet34_resnet18", "alpha_mix_resnet50_mobilenet_v3_small"} <= names


@pytest.mark.parametrize("path", PUBLISHED, ids=[p.stem for p in PUBLISHED])
def test_every_published_config_passes_its_dry_run(path):
    command = "distill" if "teacher" in yaml.safe_load(path.read_text()) else "train"
    result = CliRunner().invoke(app, [command, str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("plan for") and "resolved config:" in result.output
