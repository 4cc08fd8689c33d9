"""Dataset registry: shapes generator, Fashion-MNIST reader and lookup, CIFAR, image folders."""

from __future__ import annotations

import gzip
import math
import pickle
import shutil
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
from PIL import Image
from pydantic import ValidationError
from torch.overrides import TorchFunctionMode
from torch.utils.data import DataLoader

from kdlens.data import DATASETS, DataError, DatasetNotFoundError, build_data, dataset_config_types, fashion_mnist, split_train_val
from kdlens.data.cifar import CIFAR10_MEAN, CIFAR10_STD, CIFAR10Config, CIFAR100Config
from kdlens.data.fashion_mnist import FashionMNISTConfig, read_idx
from kdlens.data.imagefolder import ImageFolderConfig
from kdlens.data.shapes import FOREGROUND_MARGIN, PALETTE, TEXTURE_AMPLITUDE, ShapesConfig, generate_shapes

FASHION_SAMPLE = Path(__file__).parent / "data" / "fashion-mnist"


def unnormalise(image: torch.Tensor, mean, std) -> torch.Tensor:
    """Back to the 0..255 integers the dataset stored (as float, rounded)."""
    return (image * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]).mul(255).round()


def shapes_arrays(cfg: ShapesConfig, split: str, n: int):
    shortcut = None if split == "shifted" else cfg.shortcut
    return generate_shapes(n, num_classes=cfg.num_classes, image_size=cfg.image_size, seed=cfg.seed,
                           split=split, shortcut=shortcut)


# ---------------------------------------------------------------- registry and configs


def test_registry_lists_every_dataset():
    assert DATASETS.names() == ["cifar10", "cifar100", "fashion_mnist", "imagefolder", "imagenet_s", "imagenet_segmentation", "shapes"]
    assert {c.model_fields["name"].default for c in dataset_config_types()} == set(DATASETS.names())


@pytest.mark.parametrize("config, options", [
    (ShapesConfig, {"root": "/tmp"}),
    (ShapesConfig, {"shortcut": 1.5}),
    (ShapesConfig, {"num_classes": 9}),
    (FashionMNISTConfig, {"num_classes": 3}),
    (CIFAR10Config, {"image_size": 64}),
    (ImageFolderConfig, {}),  # root is required
])
def test_config_rejects_unknown_or_invalid_options(config, options):
    with pytest.raises(ValidationError):
        config(**options)


def test_split_train_val_is_deterministic_and_disjoint():
    train, val = split_train_val(100, 0.2, split_seed=3)
    assert len(train) == 80 and len(val) == 20
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(100))
    again_train, again_val = split_train_val(100, 0.2, split_seed=3)
    assert torch.equal(train, again_train) and torch.equal(val, again_val)
    assert not torch.equal(val, split_train_val(100, 0.2, split_seed=4)[1])
    assert len(split_train_val(10, 0.0, 0)[1]) == 0
    with pytest.raises(ValueError):
        split_train_val(10, 1.0, 0)


# ---------------------------------------------------------------- shapes


