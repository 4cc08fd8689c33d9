"""The distillation terms against values worked out by hand on tiny tensors, their defaults and
feature pairing, and where their gradients go (student and connectors: yes; teacher: never)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdlens.config import ConfigError, validate_config
from kdlens.distill import (
    DistillBatch,
    DistillLoss,
    TermContext,
    attention_transfer,
    class_activation_maps,
    conv_regressor,
    dkd_parts,
    dkd_warmup,
    kd_divergence,
    normalize_over_space,
    reinforced_inputs,
    similarity_preserving,
)
from kdlens.distill.at import ATConfig
from kdlens.distill.dkd import DKDConfig
from kdlens.distill.expkd import ExpKDConfig
from kdlens.distill.feature_matching import FeatureMatchingConfig
from kdlens.distill.fitnet import FitNetConfig
from kdlens.distill.oracle_kd import OracleKDConfig
from kdlens.distill.sp import SPConfig
from kdlens.models import FeatureTaps, ModelSpec, create_model, get_model_spec


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def softmax(row: list[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    return [e / sum(exps) for e in exps]


def kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def spec(stages: tuple[str, ...], classifier: str = "fc") -> ModelSpec:
    return ModelSpec(name="hand", build=nn.Identity, family="test", stages=stages, classifier=classifier)


def feature_batch(student: dict, teacher: dict, **fields) -> DistillBatch:
    defaults = dict(images=torch.zeros(1, 1, 1, 1), labels=torch.zeros(1, dtype=torch.long), student_logits=torch.zeros(1, 2))
    return DistillBatch(**{**defaults, **fields}, student_features=student, teacher_features=teacher)


# --- DKD ----------------------------------------------------------------------------------------


def dkd_by_hand(student, teacher, labels, tau):
    """TCKD and NCKD of mdistiller, ×τ² and averaged over samples, in plain Python: the binary
    (target, rest) distributions, and the softmax over the non-target classes alone."""
    tckd = nckd = 0.0
    for s_row, t_row, y in zip(student, teacher, labels):
        p_s, p_t = softmax([v / tau for v in s_row]), softmax([v / tau for v in t_row])
        rest_s = sum(p for j, p in enumerate(p_s) if j != y)
        rest_t = sum(p for j, p in enumerate(p_t) if j != y)
        tckd += kl([p_t[y], rest_t], [p_s[y], rest_s])
        q_s = softmax([v / tau for j, v in enumerate(s_row) if j != y])
        q_t = softmax([v / tau for j, v in enumerate(t_row) if j != y])
        nckd += kl(q_t, q_s)
    return tau**2 * tckd / len(labels), tau**2 * nckd / len(labels)


F64 = torch.float64  # exact comparisons; the float32 path is checked for safety separately
STUDENT = [[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]]
TEACHER = [[0.5, 1.5, -1.0], [2.0, 0.0, 1.0]]
LABELS = [1, 0]


def test_dkd_three_class_example_written_out():
    """Sample 1 of the example at τ=1, every number by hand."""
    s, t, y = STUDENT[0], TEACHER[0], 1
    e_s = [math.exp(v) for v in s]
    e_t = [math.exp(v) for v in t]
    b_s = [e_s[1] / sum(e_s), (e_s[0] + e_s[2]) / sum(e_s)]
    b_t = [e_t[1] / sum(e_t), (e_t[0] + e_t[2]) / sum(e_t)]
    tckd = b_t[0] * math.log(b_t[0] / b_s[0]) + b_t[1] * math.log(b_t[1] / b_s[1])
    # Non-target classes 0 and 2, renormalised: p_j / (1 - p_target).
    q_s = [e_s[0] / (e_s[0] + e_s[2]), e_s[2] / (e_s[0] + e_s[2])]
    q_t = [e_t[0] / (e_t[0] + e_t[2]), e_t[2] / (e_t[0] + e_t[2])]
    nckd = q_t[0] * math.log(q_t[0] / q_s[0]) + q_t[1] * math.log(q_t[1] / q_s[1])

    got_tckd, got_nckd = dkd_parts(torch.tensor([s], dtype=F64), torch.tensor([t], dtype=F64), torch.tensor([y]), 1.0)
    assert got_tckd.item() == pytest.approx(tckd, rel=1e-12)
    assert got_nckd.item() == pytest.approx(nckd, rel=1e-12)
    assert (tckd, nckd) == pytest.approx(dkd_by_hand([s], [t], [y], 1.0))


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_dkd_parts_match_the_hand_computation(tau):
    tckd, nckd = dkd_parts(torch.tensor(STUDENT, dtype=F64), torch.tensor(TEACHER, dtype=F64), torch.tensor(LABELS), tau)
    expected = dkd_by_hand(STUDENT, TEACHER, LABELS, tau)
    assert (tckd.item(), nckd.item()) == pytest.approx(expected, rel=1e-12)


def test_dkd_stays_finite_where_a_probability_underflows():
    """The student's non-target mass is e^-200 (0 in float32): taking the log of a softmax, as
    mdistiller does, gives inf; log-sum-exps give the float64 value."""
    student, teacher, labels = [[200.0, -200.0, 0.0]], [[-200.0, 200.0, 0.0]], [0]
    logits = torch.tensor(student, requires_grad=True)
    tckd, nckd = dkd_parts(logits, torch.tensor(teacher), torch.tensor(labels), 1.0)
    assert (tckd.item(), nckd.item()) == pytest.approx(dkd_by_hand(student, teacher, labels, 1.0), rel=1e-5)
    (tckd + nckd).backward()
    assert torch.isfinite(logits.grad).all()


def test_dkd_term_is_alpha_tckd_plus_beta_nckd_after_warmup():
    batch = DistillBatch(torch.zeros(2, 1, 1, 1), torch.tensor(LABELS), torch.tensor(STUDENT), torch.tensor(TEACHER), epoch=30)
    tckd, nckd = dkd_by_hand(STUDENT, TEACHER, LABELS, 4.0)
    total, parts = DistillLoss([DKDConfig(alpha=0.5, beta=2.0)])(batch)
    assert total.item() == pytest.approx(0.5 * tckd + 2.0 * nckd, rel=1e-5, abs=1e-6)
    assert set(parts) == {"dkd"}


def test_dkd_warmup_is_linear_from_the_first_epoch():
    """mdistiller: min(epoch / 20, 1) with epochs from 1, i.e. 1/20 in kdlens' epoch 0."""
    assert [dkd_warmup(epoch, 20) for epoch in (0, 1, 9, 18, 19, 20, 200)] == [0.05, 0.1, 0.5, 0.95, 1.0, 1.0, 1.0]
    assert dkd_warmup(0, 0) == 1.0
    loss = DistillLoss([DKDConfig()])
    values = [
        loss(DistillBatch(torch.zeros(2, 1, 1, 1), torch.tensor(LABELS), torch.tensor(STUDENT), torch.tensor(TEACHER), epoch=e))[0].item()
        for e in (0, 4, 19)
    ]
    assert values[0] == pytest.approx(values[2] / 20, rel=1e-6) and values[1] == pytest.approx(values[2] / 4, rel=1e-6)


