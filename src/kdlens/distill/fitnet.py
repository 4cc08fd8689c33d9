"""FitNets hints (Romero et al., ICLR 2015) with mdistiller's convolutional regressor."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from kdlens.distill.base import DistillBatch, TermContext, register_loss
from kdlens.distill.features import FeaturePairConfig, FeatureTerm, resolve_pair


class FitNetConfig(FeaturePairConfig):
    """Default hint: the middle stage pair. Weight 100 as in mdistiller (CE weight 1 separately);
    the original two-stage schedule is ``active_epochs`` on this and the other terms."""

    name: Literal["fitnet"] = "fitnet"
    weight: float = 100.0


def conv_regressor(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Sequential:
    """mdistiller's ``ConvReg``: a convolution mapping the student hint (B, C_s, H_s, W_s) onto the
    teacher's (B, C_t, H_t, W_t), then BatchNorm and ReLU. H_s = 2·H_t: 3×3 stride-2 conv;
    2·H_s = H_t: 4×4 stride-2 transposed conv; H_s ≥ H_t: (1 + H_s − H_t)×(1 + W_s − W_t) conv
    without padding (1×1 when the sizes match)."""
    _, s_channels, s_height, s_width = student_shape
    _, t_channels, t_height, t_width = teacher_shape
    if s_height == 2 * t_height:
        conv: nn.Module = nn.Conv2d(s_channels, t_channels, 3, stride=2, padding=1)
    elif 2 * s_height == t_height:
        conv = nn.ConvTranspose2d(s_channels, t_channels, 4, stride=2, padding=1)
    elif s_height >= t_height and s_width >= t_width:
        conv = nn.Conv2d(s_channels, t_channels, (1 + s_height - t_height, 1 + s_width - t_width))
    else:
        raise ValueError(
            f"fitnet: no regressor from a {s_height}×{s_width} student hint to a {t_height}×{t_width} "
            "teacher hint; pick hint stages where the student map is at least as large, or half as large"
        )
    return nn.Sequential(conv, nn.BatchNorm2d(t_channels), nn.ReLU())


@register_loss(FitNetConfig)
class FitNetLoss(FeatureTerm):
    """MSE(regressor(student hint), teacher hint), averaged over all elements."""

    def __init__(self, config: FitNetConfig, context: TermContext | None = None) -> None:
        super().__init__(config, context)
        self.pairs = [resolve_pair(config, context, "fitnet", default="middle")]
        self.regressor: nn.Sequential | None = None

    def build_connectors(self, batch: DistillBatch) -> None:
        [(student, teacher)] = self.feature_maps(batch)
        self.regressor = conv_regressor(tuple(student.shape), tuple(teacher.shape)).to(student.device)

    def forward(self, batch: DistillBatch) -> Tensor:
        [(student, teacher)] = self.feature_maps(batch)
        return F.mse_loss(self.regressor(student), teacher)