class _TorchCalls(TorchFunctionMode):
    """Counts the torch functions called inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def test_shapes_generation_is_vectorised():
    # Counted, not timed: a loop over images makes at least one torch call per image; batched
    # generation makes a number that grows with the chunks, not the images.
    with _TorchCalls() as counter:
        generate_shapes(5000, num_classes=8, image_size=32, seed=0, split="train", shortcut=None)
    assert 0 < counter.calls < 5000 / 4


def test_shapes_are_deterministic_per_seed_and_split():
    kwargs = dict(num_classes=4, image_size=32, split="train", shortcut=0.7)
    a, b = generate_shapes(300, seed=1, **kwargs), generate_shapes(300, seed=1, **kwargs)
    for field in ("images", "masks", "labels", "backgrounds", "colors"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not torch.equal(a.images, generate_shapes(300, seed=2, **kwargs).images)
    kwargs["split"] = "test"
    assert not torch.equal(a.images, generate_shapes(300, seed=1, **kwargs).images)


@pytest.mark.parametrize("num_classes", [4, 8])
def test_shapes_mask_is_exactly_the_foreground(num_classes):
    arrays = generate_shapes(500, num_classes=num_classes, image_size=32, seed=0, split="train", shortcut=None)
    masks = arrays.masks.bool()
    assert set(arrays.masks.unique().tolist()) == {0, 1}
    assert masks.flatten(1).any(1).all()  # every image shows its shape
    assert set(arrays.labels.tolist()) == set(range(num_classes))
    images = arrays.images.long()
    colors = arrays.colors.long()[:, :, None, None]
    palette = torch.tensor([rgb for _, rgb in PALETTE])[arrays.backgrounds][:, :, None, None]
    assert (images == colors).all(1)[masks[:, 0]].all()
    background = ~masks.expand_as(images)
    assert ((images - palette).abs()[background] <= TEXTURE_AMPLITUDE).all()
    # Far from the foreground colour everywhere outside the mask: the mask is also what one sees.
    assert ((images - colors).abs().amax(1)[~masks[:, 0]] > FOREGROUND_MARGIN).all()


def test_shapes_bundle_samples_match_the_generator():
    cfg = ShapesConfig(train_size=200, test_size=50, seed=5)
    bundle = build_data(cfg)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (4, 3, (32, 32))
    assert bundle.class_names == ["circle", "square", "triangle", "cross"]
    assert len(bundle.group_names) == 16 and bundle.group_names[1] == "circle/bg-green"
    assert bundle.extra_splits == {}
    arrays = shapes_arrays(cfg, "test", 50)
    for i in (0, 17, 49):
        sample = bundle.test[i]
        assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, 32, 32)
        assert torch.equal(unnormalise(sample["image"], bundle.mean, bundle.std), arrays.images[i].float())
        assert torch.equal(sample["mask"], arrays.masks[i].float())
        assert sample["label"].dtype == torch.int64 and sample["label"].ndim == 0
        assert int(sample["label"]) == int(arrays.labels[i])
        assert int(sample["group"]) == int(arrays.labels[i]) * 4 + int(arrays.backgrounds[i])
        assert int(sample["index"]) == i
    batch = next(iter(DataLoader(bundle.train, batch_size=8)))
    assert batch["image"].shape == (8, 3, 32, 32) and batch["mask"].shape == (8, 1, 32, 32)
    assert batch["index"].tolist() == list(range(8))


def test_shapes_normalisation_fits_the_data_and_ignores_seed_sizes_and_shortcut():
    bundle = build_data(ShapesConfig(train_size=1000, test_size=10, augment=False, val_fraction=0.05, seed=7))
    images = torch.stack([bundle.train[i]["image"] for i in range(len(bundle.train))])
    assert images.mean((0, 2, 3)).abs().max() < 0.1
    assert (images.std((0, 2, 3)) - 1).abs().max() < 0.1
    other = build_data(ShapesConfig(train_size=50, test_size=10, shortcut=0.9))
    assert (other.mean, other.std) == (bundle.mean, bundle.std)


def test_shapes_shortcut_rates_and_shifted_split():
    p, k, n = 0.8, 4, 4000
    cfg = ShapesConfig(shortcut=p, num_classes=k, train_size=n, test_size=2000)
    sizes = {"train": n, "test": 2000, "shifted": 2000}
    splits = {split: shapes_arrays(cfg, split, size) for split, size in sizes.items()}
    for split, rate in (("train", p), ("test", p), ("shifted", 1 / k)):
        arrays = splits[split]
        own = (arrays.backgrounds == arrays.labels).float().mean().item()
        assert abs(own - rate) < 4 * math.sqrt(rate * (1 - rate) / len(arrays.labels)), (split, own)
    # The other colours are used evenly when the shortcut is not taken.
    arrays = splits["train"]
    others = (arrays.backgrounds - arrays.labels)[arrays.backgrounds != arrays.labels] % k
    counts = torch.bincount(others, minlength=k)[1:].float()
    assert (counts / counts.sum() - 1 / (k - 1)).abs().max() < 0.05
    bundle = build_data(cfg.model_copy(update={"train_size": 100, "test_size": 60}))
    shifted = bundle.extra_splits["shifted"]
    assert len(shifted) == 60
    arrays = shapes_arrays(cfg, "shifted", 60)
    assert [int(shifted[i]["group"]) for i in range(60)] == (arrays.labels * k + arrays.backgrounds).tolist()


def test_shapes_augmentation_moves_image_and_mask_together():
    cfg = ShapesConfig(train_size=40, test_size=10)
    bundle = build_data(cfg)
    arrays = shapes_arrays(cfg, "train", 40)
    changed = 0
    for i in range(len(bundle.train)):
        source = int(bundle.train.indices[i])
        for _ in range(3):
            sample = bundle.train[i]
            mask = sample["mask"][0]
            assert set(mask.unique().tolist()) <= {0.0, 1.0}
            raw = unnormalise(sample["image"], bundle.mean, bundle.std)
            is_foreground_colour = (raw == arrays.colors[source].float()[:, None, None]).all(0)
            assert torch.equal(is_foreground_colour, mask.bool())
            changed += not torch.equal(raw, arrays.images[source].float())
    assert changed > len(bundle.train)  # crops and flips do happen


def flips_and_crops(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Every RandomCrop(size, padding=pad) + horizontal flip of C×S×S ``x``, stacked."""
    size = x.shape[-1]
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    return torch.stack([base[:, dy:dy + size, dx:dx + size] for base in (padded, padded.flip(-1))
                        for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)])