# --- AT, SP -------------------------------------------------------------------------------------


def test_attention_transfer_by_hand_with_pooling_to_the_smaller_map():
    student = torch.tensor([[[[1.0, 0.0], [2.0, 1.0]], [[1.0, 2.0], [0.0, 1.0]]]])  # (1, 2, 2, 2)
    teacher = torch.arange(16.0).view(1, 1, 4, 4) / 4  # pooled to 2×2 by averaging 2×2 blocks
    # Student: mean over channels of f² at each position.
    at_s = [(1 + 1) / 2, (0 + 4) / 2, (4 + 0) / 2, (1 + 1) / 2]
    # Teacher: pooled values are the block means of [0..15]/4.
    pooled = [(0 + 1 + 4 + 5) / 16, (2 + 3 + 6 + 7) / 16, (8 + 9 + 12 + 13) / 16, (10 + 11 + 14 + 15) / 16]
    at_t = [v**2 for v in pooled]
    norm_s, norm_t = math.sqrt(sum(v * v for v in at_s)), math.sqrt(sum(v * v for v in at_t))
    expected = sum((a / norm_s - b / norm_t) ** 2 for a, b in zip(at_s, at_t)) / 4
    assert attention_transfer(student, teacher, 2.0).item() == pytest.approx(expected, rel=1e-6)
    assert attention_transfer(teacher, student, 2.0).item() == pytest.approx(expected, rel=1e-6)


def test_at_term_sums_the_configured_stage_pairs():
    s1, s2, t1, t2 = torch.rand(2, 3, 4, 4), torch.rand(2, 5, 2, 2), torch.rand(2, 4, 8, 8), torch.rand(2, 6, 2, 2)
    config = ATConfig(student_paths=["s1", "s2"], teacher_paths=["t1", "t2"])
    batch = feature_batch({"s1": s1, "s2": s2}, {"t1": t1, "t2": t2})
    total, _ = DistillLoss([config])(batch)
    expected = 1000 * (attention_transfer(s1, t1, 2.0) + attention_transfer(s2, t2, 2.0))
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)


