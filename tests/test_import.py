"""`kdlens import`: mdistiller/CRD teachers, torchvision and Lightning files, kdlens round trips,
dataset facts without dataset files, clear errors, and the converted-teacher cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torchvision
from foreign_layouts import BUILDERS, randomise, save_mdistiller
from typer.testing import CliRunner

import kdlens.runs.importing as importing
from kdlens.cli import app
from kdlens.data import build_data, describe_data
from kdlens.data.cifar import CIFAR10_CLASSES, CIFAR100_CLASSES, CIFAR100_MEAN, CIFAR100_STD, CIFAR10Config, CIFAR100Config
from kdlens.data.fashion_mnist import FashionMNISTConfig
from kdlens.data.shapes import ShapesConfig
from kdlens.models import create_model
from kdlens.runs import CheckpointError, import_checkpoint, import_checkpoint_file, import_or_load, load_model
from kdlens.runs.importing import cache_paths

runner = CliRunner()
CIFAR100 = describe_data(CIFAR100Config())
CIFAR10 = describe_data(CIFAR10Config())
MDISTILLER_TO_KDLENS = {"MobileNetV2": "mobilenetv2", "ShuffleV1": "shufflenetv1", "ShuffleV2": "shufflenetv2"}


@pytest.fixture(autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _no_datasets(tmp_path, monkeypatch):
    """No dataset files anywhere: importing needs the dataset's facts only."""
    empty = tmp_path / "no-data"
    empty.mkdir()
    monkeypatch.setenv("KDLENS_DATA", str(empty))


def images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(7))