def test_shapes_augmented_image_and_mask_get_the_same_flip_and_crop():
    cfg = ShapesConfig(train_size=20, test_size=10)
    bundle = build_data(cfg)
    arrays = shapes_arrays(cfg, "train", 20)
    for i in range(len(bundle.train)):
        source = int(bundle.train.indices[i])
        images = flips_and_crops(arrays.images[source].float(), pad=4)
        masks = flips_and_crops(arrays.masks[source].float(), pad=4)
        for _ in range(3):
            sample = bundle.train[i]
            same_image = (images == unnormalise(sample["image"], bundle.mean, bundle.std)).flatten(1).all(1)
            assert same_image.any()
            assert (masks[same_image] == sample["mask"]).flatten(1).all(1).any()


def test_shapes_val_and_test_are_not_augmented_and_train_is_deterministic_without_augment():
    bundle = build_data(ShapesConfig(train_size=100, test_size=10, val_fraction=0.2))
    assert len(bundle.train) == 80 and len(bundle.val) == 20
    assert set(bundle.train.indices.tolist()).isdisjoint(bundle.val.indices.tolist())
    for split in (bundle.val, bundle.test):
        assert torch.equal(split[3]["image"], split[3]["image"])
    plain = build_data(ShapesConfig(train_size=100, test_size=10, val_fraction=0.2, augment=False))
    assert torch.equal(plain.train[5]["image"], plain.train[5]["image"])
    assert torch.equal(plain.val.indices, bundle.val.indices)


# ---------------------------------------------------------------- Fashion-MNIST


def direct_decode_first_image(path: Path) -> torch.Tensor:
    with gzip.open(path) as f:
        raw = f.read()
    return torch.tensor(list(raw[16:16 + 28 * 28]), dtype=torch.uint8).view(28, 28)


