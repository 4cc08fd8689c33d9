"""The evaluation layer's shared policies (aggregation, device, explained class, eval mode, the
distillation weight) and the report rendering only what it is given."""

import math

import numpy as np
import pytest
import torch
from conftest import tiny_experiment
from torch import nn
from typer.testing import CliRunner

from kdlens.aggregate import aggregate, format_aggregate
from kdlens.cli import app
from kdlens.config import ConfigError, validate_config
from kdlens.device import DeviceError, resolve_device
from kdlens.evaluation import distillation_weight
from kdlens.evaluation.measures import Calibration, Diagram
from kdlens.evaluation.report_data import Explanations, Features, GroupReport, ReportData
from kdlens.explain import ExplainError, resolve_target
from kdlens.models import create_model
from kdlens.models.modes import eval_mode
from kdlens.report.build import ReportRenderer


def test_one_aggregation_mean_sample_std_n_and_missing():
    stats = aggregate([0.5, None, 0.7, math.nan, 0.9])
    assert (stats.n, stats.nan) == (3, 2) and stats.mean == pytest.approx(0.7) and stats.std == pytest.approx(0.2)
    assert format_aggregate([0.5, 0.7, 0.9]) == "0.7000 ± 0.2000"
    one = aggregate([0.25])
    assert one.n == 1 and math.isnan(one.std) and format_aggregate([0.25]) == "0.2500"  # no spread, not ± 0
    assert format_aggregate([]) == "–" and format_aggregate([None, math.nan]) == "–"


def test_one_device_policy():
    assert resolve_device(None) == resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="is not a device"):
        resolve_device("gpu0")
    with pytest.raises(ConfigError, match="CUDA device"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_device_errors_exit_2_before_any_work(tmp_path):
    for command in (["evaluate", str(tmp_path / "missing.ckpt")], ["report", str(tmp_path)],
                    ["explain", str(tmp_path / "missing.ckpt"), "--method", "gradcam", "--out", str(tmp_path)]):
        result = CliRunner().invoke(app, [*command, "--device", "tpu9"])
        assert result.exit_code == 2 and "'tpu9' is not a device" in result.output, result.output


def test_one_target_resolver():
    torch.manual_seed(0)
    student, teacher = create_model("resnet8", 3).eval(), create_model("resnet8", 3).eval()
    x, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        own, teachers = student(x).argmax(1), teacher(x).argmax(1)
    assert torch.equal(resolve_target(student, x, "label", labels=labels), labels)
    assert torch.equal(resolve_target(student, x, "pred"), own)
    assert torch.equal(resolve_target(student, x, "teacher", teacher=teacher), teachers)
    assert torch.equal(resolve_target(student, x, teacher), teachers)
    with pytest.raises(ExplainError, match="needs --teacher"):
        resolve_target(student, x, "teacher")
    with pytest.raises(ExplainError, match="unlabelled"):
        resolve_target(student, x, "label", labels=torch.tensor([0, -1, 2, 1]))


def test_one_eval_mode_restores_each_module():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).train()
    model[1].eval()  # e.g. a frozen batch norm inside a training model
    with eval_mode(model) as inside:
        assert inside is model and not any(m.training for m in model.modules())
    assert model.training and model[0].training and not model[1].training
    with eval_mode(None) as nothing:
        assert nothing is None


def test_distillation_weight_comes_from_the_loss_registry(tmp_path):
    teacher = {"name": "resnet8", "checkpoint": str(tmp_path / "teacher.ckpt")}

    def alpha(losses, with_teacher=True):
        raw = tiny_experiment(tmp_path, losses=losses, **({"teacher": teacher} if with_teacher else {}))
        return distillation_weight(validate_config(raw))

    assert alpha([{"name": "ce"}], with_teacher=False) == 0.0
    assert alpha([{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9}]) == pytest.approx(0.9)
    assert alpha([{"name": "ce", "weight": 0.5}, {"name": "expkd", "weight": 0.5}]) == pytest.approx(0.5)  # not 0.00
    assert alpha([{"name": "oracle_kd"}]) == 1.0


def _calibration(ece: float) -> Calibration:
    edges = np.linspace(0, 1, 11)
    diagram = Diagram(edges, np.zeros(10), np.zeros(10), np.zeros(10))
    return Calibration({10: ece, 15: ece, 20: ece}, 0.5, diagram)


def test_the_summary_renders_from_the_data_alone():
    group = GroupReport(
        label="kd", seeds=2, model="resnet8", teacher="resnet20", losses="ce×0.5 + expkd×0.5", distillation_terms=("expkd",),
        alpha=0.5, is_teacher=False, results={("best", "test", "top1"): [0.5, 0.7], ("last", "test", "top1"): [0.4]},
        calibration=[_calibration(0.1), _calibration(0.3)], curves=[],
    )
    data = ReportData(inputs=["runs"], notes=[], groups=[group], data_limit=8, explain_n=4, teacher_calibration=[],
                      explanations=Explanations(has_teacher=False), features=Features(enabled=False), correlations=[])
    (row,) = ReportRenderer(data).summary().rows  # before (and without) the calibration section
    assert row[5:7] == ["0.6000 ± 0.1414", "0.4000"] and row[-1] == "0.2000 ± 0.1414"
