import h5py
import numpy as np
import pytest
import torch

from kdlens.data import DataError, DatasetNotFoundError, build_data
from kdlens.data.imagenet_segmentation import ImageNetSegmentationConfig
from kdlens.metrics import Predictions, classification_report


def write_gtsegs(path, sizes, mask_shapes=None):
    """A gtsegs_ijcv.mat in the real v7.3 layout: value/img -> (3, W, H) images; value/gt -> a cell
    whose [0, 0] references the (W, H) mask."""
    rng = np.random.default_rng(0)
    masks = []
    with h5py.File(path, "w") as f:
        refs = f.create_group("#refs#")
        img_refs = np.empty((len(sizes), 1), dtype=h5py.ref_dtype)
        gt_refs = np.empty((len(sizes), 1), dtype=h5py.ref_dtype)
        for i, (h, w) in enumerate(sizes):
            img = refs.create_dataset(f"img{i}", data=rng.integers(0, 255, (3, w, h), dtype=np.uint8))
            mh, mw = (mask_shapes or sizes)[i]
            mask = np.zeros((mh, mw), dtype=np.uint8)
            mask[mh // 4 : mh // 2, mw // 4 : mw // 2] = 1
            masks.append(mask)
            gt = refs.create_dataset(f"gt{i}", data=mask.T)
            cell = refs.create_dataset(f"cell{i}", data=np.array([[gt.ref]], dtype=h5py.ref_dtype))
            img_refs[i, 0], gt_refs[i, 0] = img.ref, cell.ref
        value = f.create_group("value")
        value.create_dataset("img", data=img_refs)
        value.create_dataset("gt", data=gt_refs)
    return masks


def test_reads_images_and_masks_through_the_references(tmp_path):
    path = tmp_path / "gtsegs_ijcv.mat"
    masks = write_gtsegs(path, [(40, 40), (24, 32)])
    bundle = build_data(ImageNetSegmentationConfig(path=str(path), image_size=40))
    assert len(bundle.test) == 2 and len(bundle.train) == 0 and bundle.num_classes == 1000
    first = bundle.test[0]
    assert first["image"].shape == (3, 40, 40) and first["label"].item() == -1
    assert torch.equal(first["mask"][0], torch.from_numpy(masks[0]).float())  # same size: untouched
    second = bundle.test[1]["mask"]
    assert second.shape == (1, 40, 40) and set(second.unique().tolist()) == {0.0, 1.0}  # NEAREST


def test_size_mismatch_and_missing_file(tmp_path):
    path = tmp_path / "gtsegs_ijcv.mat"
    write_gtsegs(path, [(40, 40)], mask_shapes=[(30, 40)])
    with pytest.raises(DataError, match="image 0 is 40×40 but its mask is 40×30"):
        build_data(ImageNetSegmentationConfig(path=str(path))).test[0]
    with pytest.raises(DatasetNotFoundError, match="gtsegs_ijcv.mat"):
        build_data(ImageNetSegmentationConfig(path=str(tmp_path / "nope.mat")))


def test_accuracy_skips_unlabelled_samples():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    report = classification_report(Predictions(logits, torch.tensor([0, 0, -1])))
    assert report["top1"] == 0.5 and report["n"] == 3
    assert classification_report(Predictions(logits, torch.tensor([-1, -1, -1])))["top1"] is None
