"""Frozen teacher maps on datasets of native-size images (imagefolder-style): maps computed on the
eval image (Resize + CenterCrop) must reach each training crop at the same pixels as the image."""

import numpy as np
import pytest
import torch
from conftest import tiny_experiment
from PIL import Image
from torchvision.transforms import v2

from kdlens.config import validate_config
from kdlens.data import build_data
from kdlens.data.common import DictDataset, EvalGeometry, make_transforms
from kdlens.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD, ImageFolderConfig
from kdlens.explain.cache import default_cache_dir
from kdlens.models import create_model
from kdlens.runs.checkpoints import checkpoint_info, save_model_checkpoint
from kdlens.training.run import run_experiment

SIZES = [(40, 56), (64, 48), (33, 77), (50, 30), (45, 45)]  # (h, w): landscape, portrait, square


def smooth_image(h: int, w: int, phase: float) -> np.ndarray:
    """Low-frequency content (resampling barely blurs it); red rises to the right, so a flip shows."""
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    red = 40 + 170 * (0.6 * xx + 0.4 * yy**2)
    green = 128 + 100 * np.sin(2 * np.pi * (xx + phase))
    blue = 128 + 100 * np.cos(3 * yy + phase)
    return np.stack([red, green, blue], -1).astype(np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagefolder")
    for split in ("train", "val"):
        for label in range(2):
            (root / split / f"class{label}").mkdir(parents=True)
            for k, (h, w) in enumerate(SIZES):
                Image.fromarray(smooth_image(h, w, label + k / 5)).save(root / split / f"class{label}" / f"{k}.png")
    return root


class ListSource:
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": Image.fromarray(self.images[i]), "label": 0}


def assert_maps_follow_the_crops(train: DictDataset, seeds=range(4)) -> None:
    """Teacher map = the eval image's own red channel; a ones map measures what the eval crop covered.
    In each training crop, where fully covered, the delivered map must equal the crop's red channel."""
    plain = train.unaugmented()
    red = torch.stack([plain[i]["image"][:1] for i in range(len(train))])
    attached = train.attach(spatial={"teacher_map": red, "cover": torch.ones_like(red)})
    checked = flipped = 0
    for seed in seeds:
        torch.manual_seed(seed)
        for i in range(len(attached)):
            sample = attached[i]
            assert sample["teacher_map"].shape == sample["image"][:1].shape
            covered = sample["cover"][0] > 0.999
            if covered.sum() < 4:
                continue
            error = (sample["teacher_map"][0] - sample["image"][0])[covered].abs()
            # the red channel spans about 3 (normalised units); half an eval pixel off gives ~0.06
            assert error.mean() < 0.02 and error.max() < 0.15, (seed, i, error.mean(), error.max())
            image_red = sample["image"][0]
            flipped += bool(image_red[:, -1].mean() < image_red[:, 0].mean())
            checked += 1
    assert checked >= len(attached) * len(seeds) // 2 and flipped > 0


def test_imagefolder_training_crops_get_the_matching_part_of_eval_frame_maps(folder):
    bundle = build_data(ImageFolderConfig(root=str(folder), image_size=16, resize_size=20, val_fraction=0.2))
    assert_maps_follow_the_crops(bundle.train)


@pytest.mark.parametrize("eval_ops", [
    [v2.Resize((18, 24)), v2.CenterCrop(16)],  # (h, w) resize, changes the aspect ratio
    [v2.Resize(12), v2.CenterCrop(16)],  # crop larger than the image: torchvision pads
    [v2.Resize(16, max_size=20), v2.CenterCrop((12, 16))],
    [v2.CenterCrop(24)],
], ids=["resize_hw", "padded_crop", "max_size", "crop_only"])
def test_other_eval_geometries(eval_ops):
    images = [smooth_image(h, w, k / 5) for k, (h, w) in enumerate(SIZES)]
    transforms = make_transforms(IMAGENET_MEAN, IMAGENET_STD, [v2.RandomResizedCrop(16), v2.RandomHorizontalFlip()], eval_ops)
    train = DictDataset(ListSource(images), transforms.train, eval_transform=transforms.eval)
    geometry = EvalGeometry.of(transforms.eval)
    for i, (h, w) in enumerate(SIZES):  # the geometry's output size is the eval transform's
        assert geometry.frame((h, w))[2] == tuple(train.unaugmented()[i]["image"].shape[-2:])
    assert_maps_follow_the_crops(train)


def test_without_augmentation_the_rows_arrive_unchanged(folder):
    bundle = build_data(ImageFolderConfig(root=str(folder), image_size=16, resize_size=20, augment=False))
    rows = torch.rand(len(bundle.train), 1, 16, 16)
    attached = bundle.train.attach(spatial={"teacher_map": rows})
    assert all(torch.equal(attached[i]["teacher_map"], rows[i]) for i in range(len(attached)))


def test_unsupported_eval_ops_are_named():
    transforms = make_transforms(IMAGENET_MEAN, IMAGENET_STD, [v2.RandomHorizontalFlip()], [v2.Resize(20), v2.Pad(2)])
    train = DictDataset(ListSource([smooth_image(20, 30, 0)]), transforms.train, eval_transform=transforms.eval)
    with pytest.raises(ValueError, match="Pad"):
        train.attach(spatial={"teacher_map": torch.zeros(1, 1, 24, 34)})


def test_frozen_e2kd_trains_on_an_imagefolder_of_mixed_sizes(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("KDLENS_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    info = checkpoint_info("resnet8", num_classes=2, in_channels=3, image_size=(16, 16), class_names=["class0", "class1"],
                           mean=IMAGENET_MEAN, std=IMAGENET_STD)
    teacher = save_model_checkpoint(tmp_path / "teacher.ckpt", create_model("resnet8", 2, 3), info)
    raw = tiny_experiment(
        tmp_path / "frozen",
        data={"name": "imagefolder", "root": str(folder), "image_size": 16, "resize_size": 20, "batch_size": 4},
        teacher={"name": "resnet8", "checkpoint": str(teacher)},
        losses=[{"name": "kd", "temperature": 4.0}, {"name": "e2kd", "weight": 1.0, "frozen_teacher": True}],
        recipe={"epochs": 1, "optimizer": {"name": "sgd", "lr": 0.05}, "schedule": {"name": "constant"}},
        trainer={"progress_bar": False, "log_every_n_steps": 1, "limit_train_batches": 2, "limit_val_batches": 1},
    )
    run = run_experiment(validate_config(raw))
    metrics = (run.run_dir / "logs" / "csv" / "version_0" / "metrics.csv").read_text()
    assert "train/e2kd" in metrics.splitlines()[0]
    assert len(list(default_cache_dir().glob("*.pt"))) == 2  # maps and logits, in this test's cache