def test_similarity_preserving_by_hand():
    student = torch.tensor([[1.0, 2.0], [3.0, 0.0]]).view(2, 2, 1, 1)
    teacher = torch.tensor([[0.0, 1.0, 1.0], [2.0, 0.0, 1.0]]).view(2, 3, 1, 1)
    # F Fᵀ: student [[5, 3], [3, 9]], teacher [[2, 1], [1, 5]]; each row L2-normalised.
    g_s = [[5 / math.sqrt(34), 3 / math.sqrt(34)], [3 / math.sqrt(90), 9 / math.sqrt(90)]]
    g_t = [[2 / math.sqrt(5), 1 / math.sqrt(5)], [1 / math.sqrt(26), 5 / math.sqrt(26)]]
    expected = sum((g_t[i][j] - g_s[i][j]) ** 2 for i in range(2) for j in range(2)) / 2**2
    assert similarity_preserving(student, teacher).item() == pytest.approx(expected, rel=1e-6)
    total, _ = DistillLoss([SPConfig(student_paths=["s"], teacher_paths=["t"])])(feature_batch({"s": student}, {"t": teacher}))
    assert total.item() == pytest.approx(3000 * expected, rel=1e-6)


# --- FitNet, feature matching ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape", "kind", "kernel"),
    [
        ((2, 8, 4, 4), (2, 16, 4, 4), nn.Conv2d, (1, 1)),
        ((2, 8, 8, 8), (2, 16, 4, 4), nn.Conv2d, (3, 3)),
        ((2, 8, 2, 2), (2, 16, 4, 4), nn.ConvTranspose2d, (4, 4)),
        ((2, 8, 6, 6), (2, 16, 4, 4), nn.Conv2d, (3, 3)),
    ],
)
def test_fitnet_regressor_follows_mdistiller_and_maps_onto_the_teacher_shape(student_shape, teacher_shape, kind, kernel):
    regressor = conv_regressor(student_shape, teacher_shape)
    assert type(regressor[0]) is kind and regressor[0].kernel_size == kernel
    assert isinstance(regressor[1], nn.BatchNorm2d) and isinstance(regressor[2], nn.ReLU)
    assert regressor(torch.randn(student_shape)).shape == teacher_shape


def test_fitnet_regressor_refuses_a_student_map_it_cannot_map():
    with pytest.raises(ValueError, match="no regressor from a 2×2 student hint to a 8×8"):
        conv_regressor((2, 8, 2, 2), (2, 16, 8, 8))


def test_fitnet_is_the_mse_of_the_regressed_hint_by_hand():
    student = torch.tensor([[[[1.0, -2.0], [0.5, 3.0]]]])
    teacher = torch.tensor([[[[1.0, 0.0], [1.0, 2.0]]]])
    loss = DistillLoss([FitNetConfig(student_path="s", teacher_path="t")])
    batch = feature_batch({"s": student}, {"t": teacher})
    loss.build_connectors(batch)
    conv = loss.terms[0].regressor[0]
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.zero_()
    loss.eval()  # BatchNorm at its initial running statistics: x / √(1 + 1e-5)
    scale = 1 / math.sqrt(1 + 1e-5)
    regressed = [max(v * scale, 0.0) for v in (1.0, -2.0, 0.5, 3.0)]
    expected = sum((r - t) ** 2 for r, t in zip(regressed, (1.0, 0.0, 1.0, 2.0))) / 4
    total, _ = loss(batch)
    assert total.item() == pytest.approx(100 * expected, rel=1e-6)


def test_feature_matching_is_one_minus_cosine_of_the_adapted_map_by_hand():
    student = torch.tensor([[1.0, 2.0], [0.0, 1.0]]).view(2, 1, 1, 2)
    teacher = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]])  # (2, 2, 1, 2)
    teacher = teacher.view(2, 2, 1, 2)
    loss = DistillLoss([FeatureMatchingConfig(student_path="s", teacher_path="t")])
    batch = feature_batch({"s": student}, {"t": teacher})
    loss.build_connectors(batch)
    with torch.no_grad():
        loss.terms[0].adapter.weight.copy_(torch.tensor([2.0, -1.0]).view(2, 1, 1, 1))
    # adapter(F) = [2F, -F] along channels, flattened per sample.
    adapted = [[2.0, 4.0, -1.0, -2.0], [0.0, 2.0, 0.0, -1.0]]
    targets = [[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]]

    def cosine(a, b):
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    expected = sum(1 - cosine(a, t) for a, t in zip(adapted, targets)) / 2
    total, _ = loss(batch)
    assert total.item() == pytest.approx(expected, rel=1e-6)


