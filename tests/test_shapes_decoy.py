"""The shapes dataset's decoy-patch shortcut: determinism, rates, groups, masks, the shortcut gap and
the decoy-energy metric."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from kdlens.data import build_data
from kdlens.data.shapes import PALETTE, PATCH_FRAME, PATCH_MARGIN, ShapesConfig, generate_shapes
from kdlens.metrics import create_metrics
from kdlens.metrics.classification import group_accuracy
from kdlens.metrics.explanation_evaluation import evaluate_explanations


def patch_arrays(n: int = 400, split: str = "train", shortcut: float | None = 0.9, placement: str = "corner", seed: int = 0):
    return generate_shapes(n, num_classes=4, image_size=32, seed=seed, split=split, shortcut=shortcut, kind="patch",
                           patch_size=6, patch_placement=placement)


def test_decoy_patches_are_deterministic_per_seed_and_split():
    a, b = patch_arrays(), patch_arrays()
    for field in ("images", "masks", "labels", "decoys", "decoy_masks", "backgrounds"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert not torch.equal(a.decoys, patch_arrays(seed=1).decoys)
    assert not torch.equal(a.images, patch_arrays(split="test").images)


@pytest.mark.parametrize("placement", ["corner", "random"])
def test_decoy_patch_pixels_frame_and_masks(placement):
    arrays = patch_arrays(placement=placement)
    decoy = arrays.decoy_masks.bool()
    assert (decoy.sum((1, 2, 3)) == 36).all()  # every patch is whole: 6 × 6
    if placement == "corner":
        expected = torch.zeros(32, 32, dtype=torch.bool)
        expected[PATCH_MARGIN:PATCH_MARGIN + 6, PATCH_MARGIN:PATCH_MARGIN + 6] = True
        assert (decoy[:, 0] == expected).all()
    else:
        assert len({tuple(m.nonzero()[0].tolist()) for m in decoy[:, 0]}) > 50  # placed anywhere
    assert not (arrays.masks.bool() & decoy).any()  # the shape mask is only where the shape shows
    for i in range(20):
        ys, xs = decoy[i, 0].nonzero(as_tuple=True)
        top, left = ys.min().item(), xs.min().item()
        patch = arrays.images[i, :, top:top + 6, left:left + 6]
        frame = torch.ones(6, 6, dtype=torch.bool)
        frame[1:5, 1:5] = False
        assert (patch[:, frame] == torch.tensor(PATCH_FRAME, dtype=torch.uint8)[:, None]).all()
        colour = torch.tensor(PALETTE[int(arrays.decoys[i])][1], dtype=torch.uint8)
        assert (patch[:, 1:5, 1:5] == colour[:, None, None]).all()


def test_decoy_patch_keeps_the_background_kinds_draws_elsewhere():
    patched = patch_arrays(shortcut=0.9)
    plain = generate_shapes(400, num_classes=4, image_size=32, seed=0, split="train", shortcut=None)
    outside = ~patched.decoy_masks.bool().expand(-1, 3, -1, -1)
    assert torch.equal(patched.images[outside], plain.images[outside])
    assert torch.equal(patched.labels, plain.labels) and torch.equal(patched.backgrounds, plain.backgrounds)


def test_decoy_shortcut_rates_groups_and_independent_backgrounds():
    train = patch_arrays(4000, "train", shortcut=0.9)
    shifted = patch_arrays(4000, "shifted", shortcut=None)
    assert abs((train.decoys == train.labels).float().mean().item() - 0.9) < 0.02
    assert abs((shifted.decoys == shifted.labels).float().mean().item() - 0.25) < 0.03
    # Backgrounds carry no class information when the decoy is the shortcut.
    assert abs((train.backgrounds == train.labels).float().mean().item() - 0.25) < 0.03
    assert torch.equal(train.groups, train.labels * 4 + train.decoys)


def test_decoy_bundle_carries_both_masks_through_augmentation():
    cfg = ShapesConfig(num_classes=4, train_size=64, test_size=40, shortcut=0.9, shortcut_kind="patch")
    bundle = build_data(cfg)
    assert bundle.group_names[:2] == ["circle/patch-red", "circle/patch-green"]
    assert bundle.aligned_groups == frozenset({0, 5, 10, 15})
    for split in (bundle.train, bundle.test, bundle.extra_splits["shifted"]):
        sample = split[3]
        assert sample["decoy_mask"].shape == (1, 32, 32) and sample["decoy_mask"].sum() > 0
        assert sample["mask"].dtype == sample["decoy_mask"].dtype == torch.float32
    # The training crop/flip moves the decoy mask with the image: under it lie exactly the patch's
    # two colours, its white frame (at most 4 px of it cropped away) and its flat colour.
    mean, std = torch.tensor(bundle.mean)[:, None], torch.tensor(bundle.std)[:, None]
    for i in range(10):
        sample = bundle.train[i]
        decoy = sample["decoy_mask"][0] > 0.5
        pixels = ((sample["image"][:, decoy] * std + mean) * 255).round()
        colours = {tuple(p) for p in pixels.T.tolist()}
        assert len(colours) == 2 and (255.0, 255.0, 255.0) in colours, colours


def test_patch_must_fit_the_image():
    with pytest.raises(ValidationError, match="patch_size=13 is too large"):
        ShapesConfig(image_size=32, shortcut_kind="patch", patch_size=13)
    ShapesConfig(image_size=32, shortcut_kind="background", patch_size=13)  # unused without a patch


def test_shortcut_gap_by_hand():
    logits = torch.eye(2)[[0, 0, 1, 1, 0, 1]] * 5  # predictions 0 0 1 1 0 1
    labels = torch.tensor([0, 0, 1, 1, 1, 0])
    groups = labels * 2 + torch.tensor([0, 0, 1, 0, 1, 1])  # aligned: groups 0 and 3
    report = group_accuracy(logits, labels, groups, aligned_groups=frozenset({0, 3}))
    # aligned samples 0, 1, 2, 4: correct 1 1 1 0 -> 0.75; the others 3, 5: correct 1 0 -> 0.5
    assert report["shortcut_gap"] == pytest.approx(0.25)
    assert group_accuracy(logits, labels, torch.zeros(6, dtype=torch.long), aligned_groups=frozenset({0}))["shortcut_gap"] is None


def test_decoy_energy_by_hand():
    metric = create_metrics(["decoy_energy"])["decoy_energy"]
    assert metric.mask_key == "decoy_mask" and not metric.higher_is_better
    x = torch.zeros(2, 3, 4, 4)
    a = torch.zeros(2, 1, 4, 4)
    a[0, 0, 0, 0], a[0, 0, 3, 3], a[0, 0, 1, 1] = 3.0, 1.0, -5.0  # positive mass 4, 3 of it on the decoy
    a[1, 0, 2, 2] = 2.0  # nothing on the decoy
    decoy = torch.zeros(2, 1, 4, 4)
    decoy[:, :, :2, :2] = 1
    scores = metric(model=None, x=x, y=None, a=a, s=decoy)
    assert scores.tolist() == pytest.approx([0.75, 0.0])


def test_evaluate_explanations_scores_decoy_and_shape_masks():
    cfg = ShapesConfig(num_classes=4, train_size=32, test_size=16, shortcut=0.9, shortcut_kind="patch", augment=False)
    bundle = build_data(cfg)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten())
    metrics = create_metrics(["decoy_energy", "energy_pointing_game"])
    results = evaluate_explanations({"m": model}, bundle.test, ["saliency"], metrics, keep_maps=True)
    maps = results.maps[("m", "saliency")].clamp(min=0).sum(1)
    for row in results.scores:
        sample = bundle.test[row["index"]]
        a = maps[row["index"]]
        assert row["decoy_energy"] == pytest.approx((a * sample["decoy_mask"][0]).sum().item() / a.sum().item(), rel=1e-5)
        assert row["energy_pointing_game"] == pytest.approx((a * sample["mask"][0]).sum().item() / a.sum().item(), rel=1e-5)
