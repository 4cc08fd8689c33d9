"""Batched statistics on per-sample rows: the building blocks the explanation metrics share.

Every function takes tensors whose first dimension is the sample and returns one value per sample,
computed in float64, with NaN where the statistic is undefined (constant input, no positives, ...).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor


def flatten(t: Tensor) -> Tensor:
    """``(B, ...)`` -> ``(B, N)``."""
    return t.reshape(len(t), -1)


def prepare_attributions(a: Tensor, abs: bool, normalise: bool, group_size: int = 1) -> Tensor:
    """Attributions as the metrics read them (Quantus's order): divided by the largest ``|a|`` of each
    group of ``group_size`` consecutive samples (1: per sample; Quantus normalises over its whole
    batch), then made absolute. Maps that are all zero stay zero."""
    a = a.detach() if a.is_floating_point() else a.float()
    if normalise:
        grouped = a.reshape(len(a) // group_size, -1)
        peak = grouped.abs().amax(1, keepdim=True)
        a = (grouped / torch.where(peak == 0, torch.ones_like(peak), peak)).view_as(a)
    return a.abs() if abs else a


def average_ranks(v: Tensor) -> Tensor:
    """1-based ranks along dim 1, ties sharing their average rank (``scipy.stats.rankdata``)."""
    ordered = v.sort(dim=1).values
    below = torch.searchsorted(ordered, v.contiguous(), right=False)
    up_to = torch.searchsorted(ordered, v.contiguous(), right=True)
    return (below + up_to + 1).double() / 2


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of each row pair; NaN when a row is constant (as ``scipy.stats.pearsonr``)."""
    a = a.double() - a.double().mean(1, keepdim=True)
    b = b.double() - b.double().mean(1, keepdim=True)
    denominator = (a.square().sum(1) * b.square().sum(1)).sqrt()
    r = (a * b).sum(1) / denominator
    return torch.where(denominator > 0, r.clamp(-1, 1), torch.full_like(r, float("nan")))


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of each row pair, ties ranked by their average (``scipy.stats.spearmanr``)."""
    return pearson(average_ranks(a), average_ranks(b))


def cosine(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity of each flattened pair; NaN when either is all zero."""
    a, b = flatten(a).double(), flatten(b).double()
    denominator = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(denominator > 0, (a * b).sum(1) / denominator, torch.full_like(denominator, float("nan")))


def roc_auc(scores: Tensor, labels: Tensor) -> Tensor:
    """ROC-AUC of ``scores`` against boolean ``labels`` per row, ties counting one half (the Mann–Whitney
    form of ``sklearn.metrics.roc_auc_score``); NaN when a row has no positive or no negative."""
    labels = labels.bool()
    n_pos = labels.sum(1).double()
    n_neg = labels.shape[1] - n_pos
    rank_sum = (average_ranks(scores) * labels).sum(1)
    auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return torch.where((n_pos > 0) & (n_neg > 0), auc, torch.full_like(auc, float("nan")))


def average_precision(scores: Tensor, labels: Tensor) -> Tensor:
    """Average precision per row as ``sklearn.metrics.average_precision_score``: every positive
    contributes the precision at the lowest score of its tie group; NaN when a row has no positive."""
    labels = labels.bool()
    order = scores.argsort(dim=1, descending=True, stable=True)
    ranked = scores.gather(1, order)
    hits = labels.gather(1, order)
    true_positives = hits.double().cumsum(1)
    # Last position of each tie group: with the scores negated they are ascending.
    descending_key = (-ranked).contiguous()
    group_end = torch.searchsorted(descending_key, descending_key, right=True) - 1
    precision_at_end = true_positives.gather(1, group_end) / (group_end + 1)
    n_pos = labels.sum(1).double()
    ap = (precision_at_end * hits).sum(1) / n_pos
    return torch.where(n_pos > 0, ap, torch.full_like(ap, float("nan")))


def ssim(a: Tensor, b: Tensor, *, flat: bool = False, win_size: int = 7, k1: float = 0.01, k2: float = 0.03) -> Tensor:
    """Mean structural similarity of each pair as ``skimage.metrics.structural_similarity`` with a
    uniform ``win_size`` window, sample covariance and ``data_range`` = the pair's joint max − min.

    ``(B, C, H, W)`` maps are compared per channel over (H, W) and the channels averaged; with
    ``flat=True`` each sample is flattened to one 1-D signal first (what Quantus does).
    """
    a, b = a.double(), b.double()
    joint = torch.cat([flatten(a), flatten(b)], 1)
    data_range = joint.amax(1) - joint.amin(1)
    if flat:
        x, y = flatten(a)[:, None], flatten(b)[:, None]
        pool, n_dims, per_sample = partial(F.avg_pool1d, kernel_size=win_size, stride=1), 1, 1
    else:
        x, y = a.flatten(0, 1)[:, None], b.flatten(0, 1)[:, None]
        pool, n_dims, per_sample = partial(F.avg_pool2d, kernel_size=win_size, stride=1), 2, a.shape[1]
    if min(x.shape[2:]) < win_size:
        raise ValueError(f"SSIM needs maps of at least {win_size} along every axis, got {tuple(x.shape[2:])}")
    # Pooling without padding keeps exactly the positions skimage averages after cropping its border.
    ux, uy = pool(x), pool(y)
    cov_norm = win_size**n_dims / (win_size**n_dims - 1)
    vx = cov_norm * (pool(x * x) - ux * ux)
    vy = cov_norm * (pool(y * y) - uy * uy)
    vxy = cov_norm * (pool(x * y) - ux * uy)
    r = data_range.repeat_interleave(per_sample).view(-1, *([1] * (n_dims + 1)))
    c1, c2 = (k1 * r) ** 2, (k2 * r) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return flatten(s).mean(1).view(len(a), per_sample).mean(1)


def topk_mask(scores: Tensor, k: int) -> Tensor:
    """Boolean ``(B, N)`` mask of each row's ``k`` largest entries (ties broken towards lower indices)."""
    flat = flatten(scores)
    order = flat.argsort(dim=1, descending=True, stable=True)[:, :k]
    return torch.zeros_like(flat, dtype=torch.bool).scatter_(1, order, True)


def nan_where(condition: Tensor, values: Tensor) -> Tensor:
    """``values`` as float64 with NaN where ``condition`` holds."""
    values = values.double()
    return torch.where(condition, torch.full_like(values, float("nan")), values)


def nanmax(values: Tensor) -> Tensor:
    """Row maxima ignoring NaN (NaN when a whole row is NaN), as ``np.nanmax(values, axis=1)``."""
    peak = values.masked_fill(values.isnan(), -torch.inf).amax(1)
    return peak.masked_fill(values.isnan().all(1), torch.nan)