def logits_of(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model.eval()(x)
    return out[0] if isinstance(out, tuple) else out


def assert_same_logits(reference: torch.Tensor, imported: torch.Tensor) -> None:
    assert reference.std() > 1e-3  # not a degenerate network
    torch.testing.assert_close(imported, reference, atol=1e-5, rtol=0)


def mdistiller_teacher(tmp_path: Path, arch: str, num_classes: int = 100, seed: int = 0, prefix: str = ""):
    torch.manual_seed(seed)
    source = randomise(BUILDERS[arch](num_classes), seed)
    return source, save_mdistiller(source, tmp_path, arch, prefix)


# ---------------------------------------------------------------- mdistiller / CRD


@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_mdistiller_teacher_gives_the_same_logits(tmp_path, arch):
    source, path = mdistiller_teacher(tmp_path, arch)
    name = MDISTILLER_TO_KDLENS.get(arch, arch)
    model, info = import_checkpoint(path, name, CIFAR100)
    assert not model.training
    assert_same_logits(logits_of(source, images()), logits_of(model, images()))
    assert (info["model"], info["num_classes"], info["in_channels"], info["image_size"]) == (name, 100, 3, [32, 32])
    assert info["class_names"] == list(CIFAR100_CLASSES)
    assert info["mean"] == list(CIFAR100_MEAN) and info["std"] == list(CIFAR100_STD)
    assert info["source"]["format"] == "mdistiller" and info["source"]["file"] == str(path.resolve())
    assert len(info["source"]["sha256"]) == 64 and info["source"]["size"] == path.stat().st_size


def test_cli_imports_an_mdistiller_teacher_without_dataset_files(tmp_path):
    source, path = mdistiller_teacher(tmp_path, "resnet8x4")
    out = tmp_path / "imported" / "resnet8x4.ckpt"
    result = runner.invoke(app, ["import", str(path), "--data", "cifar100", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert str(out) in result.output and "mdistiller" in result.output
    assert "resnet8x4" in result.output and "100 classes" in result.output
    model, info = load_model(out)
    assert_same_logits(logits_of(source, images()), logits_of(model, images()))
    assert info["config"]["data"]["name"] == "cifar100" and info["source"]["format"] == "mdistiller"
    assert not any(Path(os.environ["KDLENS_DATA"]).iterdir())  # nothing was downloaded


def test_cli_maps_mdistiller_names_and_reads_data_parallel_files(tmp_path):
    source, path = mdistiller_teacher(tmp_path, "ShuffleV1", prefix="module.")
    out = tmp_path / "shufflenetv1.ckpt"
    result = runner.invoke(app, ["import", str(path), "--data", "cifar100", "--out", str(out), "--format", "mdistiller"])
    assert result.exit_code == 0, result.output
    assert "shufflenetv1" in result.output
    assert_same_logits(logits_of(source, images()), logits_of(load_model(out)[0], images()))


# ---------------------------------------------------------------- other formats


@pytest.mark.parametrize("prefix", ["", "module."])
def test_torchvision_state_dict(tmp_path, prefix):
    torch.manual_seed(0)
    source = randomise(torchvision.models.resnet18(num_classes=10))
    path = tmp_path / "resnet18.pth"
    torch.save({prefix + k: v for k, v in source.state_dict().items()}, path)
    model, info = import_checkpoint(path, "resnet18", CIFAR10)
    assert info["source"]["format"] == "state_dict" and info["class_names"] == list(CIFAR10_CLASSES)
    assert_same_logits(logits_of(source, images()), logits_of(model, images()))


def test_lightning_checkpoint_finds_the_prefix_that_fits(tmp_path):
    torch.manual_seed(0)
    source = randomise(create_model("resnet8", 10))
    other = create_model("resnet20", 10)  # a second network in the same file, e.g. a teacher
    state = {**{"net." + k: v for k, v in source.state_dict().items()},
             **{"teacher." + k: v for k, v in other.state_dict().items()}}
    path = tmp_path / "epoch=3.ckpt"
    torch.save({"state_dict": state, "pytorch-lightning_version": "2.0", "epoch": 3}, path)
    model, info = import_checkpoint(path, "resnet8", CIFAR10)
    assert info["source"]["format"] == "lightning" and info["source"]["prefix"] == "net."
    assert_same_logits(logits_of(source, images()), logits_of(model, images()))
    teacher, info = import_checkpoint(path, "resnet20", CIFAR10, "lightning")
    assert info["source"]["prefix"] == "teacher."


def test_kdlens_checkpoint_round_trip(tmp_path):
    source, path = mdistiller_teacher(tmp_path, "wrn_16_2")
    first = tmp_path / "wrn.ckpt"
    import_checkpoint_file(path, first, "wrn_16_2", CIFAR100)
    model, info = import_checkpoint(first, "wrn_16_2", CIFAR100)
    assert_same_logits(logits_of(source, images()), logits_of(model, images()))
    assert info["source"]["format"] == "kdlens" and info["source"]["file"] == str(first.resolve())
    assert info["source"]["origin"]["format"] == "mdistiller"  # where the weights came from is kept
    second = tmp_path / "again.ckpt"
    result = runner.invoke(app, ["import", str(first), "--model", "wrn_16_2", "--data", "cifar100", "--out", str(second)])
    assert result.exit_code == 0 and "format kdlens" in result.output, result.output
    assert_same_logits(logits_of(source, images()), logits_of(load_model(second)[0], images()))
    with pytest.raises(CheckpointError, match="use --model wrn_16_2"):
        import_checkpoint(first, "wrn_40_2", CIFAR100)
    with pytest.raises(CheckpointError, match="predicts 100 classes, the dataset has 10"):
        import_checkpoint(first, "wrn_16_2", CIFAR10)


# ---------------------------------------------------------------- errors


def run_error(args: list[str]) -> str:
    result = runner.invoke(app, ["import", *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return result.output


def test_bad_inputs_exit_2_with_the_fix(tmp_path):
    _, teacher = mdistiller_teacher(tmp_path, "resnet8")
    out = ["--out", str(tmp_path / "out.ckpt")]
    cifar100 = ["--data", "cifar100", *out]

    assert "does not exist" in run_error([str(tmp_path / "missing.pth"), "--model", "resnet8", *cifar100])
    empty = tmp_path / "empty.pth"
    empty.touch()
    assert "empty (0 bytes)" in run_error([str(empty), "--model", "resnet8", *cifar100])
    for name, obj in [("list.pth", [torch.zeros(2)]), ("tensor.pth", torch.zeros(3, 4)), ("dict.pth", {"weights": [1, 2]})]:
        torch.save(obj, tmp_path / name)
        message = run_error([str(tmp_path / name), "--model", "resnet8", *cifar100])
        assert "unknown checkpoint format" in message and "kdlens imports" in message
    assert "single tensor" in run_error([str(tmp_path / "tensor.pth"), "--model", "resnet8", *cifar100])
    assert "unknown checkpoint format 'onnx'" in run_error([str(teacher), "--format", "onnx", *cifar100])
    assert "not a lightning checkpoint" in run_error([str(teacher), "--format", "lightning", *cifar100])

    wrong = run_error([str(teacher), "--model", "resnet20", *cifar100])
    assert "do not fit architecture 'resnet20'" in wrong and "Name the architecture" in wrong
    wrong = run_error([str(teacher), "--model", "vgg8", *cifar100])
    assert "do not fit architecture 'vgg8'" in wrong
    classes = run_error([str(teacher), "--data", "cifar10", *out])
    assert "predicts 100 classes, the dataset has 10" in classes and "--data" in classes
    assert "unknown model 'resnet9'" in run_error([str(teacher), "--model", "resnet9", *cifar100])
    assert "cifar1000" in run_error([str(teacher), "--data", "cifar1000", *out])
    assert "root" in run_error([str(teacher), "--data", "imagefolder", *out])
    assert "nowhere" in run_error([str(teacher), "--data", "imagefolder", "--set", f"root={tmp_path / 'nowhere'}", *out])

    loose = tmp_path / "teacher.pth"
    loose.write_bytes(teacher.read_bytes())
    assert "--model is required" in run_error([str(loose), *cifar100])
    unknown = tmp_path / "resnet9_vanilla" / "ckpt_epoch_240.pth"
    unknown.parent.mkdir()
    unknown.write_bytes(teacher.read_bytes())
    assert "--model" in run_error([str(unknown), *cifar100])
    assert not (tmp_path / "out.ckpt").exists()


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"model": create_model("resnet8", 100).state_dict(), "args": argparse_like()}, path)
    assert "pickled Python objects" in run_error([str(path), "--model", "resnet8", "--data", "cifar100", "--out", str(tmp_path / "o.ckpt")])


class _Args:
    lr = 0.05


def argparse_like() -> _Args:
    return _Args()


# ---------------------------------------------------------------- dataset facts without files


def test_describe_needs_no_files_and_matches_build(tmp_path):
    assert CIFAR10.class_names == CIFAR10_CLASSES and CIFAR10.num_classes == 10 and CIFAR10.image_size == (32, 32)
    assert CIFAR100.num_classes == 100 and list(CIFAR100.class_names) == sorted(CIFAR100.class_names)
    fashion = describe_data(FashionMNISTConfig(root=str(tmp_path / "nowhere")))
    assert (fashion.num_classes, fashion.in_channels, fashion.image_size) == (10, 1, (28, 28))
    shapes = ShapesConfig(num_classes=3, image_size=16, train_size=8, test_size=4)
    assert describe_data(shapes) == build_data(shapes).info


# ---------------------------------------------------------------- teacher cache


def test_import_or_load_caches_the_conversion(tmp_path, monkeypatch):
    source, path = mdistiller_teacher(tmp_path, "resnet8")
    conversions = []
    real = importing._import
    monkeypatch.setattr(importing, "_import", lambda *a: conversions.append(a) or real(*a))

    model, info = import_or_load(path, "resnet8", CIFAR100)
    cached = path.with_name(path.name + ".kdlens.ckpt")
    assert cached.is_file() and len(conversions) == 1
    assert_same_logits(logits_of(source, images()), logits_of(model, images()))
    stamp = cached.stat().st_mtime_ns

    model, info = import_or_load(path, "resnet8", CIFAR100)
    assert len(conversions) == 1 and cached.stat().st_mtime_ns == stamp
    assert info["source"]["format"] == "mdistiller"
    assert_same_logits(logits_of(source, images()), logits_of(model, images()))

    changed, _ = mdistiller_teacher(tmp_path, "resnet8", seed=1)  # overwrites the source
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))
    model, _ = import_or_load(path, "resnet8", CIFAR100)
    assert len(conversions) == 2
    assert_same_logits(logits_of(changed, images()), logits_of(model, images()))

    kdlens_file = tmp_path / "plain.ckpt"
    import_checkpoint_file(path, kdlens_file, "resnet8", CIFAR100)
    import_or_load(kdlens_file, "resnet8", CIFAR100)
    assert not kdlens_file.with_name(kdlens_file.name + ".kdlens.ckpt").exists()


def test_read_only_folder_caches_in_the_user_cache(tmp_path, monkeypatch):
    _, path = mdistiller_teacher(tmp_path, "resnet8")
    real_save = importing.save_model_checkpoint

    def read_only_beside_source(dest, model, info):
        if Path(dest).parent == path.parent:
            raise PermissionError(13, "Read-only file system", str(dest))
        return real_save(dest, model, info)

    monkeypatch.setattr(importing, "save_model_checkpoint", read_only_beside_source)
    monkeypatch.setenv("KDLENS_CACHE", str(tmp_path / "cache"))
    import_or_load(path, "resnet8", CIFAR100)
    beside, user = cache_paths(path)
    assert not beside.exists() and user.is_file() and user.is_relative_to(tmp_path / "cache" / "imported")
    conversions = []
    monkeypatch.setattr(importing, "_import", lambda *a: conversions.append(a))
    model, _ = import_or_load(path, "resnet8", CIFAR100)
    assert conversions == [] and not model.training


# ---------------------------------------------------------------- use of imported teachers


def test_distilling_straight_from_an_mdistiller_file(tmp_path):
    """`teacher.checkpoint` names the published file itself: converted once, cached beside it,
    and the run's teacher computes the source model's logits."""
    import yaml
    from conftest import kd_sections, tiny_experiment

    source, path = mdistiller_teacher(tmp_path, "resnet8", num_classes=3)
    raw = tiny_experiment(tmp_path / "student", **kd_sections(path), recipe={"epochs": 1})
    config = tmp_path / "kd.yaml"
    config.write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["distill", str(config)])
    assert result.exit_code == 0, result.output
    cached = cache_paths(path)[0]
    assert cached.is_file()
    teacher, info = load_model(cached)
    assert info["source"]["format"] == "mdistiller"
    assert_same_logits(logits_of(source, images()), logits_of(teacher, images()))


def test_an_imported_checkpoint_exports_with_its_provenance(tmp_path):
    _, path = mdistiller_teacher(tmp_path, "resnet8", num_classes=10)
    out = tmp_path / "resnet8.ckpt"
    assert runner.invoke(app, ["import", str(path), "--data", "cifar10", "--out", str(out)]).exit_code == 0
    result = runner.invoke(app, ["export", str(out)])
    assert result.exit_code == 0, result.output
    card = out.with_suffix(".card.md").read_text()
    assert "imported from mdistiller checkpoint" in card and "`cifar10`" in card