def test_idx_reader_on_the_committed_sample():
    images = read_idx(FASHION_SAMPLE / "train-images-idx3-ubyte.gz", ndim=3)
    labels = read_idx(FASHION_SAMPLE / "train-labels-idx1-ubyte.gz", ndim=1)
    assert images.shape == (200, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (200,) and set(labels.tolist()) == set(range(10))
    assert torch.equal(images[0], direct_decode_first_image(FASHION_SAMPLE / "train-images-idx3-ubyte.gz"))


def test_fashion_mnist_bundle():
    bundle = build_data(FashionMNISTConfig(root=str(FASHION_SAMPLE)))
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (180, 20, 100)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 1, (28, 28))
    assert bundle.class_names[0] == "T-shirt/top" and bundle.class_names[9] == "Ankle boot"
    sample = bundle.test[0]
    assert sample["image"].shape == (1, 28, 28) and "mask" not in sample
    expected = (direct_decode_first_image(FASHION_SAMPLE / "t10k-images-idx3-ubyte.gz").float() / 255 - 0.2860) / 0.3530
    assert torch.allclose(sample["image"][0], expected, atol=1e-5)
    assert 0 <= int(sample["label"]) < 10


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw[: len(raw) // 2], "gzip"),  # truncated download
    (lambda raw: gzip.compress(gzip.decompress(raw)[:-10]), "truncated or corrupt"),
    (lambda raw: gzip.compress(b"\x00\x00\x08\x01" + gzip.decompress(raw)[4:]), "magic"),
])
def test_idx_reader_rejects_damaged_files(tmp_path, damage, message):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(damage((FASHION_SAMPLE / path.name).read_bytes()))
    with pytest.raises(ValueError, match=message) as err:
        read_idx(path, ndim=3)
    assert str(path) in str(err.value)


@pytest.fixture
def fashion_places(tmp_path, monkeypatch):
    """Empty candidate places; downloading fails the test unless a test replaces it."""
    env, debian, home = tmp_path / "env", tmp_path / "debian", tmp_path / "home"
    for d in (env, debian, home):
        d.mkdir()
    monkeypatch.setenv("KDLENS_DATA", str(env))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", debian)
    monkeypatch.setattr(fashion_mnist, "_download", lambda root: pytest.fail("tried to download"))
    return env, debian


def fill(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for f in FASHION_SAMPLE.glob("*.gz"):
        shutil.copy(f, directory)
    return directory


def test_fashion_mnist_location_order(fashion_places, tmp_path):
    env, debian = fashion_places
    earlier_download = fill(tmp_path / "home" / ".cache" / "kdlens" / "fashion-mnist" / "FashionMNIST" / "raw")
    assert fashion_mnist.locate(None) == earlier_download
    fill(debian)
    assert fashion_mnist.locate(None) == debian
    fill(env)
    assert fashion_mnist.locate(None) == env
    fill(env / "fashion-mnist")
    assert fashion_mnist.locate(None) == env / "fashion-mnist"
    explicit = fill(tmp_path / "explicit")
    assert fashion_mnist.locate(str(explicit)) == explicit


def test_fashion_mnist_explicit_root_is_not_second_guessed(fashion_places, tmp_path):
    fill(fashion_places[1])
    with pytest.raises(DatasetNotFoundError, match="empty"):
        fashion_mnist.locate(str(tmp_path / "empty"))


def test_fashion_mnist_not_found_names_every_fix(fashion_places, monkeypatch, tmp_path):
    attempts = []

    def offline(root: Path) -> Path:
        attempts.append(root)
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\n<urlopen error no network>")

    monkeypatch.setattr(fashion_mnist, "_download", offline)
    with pytest.raises(DatasetNotFoundError) as err:
        build_data(FashionMNISTConfig())
    assert attempts == [tmp_path / "home" / ".cache" / "kdlens" / "fashion-mnist"]
    text = str(err.value)
    env, debian = fashion_places
    for needle in (str(env / "fashion-mnist"), str(debian), "data.root", "KDLENS_DATA",
                   "apt-get install dataset-fashion-mnist", "go online", "urlopen error no network"):
        assert needle in text
    assert isinstance(err.value, FileNotFoundError)


# ---------------------------------------------------------------- CIFAR


def write_fake_cifar(root: Path, hundred: bool) -> torch.Tensor:
    """A few random images in the real on-disk python-pickle format; returns the test images."""
    rng = np.random.default_rng(0)
    classes = 100 if hundred else 10
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    label_key = "fine_labels" if hundred else "labels"
    batches = ["train", "test"] if hundred else [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in batches:
        data = rng.integers(0, 256, (6, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, label_key: rng.integers(0, classes, 6).tolist()}, f)
    meta, key = ("meta", "fine_label_names") if hundred else ("batches.meta", "label_names")
    with open(folder / meta, "wb") as f:
        pickle.dump({key: [f"class{i}" for i in range(classes)]}, f)
    return torch.from_numpy(data).view(6, 3, 32, 32)


@pytest.fixture
def no_md5(monkeypatch):
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)


def test_cifar10_reads_the_on_disk_format(tmp_path, no_md5):
    test_images = write_fake_cifar(tmp_path, hundred=False)
    bundle = build_data(CIFAR10Config(root=str(tmp_path), val_fraction=0.2))
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (24, 6, 6)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 3, (32, 32))
    assert bundle.class_names[3] == "class3" and bundle.mean == CIFAR10_MEAN
    assert torch.equal(unnormalise(bundle.test[5]["image"], CIFAR10_MEAN, CIFAR10_STD), test_images[5].float())


