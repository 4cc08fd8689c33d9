import math

import pytest
import torch

from kdlens.distill import DistillBatch, DistillLoss, kd_divergence
from kdlens.distill.kd import CEConfig, KDConfig


def softmax(row, tau):
    exps = [math.exp(v / tau) for v in row]
    return [e / sum(exps) for e in exps]


def kd_by_hand(student, teacher, tau):
    """τ²·mean over samples of Σ_c p_t log(p_t / p_s), written out in plain Python."""
    total = 0.0
    for s_row, t_row in zip(student, teacher):
        p_s, p_t = softmax(s_row, tau), softmax(t_row, tau)
        total += sum(t * math.log(t / s) for s, t in zip(p_s, p_t))
    return tau**2 * total / len(student)


STUDENT = [[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]]
TEACHER = [[0.5, 1.5, -1.0], [2.0, 0.0, 1.0]]


@pytest.mark.parametrize("tau", [1.0, 2.0, 4.0])
def test_kd_matches_the_formula_by_hand(tau):
    value = kd_divergence(torch.tensor(STUDENT), torch.tensor(TEACHER), tau)
    assert value.item() == pytest.approx(kd_by_hand(STUDENT, TEACHER, tau), rel=1e-6)


def test_kd_is_zero_when_student_equals_teacher_and_grows_with_difference():
    logits = torch.tensor(TEACHER)
    assert kd_divergence(logits, logits, 4.0).item() == pytest.approx(0.0, abs=1e-7)
    assert kd_divergence(logits + torch.tensor([[0.0, 1.0, 0.0]]), logits, 4.0) > 0


def test_alpha_mix_is_expressed_by_weights_and_keeps_tau_squared_at_alpha_one():
    student = torch.tensor(STUDENT, requires_grad=True)
    labels = torch.tensor([1, 2])
    batch = DistillBatch(torch.zeros(2, 3, 4, 4), labels, student, torch.tensor(TEACHER))
    ce = torch.nn.functional.cross_entropy(student, labels).item()
    kd = kd_by_hand(STUDENT, TEACHER, 4.0)
    for alpha in (0.0, 0.25, 0.5, 0.75, 1.0):
        loss = DistillLoss([CEConfig(weight=1 - alpha), KDConfig(weight=alpha, temperature=4.0)])
        total, parts = loss(batch)
        assert total.item() == pytest.approx(alpha * kd + (1 - alpha) * ce, rel=1e-6)
        assert set(parts) == {"ce", "kd"}


def test_duplicate_terms_log_under_distinct_names_and_teacher_need_is_declared():
    loss = DistillLoss([CEConfig(), CEConfig(label_smoothing=0.1)])
    assert loss.log_names == ["ce", "ce_1"]
    assert not loss.needs_teacher
    assert DistillLoss([KDConfig()]).needs_teacher


def test_terms_count_only_in_their_active_epochs():
    student = torch.tensor(STUDENT)
    loss = DistillLoss([CEConfig(active_epochs=(2, None)), KDConfig(active_epochs=(0, 2))])
    for epoch, names in ((0, {"kd"}), (1, {"kd"}), (2, {"ce"}), (9, {"ce"})):
        _, parts = loss(DistillBatch(torch.zeros(2, 3, 4, 4), torch.tensor([1, 2]), student, torch.tensor(TEACHER), epoch=epoch))
        assert set(parts) == names
    with pytest.raises(RuntimeError, match="no loss term is active"):
        DistillLoss([CEConfig(active_epochs=(1, 2))])(DistillBatch(torch.zeros(2, 3, 4, 4), torch.tensor([1, 2]), student, epoch=0))
