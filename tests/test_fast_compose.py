"""FastCompose gives exactly what torchvision's v2.Compose gives (values, dtypes and tv_tensor
types, with the same random draws), on kdlens's samples and on samples it hands back to v2."""

from __future__ import annotations

import PIL.Image
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from kdlens.data.common import spatial_map_type
from kdlens.data.fast_compose import FastCompose

MEAN, STD = [0.45, 0.5, 0.4], [0.25, 0.2, 0.3]


def tail():
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]


PIPELINES = {
    "shapes train": lambda: [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(), *tail()],
    "eval": tail,
    "pad if needed, fill": lambda: [v2.RandomCrop(36, padding=[1, 2, 3, 4], pad_if_needed=True, fill=7), *tail()],
    "fill per type": lambda: [v2.RandomCrop(32, padding=4, fill={tv_tensors.Image: 3, tv_tensors.Mask: 0}), *tail()],
    "reflect": lambda: [v2.RandomCrop(32, padding=2, padding_mode="reflect"), v2.RandomHorizontalFlip(p=0.3), *tail()],
    "generic ops": lambda: [v2.RandomResizedCrop(24, antialias=True), v2.RandomVerticalFlip(), *tail()],
    "v2 ops": lambda: [v2.RandomApply([v2.RandomRotation(10)], p=0.7), v2.Resize(40), v2.CenterCrop(36), *tail()],
    "in place": lambda: [v2.RandomCrop(32, padding=4), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD, inplace=True)],
}


def sample(seed: int, spatial_map: bool = True) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {
        "image": tv_tensors.Image(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=g)),
        "label": seed % 4,
        "mask": tv_tensors.Mask(torch.randint(0, 2, (1, 32, 32), dtype=torch.uint8, generator=g)),
        "group": 3,
        "teacher_logits": torch.randn(4, generator=g),  # a plain tensor: passed through
    }
    if spatial_map:
        out["teacher_map"] = spatial_map_type()(torch.rand(1, 32, 32, generator=g))
    return out


def assert_same(expected, actual):
    assert type(actual) is type(expected)
    if isinstance(expected, dict):
        assert list(actual) == list(expected)
        for key in expected:
            assert_same(expected[key], actual[key])
    elif isinstance(expected, (tuple, list)):
        assert len(actual) == len(expected)
        for e, a in zip(expected, actual):
            assert_same(e, a)
    elif isinstance(expected, torch.Tensor):
        assert actual.dtype == expected.dtype and torch.equal(actual, expected)
    elif isinstance(expected, PIL.Image.Image):
        assert actual.tobytes() == expected.tobytes()
    else:
        assert actual == expected


@pytest.mark.parametrize("pipeline", list(PIPELINES))
def test_fast_compose_gives_what_v2_compose_gives(pipeline):
    reference, fast = v2.Compose(PIPELINES[pipeline]()), FastCompose(PIPELINES[pipeline]())
    for seed in range(40):
        item = sample(seed, spatial_map=seed % 2 == 0)
        torch.manual_seed(seed)
        expected = reference(dict(item))
        after_reference = torch.rand(1)
        torch.manual_seed(seed)
        actual = fast(dict(item))
        assert_same(expected, actual)
        assert torch.equal(torch.rand(1), after_reference)  # the same number of random draws


def test_samples_fast_compose_does_not_handle_go_through_v2():
    ops = PIPELINES["shapes train"]
    pil = {"image": PIL.Image.new("RGB", (32, 32), (10, 200, 30)), "label": 1}
    no_image = {"x": torch.rand(3, 32, 32), "label": 1}  # a plain tensor is the image here
    nested = {"image": tv_tensors.Image(torch.zeros(3, 32, 32, dtype=torch.uint8)), "extra": {"mask": tv_tensors.Mask(torch.ones(1, 32, 32))}}
    for item in (pil, no_image, nested):
        torch.manual_seed(0)
        expected = v2.Compose(ops())(item)
        torch.manual_seed(0)
        assert_same(expected, FastCompose(ops())(item))
    image = tv_tensors.Image(torch.zeros(3, 32, 32, dtype=torch.uint8))  # positional inputs
    torch.manual_seed(0)
    expected = v2.Compose(ops())(image, 2)
    torch.manual_seed(0)
    assert_same(expected, FastCompose(ops())(image, 2))


def test_the_datasets_compose_with_it():
    from kdlens.config import validate_data_config
    from kdlens.data import build_data

    bundle = build_data(validate_data_config({"name": "shapes", "train_size": 20, "test_size": 8}))
    assert isinstance(bundle.train.transform, FastCompose) and isinstance(bundle.test.transform, FastCompose)