def test_feature_matching_resizes_the_adapted_map_to_the_teacher():
    loss = DistillLoss([FeatureMatchingConfig(student_path="s", teacher_path="t")])
    batch = feature_batch({"s": torch.rand(2, 3, 8, 8)}, {"t": torch.rand(2, 5, 4, 4)})
    loss.build_connectors(batch)
    assert loss.terms[0].adapter.weight.shape == (5, 3, 1, 1)
    assert 0.0 <= loss(batch)[0].item() <= 2.0


# --- Exp-KD ---------------------------------------------------------------------------------------

FEATURES = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [-1.0, 2.0]]]])  # (1, C=2, 2, 2)
FC_WEIGHT = torch.tensor([[1.0, 1.0], [2.0, -1.0], [-1.0, 0.0]])  # 3 classes × 2 channels


def test_class_activation_maps_by_hand():
    cams = class_activation_maps(FEATURES, FC_WEIGHT, torch.tensor([[1, 2]]))
    # Class 1: ReLU((2·F0 − F1) / 2); class 2: ReLU(−F0 / 2) = 0 everywhere.
    expected = torch.tensor([[[[1.0, 1.5], [3.5, 3.0]], [[0.0, 0.0], [0.0, 0.0]]]])
    torch.testing.assert_close(cams, expected)
    conv_weight = FC_WEIGHT.view(3, 2, 1, 1)  # a 1×1 conv classifier, as in the B-cos nets
    torch.testing.assert_close(class_activation_maps(FEATURES, conv_weight, torch.tensor([[1, 2]])), expected)


def test_cams_are_normalised_over_space_per_sample_and_class():
    cams = class_activation_maps(FEATURES, FC_WEIGHT, torch.tensor([[1, 2]]))
    maps = normalize_over_space(cams, "softmax")
    exps = [math.exp(v) for v in (1.0, 1.5, 3.5, 3.0)]
    torch.testing.assert_close(maps[0, 0].flatten(), torch.tensor([e / sum(exps) for e in exps]))
    torch.testing.assert_close(maps[0, 1], torch.full((2, 2), 0.25))  # an all-zero map is uniform
    batch = normalize_over_space(torch.rand(3, 4, 5, 5) * 10, "softmax", temperature=2.0)
    torch.testing.assert_close(batch.sum(dim=(2, 3)), torch.ones(3, 4))  # sums to 1 over h·w, not over the batch
    l2 = normalize_over_space(cams, "l2")
    norm = math.sqrt(1 + 1.5**2 + 3.5**2 + 3**2)
    torch.testing.assert_close(l2[0, 0].flatten(), torch.tensor([1.0, 1.5, 3.5, 3.0]) / norm)


class TinyCNN(nn.Module):
    """A conv feature map and a linear classifier on its pooled output: CAMs are exact here."""

    def __init__(self, channels: int = 4, num_classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, channels, 3, padding=1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


TINY_SPEC = spec(("features",))


def cam_batch(student: nn.Module, teacher: nn.Module, images: torch.Tensor) -> DistillBatch:
    with FeatureTaps(teacher, ["features"]) as teacher_taps, torch.no_grad():
        teacher_logits = teacher(images)
    with FeatureTaps(student, ["features"]) as student_taps:
        logits = student(images)
    labels = torch.zeros(len(images), dtype=torch.long)
    return DistillBatch(images, labels, logits, teacher_logits, student_taps.as_dict(), teacher_taps.as_dict())


def test_expkd_is_zero_for_the_teacher_itself_and_positive_otherwise():
    teacher = TinyCNN().eval().requires_grad_(False)
    images = torch.randn(2, 3, 4, 4)
    for student, zero in ((teacher, True), (TinyCNN(), False)):
        loss = DistillLoss([ExpKDConfig(top_k=3)], TermContext(student, TINY_SPEC, teacher, TINY_SPEC))
        total, _ = loss(cam_batch(student, teacher, images))
        assert (total.item() == 0.0) is zero


def test_expkd_refuses_a_map_the_classifier_does_not_read():
    teacher = TinyCNN(channels=4).eval()
    loss = DistillLoss([ExpKDConfig()], TermContext(TinyCNN(channels=4), TINY_SPEC, teacher, TINY_SPEC))
    batch = feature_batch({"features": torch.rand(1, 7, 2, 2)}, {"features": torch.rand(1, 4, 2, 2)})
    with pytest.raises(ValueError, match="student classifier reads 4 channels but the student feature map has 7"):
        loss.build_connectors(batch)


# --- Oracle KD ------------------------------------------------------------------------------------


def linear_teacher(weight: list[list[float]]) -> nn.Module:
    """T(x) = W·vec(x), frozen in eval mode."""
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(len(weight[0]), len(weight), bias=False))
    with torch.no_grad():
        teacher[1].weight.copy_(torch.tensor(weight))
    return teacher.eval().requires_grad_(False)