def test_cifar_default_root_is_under_kdlens_data(tmp_path, no_md5, monkeypatch):
    write_fake_cifar(tmp_path / "cifar", hundred=True)
    monkeypatch.setenv("KDLENS_DATA", str(tmp_path))
    bundle = build_data(CIFAR100Config(download=False))
    assert bundle.num_classes == 100 and len(bundle.test) == 6
    assert bundle.mean == (0.5071, 0.4867, 0.4408) and bundle.std == (0.2675, 0.2565, 0.2761)


def test_cifar_missing_without_download(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="download=true") as err:
        build_data(CIFAR10Config(root=str(tmp_path), download=False))
    assert str(tmp_path) in str(err.value)


def test_cifar_failed_download(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", offline)
    with pytest.raises(DatasetNotFoundError, match="download failed") as err:
        build_data(CIFAR100Config(root=str(tmp_path)))
    assert str(tmp_path) in str(err.value) and "data.root" in str(err.value)


# ---------------------------------------------------------------- image folders


def write_image_tree(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", 5), ("val", 2)):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")


def test_imagefolder(tmp_path):
    write_image_tree(tmp_path)
    cfg = ImageFolderConfig(root=str(tmp_path), image_size=16, resize_size=20, val_fraction=0.2)
    bundle = build_data(cfg)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (8, 2, 4)
    assert bundle.class_names == ["cat", "dog"] and bundle.image_size == (16, 16)
    assert [int(bundle.test[i]["label"]) for i in range(4)] == [0, 0, 1, 1]
    assert bundle.train[0]["image"].shape == bundle.test[0]["image"].shape == (3, 16, 16)
    assert torch.equal(bundle.test[1]["image"], bundle.test[1]["image"])


def test_imagefolder_corrupt_image_is_named(tmp_path):
    write_image_tree(tmp_path)
    (tmp_path / "val" / "dog" / "broken.png").write_bytes(b"not a png at all")
    bundle = build_data(ImageFolderConfig(root=str(tmp_path), image_size=16, resize_size=20))
    with pytest.raises(DataError, match="broken.png"):
        for i in range(len(bundle.test)):
            bundle.test[i]


def test_imagefolder_missing_root(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="train/<class>") as err:
        build_data(ImageFolderConfig(root=str(tmp_path / "imagenet")))
    assert str(tmp_path / "imagenet" / "train") in str(err.value)
