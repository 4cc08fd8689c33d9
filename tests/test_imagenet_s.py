import numpy as np
import pytest
import torch
from PIL import Image

from kdlens.data import DataError, DatasetNotFoundError, build_data
from kdlens.data.imagenet_s import IGNORE_ID, IMAGENET_S50_INDICES, ImageNetSConfig

WNIDS = [f"n{k:08d}" for k in range(1, 51)]  # 50 sorted class folders, as in ImageNet-S50


def write_mask(path, ids):
    """Encode a class-id map in the ImageNet-S format: id = R + 256·G."""
    rgb = np.zeros((*ids.shape, 3), dtype=np.uint8)
    rgb[..., 0] = ids % 256
    rgb[..., 1] = ids // 256
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def make_imagenet_s(root, mask_size=None):
    """Three annotated validation images (classes 1, 2 and 50) in the real ImageNet-S50 layout."""
    for wnid in WNIDS:
        (root / "validation" / wnid).mkdir(parents=True)
        (root / "validation-segmentation" / wnid).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k, name in ((1, "a"), (2, "b"), (50, "c")):
        wnid = WNIDS[k - 1]
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(root / "validation" / wnid / f"{name}.JPEG")
        ids = np.zeros((40, 60), dtype=np.int64)
        if k != 2:  # image b's object is not annotated: an empty mask
            ids[10:30, 20:40] = k
        ids[0:5, :] = IGNORE_ID
        ids[35:, 0:10] = 7  # another class in the picture: not this sample's foreground
        if mask_size:
            ids = ids[: mask_size[0], : mask_size[1]]
        write_mask(root / "validation-segmentation" / wnid / f"{name}.png", ids)


def test_labels_are_imagenet1k_indices_and_masks_the_own_class_resized_nearest(tmp_path):
    make_imagenet_s(tmp_path)
    bundle = build_data(ImageNetSConfig(root=str(tmp_path), image_size=32, resize_size=32))
    assert bundle.num_classes == 1000 and len(bundle.test) == 3 and len(bundle.train) == 0
    samples = [bundle.test[i] for i in range(3)]
    assert [s["label"].item() for s in samples] == [IMAGENET_S50_INDICES[0], IMAGENET_S50_INDICES[1], IMAGENET_S50_INDICES[49]]
    assert bundle.class_names[IMAGENET_S50_INDICES[49]] == WNIDS[49]
    for sample in samples:
        assert sample["mask"].shape == (1, 32, 32) and set(sample["mask"].unique().tolist()) <= {0.0, 1.0}
    # 60×40 -> resize shorter side to 32 (48×32) -> centre crop 32: the box [20:40]×[10:30] scales by 0.8
    expected = torch.zeros(40, 60)
    expected[10:30, 20:40] = 1
    resized = torch.nn.functional.interpolate(expected[None, None], size=(32, 48), mode="nearest")[0, 0, :, 8:40]
    assert torch.equal(samples[0]["mask"][0], resized)
    assert samples[1]["mask"].sum() == 0  # empty mask stays empty (metrics give NaN for it)


def test_subset_labels(tmp_path):
    make_imagenet_s(tmp_path)
    bundle = build_data(ImageNetSConfig(root=str(tmp_path), labels="subset", image_size=32, resize_size=32))
    assert bundle.num_classes == 50 and [bundle.test[i]["label"].item() for i in range(3)] == [0, 1, 49]


def test_mask_of_another_size_is_an_error_naming_both_files(tmp_path):
    make_imagenet_s(tmp_path, mask_size=(30, 60))
    bundle = build_data(ImageNetSConfig(root=str(tmp_path), image_size=32, resize_size=32))
    with pytest.raises(DataError, match=r"mask .*a\.png is 60×30 but its image .*a\.JPEG is 60×40"):
        bundle.test[0]


def test_missing_and_wrong_layouts(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="validation-segmentation"):
        build_data(ImageNetSConfig(root=str(tmp_path / "nowhere")))
    (tmp_path / "validation" / "n1").mkdir(parents=True)
    (tmp_path / "validation-segmentation").mkdir()
    with pytest.raises(DataError, match="has 1 class folders; ImageNet-S50 has 50"):
        build_data(ImageNetSConfig(root=str(tmp_path)))