W = [[1.0, -1.0, 0.5], [0.0, 2.0, -1.0]]


def reinforced_by_hand(x: list[float], y: int, gamma: float) -> list[float]:
    """∂CE(Wx, y)/∂x = Wᵀ(softmax(Wx) − e_y); x* = x − γ·g ⊙ |x|."""
    p = softmax([sum(w * v for w, v in zip(row, x)) for row in W])
    error = [p_k - (k == y) for k, p_k in enumerate(p)]
    grad = [sum(W[k][i] * error[k] for k in range(len(W))) for i in range(len(x))]
    return [v - gamma * g * abs(v) for v, g in zip(x, grad)]


def test_reinforced_input_matches_the_closed_form_gradient():
    teacher = linear_teacher(W)
    x, y = [0.5, -1.0, 2.0], 0
    got = reinforced_inputs(teacher, torch.tensor([x]).view(1, 1, 1, 3), torch.tensor([y]), gamma=0.5, iterations=1)
    torch.testing.assert_close(got.flatten(), torch.tensor(reinforced_by_hand(x, y, 0.5)))
    twice = reinforced_inputs(teacher, torch.tensor([x]).view(1, 1, 1, 3), torch.tensor([y]), gamma=0.5, iterations=2)
    torch.testing.assert_close(twice.flatten(), torch.tensor(reinforced_by_hand(reinforced_by_hand(x, y, 0.5), y, 0.5)))


def test_reinforcement_of_a_sample_does_not_depend_on_the_batch_size():
    """A batch-mean CE would shrink each sample's step by 1/B."""
    teacher = create_model("resnet8", num_classes=3).eval().requires_grad_(False)
    images, labels = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 1])
    alone = reinforced_inputs(teacher, images[:1], labels[:1], gamma=0.5, iterations=2)
    in_batch = reinforced_inputs(teacher, images, labels, gamma=0.5, iterations=2)
    torch.testing.assert_close(in_batch[:1], alone, rtol=1e-5, atol=1e-6)
    assert not torch.equal(alone, images[:1])


def test_oracle_kd_term_is_kd_from_the_teacher_on_the_reinforced_input():
    teacher = linear_teacher(W)
    student = linear_teacher([[0.3, 0.2, -0.1], [0.1, -0.4, 0.2]]).requires_grad_(True)
    images, labels = torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.0, -0.5]]).view(2, 1, 1, 3), torch.tensor([0, 1])
    loss = DistillLoss([OracleKDConfig(temperature=2.0, gamma=0.5)], TermContext(student, spec(()), teacher, spec(())))
    student_logits = student(images)
    total, parts = loss(DistillBatch(images, labels, student_logits, teacher(images)))
    reinforced = torch.tensor([reinforced_by_hand([0.5, -1.0, 2.0], 0, 0.5), reinforced_by_hand([1.0, 0.0, -0.5], 1, 0.5)])
    expected = kd_divergence(student_logits, reinforced @ torch.tensor(W).T, 2.0)
    assert total.item() == pytest.approx(expected.item(), rel=1e-6) and set(parts) == {"oracle_kd"}


# --- defaults, pairing, validation ----------------------------------------------------------------


def test_published_defaults():
    assert DKDConfig().model_dump(include={"weight", "alpha", "beta", "temperature", "warmup_epochs"}) == {
        "weight": 1.0, "alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup_epochs": 20
    }
    assert (FitNetConfig().weight, ATConfig().weight, ATConfig().exponent, SPConfig().weight) == (100.0, 1000.0, 2.0, 3000.0)
    assert FeatureMatchingConfig().weight == 1.0
    assert (ExpKDConfig().top_k, ExpKDConfig().normalize, ExpKDConfig().temperature) == (40, "softmax", 1.0)
    oracle = OracleKDConfig()
    assert (oracle.weight, oracle.temperature, oracle.gamma, oracle.iterations) == (1.0, 4.0, 0.5, 1)


def test_default_paths_pair_the_deepest_stages():
    student, teacher = spec(("s1", "s2", "s3")), spec(("t1", "t2", "t3", "t4"))
    context = TermContext(nn.Identity(), student, nn.Identity(), teacher)
    paths = {
        config.name: DistillLoss([config], context).terms[0].feature_paths()
        for config in (ATConfig(), SPConfig(), FitNetConfig(), FeatureMatchingConfig())
    }
    assert paths["at"] == (["s1", "s2", "s3"], ["t2", "t3", "t4"])
    assert paths["sp"] == (["s3"], ["t4"])
    assert paths["fitnet"] == (["s2"], ["t3"])
    assert paths["feature_matching"] == (["s3"], ["t4"])
    one_side = DistillLoss([FitNetConfig(student_path="s1")], context).terms[0].feature_paths()
    assert one_side == (["s1"], ["t3"])


def test_path_lists_must_come_in_equal_pairs():
    base = {"data": {"name": "shapes"}, "model": {"name": "resnet8"}, "teacher": {"name": "resnet8", "checkpoint": "t.ckpt"}}
    with pytest.raises(ConfigError, match="student_paths has 2 paths but teacher_paths has 1"):
        validate_config({**base, "losses": [{"name": "at", "student_paths": ["a", "b"], "teacher_paths": ["c"]}]})
    with pytest.raises(ConfigError, match="give student_paths and teacher_paths together"):
        validate_config({**base, "losses": [{"name": "sp", "student_paths": ["a"]}]})
    with pytest.raises(ConfigError, match="losses.0.dkd.temperature"):
        validate_config({**base, "losses": [{"name": "dkd", "temperature": 0}]})


# --- gradients ------------------------------------------------------------------------------------

METHODS = {
    "dkd": DKDConfig(),
    "fitnet": FitNetConfig(),
    "at": ATConfig(),
    "sp": SPConfig(),
    "feature_matching": FeatureMatchingConfig(),
    "expkd": ExpKDConfig(),
    "oracle_kd": OracleKDConfig(),
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_gradients_reach_student_and_connectors_but_never_the_teacher(method):
    """resnet8 from wrn_16_2: every stage differs in channels and in module path."""
    student, student_spec = create_model("resnet8", num_classes=3), get_model_spec("resnet8")
    teacher, teacher_spec = create_model("wrn_16_2", num_classes=3).eval().requires_grad_(False), get_model_spec("wrn_16_2")
    loss = DistillLoss([METHODS[method]], TermContext(student, student_spec, teacher, teacher_spec))
    student_paths, teacher_paths = loss.feature_paths()
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    with FeatureTaps(student, student_paths) as student_taps, FeatureTaps(teacher, teacher_paths) as teacher_taps:

        def distill_batch() -> DistillBatch:
            with torch.no_grad():
                teacher_logits = teacher(images)
            logits = student(images)
            return DistillBatch(images, labels, logits, teacher_logits, student_taps.as_dict(), teacher_taps.as_dict(), epoch=25)

        with torch.no_grad():
            loss.build_connectors(distill_batch())
        total, _ = loss(distill_batch())
        total.backward()

    assert total.item() > 0
    assert sum(p.grad.abs().sum() for p in student.parameters() if p.grad is not None) > 0
    for parameter in loss.parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0
    assert (len(list(loss.parameters())) > 0) is (method in ("fitnet", "feature_matching"))
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())


def test_oracle_kd_lrp_variant_moves_the_input_along_the_teachers_relevance():
    from kdlens.distill import reinforced_inputs
    from kdlens.explain import explain

    torch.manual_seed(0)
    teacher = create_model("resnet8", 4, 3).eval().requires_grad_(False)
    images, labels = torch.randn(3, 3, 16, 16), torch.tensor([0, 1, 2])
    relevance = explain(teacher, images, labels, "lrp", reduce="none")
    reinforced = reinforced_inputs(teacher, images, labels, gamma=0.5, iterations=1, relevance="lrp")
    assert torch.allclose(reinforced, images + 0.5 * relevance, atol=1e-6)
    assert all(p.grad is None for p in teacher.parameters())
