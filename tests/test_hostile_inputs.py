"""Every bad input is one clear error: exit code 2, one message naming the problem and the fix, no
traceback, and nothing already written lost. One test per class of hostile input (issue 14)."""

import errno
import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_experiment
from PIL import Image
from typer.testing import CliRunner

from kdlens.cli import app
from kdlens.config import validate_config
from kdlens.data.common import DataError
from kdlens.data.fashion_mnist import read_idx
from kdlens.models import create_model
from kdlens.runs.checkpoints import checkpoint_info, load_checkpoint_file, save_model_checkpoint, training_state
from kdlens.runs.layout import RunFolder

runner = CliRunner()
FASHION_SAMPLE = Path(__file__).parent / "data" / "fashion-mnist"


def refused(args: list, *phrases: str) -> str:
    """Run the CLI; it must exit 2 with one error line naming every phrase, and no traceback."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, (result.output, result.exception)
    assert "Traceback" not in result.output
    assert result.output.count("error:") == 1, result.output
    for phrase in phrases:
        assert phrase in result.output, result.output
    return result.output


def write_config(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def edited_checkpoint(source: Path, target: Path, edit) -> Path:
    checkpoint = torch.load(source, weights_only=True)
    edit(checkpoint)
    torch.save(checkpoint, target)
    return target


# ---------------------------------------------------------------- checkpoints


def test_a_zero_byte_checkpoint_is_refused_on_every_loading_path(tmp_path):
    empty = tmp_path / "empty.ckpt"
    empty.touch()
    refused(["evaluate", empty], "empty (0 bytes)", "Use another checkpoint")

    teacher = {"teacher": {"name": "resnet8", "checkpoint": str(empty)}, "losses": [{"name": "kd"}]}
    config = write_config(tmp_path / "kd.yaml", tiny_experiment(tmp_path / "kd", **teacher))
    refused(["distill", config], "empty (0 bytes)", str(empty))

    raw = tiny_experiment(tmp_path / "run")
    folder = RunFolder(tmp_path / "run")
    folder.write_config(validate_config(raw))
    folder.last.parent.mkdir(parents=True)
    folder.last.touch()
    refused(["train", write_config(tmp_path / "run.yaml", raw), "--resume"], "empty (0 bytes)", "last.ckpt")
    assert folder.last.stat().st_size == 0  # left as it was


def test_a_zero_byte_checkpoint_in_a_real_process_prints_one_line_and_no_traceback(tmp_path):
    empty = tmp_path / "empty.ckpt"
    empty.touch()
    done = subprocess.run([sys.executable, "-m", "kdlens", "evaluate", str(empty)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.strip().startswith("error:") and "empty (0 bytes)" in done.stderr


@pytest.mark.parametrize("content, phrase", [
    ([1, 2, 3], "not a kdlens checkpoint"),
    (torch.zeros(3), "not a kdlens checkpoint"),
    ({"state_dict": {}}, "not a kdlens checkpoint"),
], ids=["list", "tensor", "no-kdlens-section"])
def test_a_checkpoint_of_the_wrong_kind_is_refused(tmp_path, content, phrase):
    path = tmp_path / "odd.ckpt"
    torch.save(content, path)
    refused(["evaluate", path], phrase, "kdlens import")


@pytest.mark.parametrize("edit, phrases", [
    (lambda c: c["kdlens"].pop("class_names"), ["without class_names", "use another checkpoint"]),
    (lambda c: c.pop("state_dict"), ["holds no weights", "use another checkpoint"]),
    (lambda c: c["kdlens"].update(num_classes="three"), ["num_classes", "not of the stored kind"]),
    (lambda c: c["kdlens"].update(model="resnet14"), ["do not fit architecture 'resnet14'", "Use another checkpoint of the run"]),
    (lambda c: c["kdlens"].update(num_classes=5), ["shape mismatches", "with 5 classes", "kdlens import --model"]),
    (lambda c: c["kdlens"].update(model="no_such_net"), ["cannot build", "no_such_net"]),
], ids=["missing-key", "no-weights", "wrong-type", "other-architecture", "other-class-count", "unknown-architecture"])
def test_a_checkpoint_whose_record_does_not_fit_its_weights_is_refused(tmp_path, teacher_checkpoint, edit, phrases):
    path = edited_checkpoint(teacher_checkpoint, tmp_path / "edited.ckpt", edit)
    refused(["evaluate", path], *phrases)


def test_random_bytes_are_not_a_checkpoint_file_and_not_called_code(tmp_path):
    path = tmp_path / "random.ckpt"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    output = refused(["evaluate", path], "truncated or corrupt", "not a checkpoint file")
    assert "could run code" not in output and "pickled" not in output


def test_a_folder_given_as_checkpoint_is_called_a_folder(tmp_path):
    output = refused(["evaluate", tmp_path], "is a folder", "checkpoints/best.ckpt")
    assert "does not exist" not in output


def test_evaluate_with_a_teacher_of_another_class_count_is_refused(tmp_path, teacher_checkpoint):
    data = {"name": "shapes", "num_classes": 5, "image_size": 16}
    info = checkpoint_info("resnet8", num_classes=5, in_channels=3, image_size=(16, 16), class_names=list("abcde"),
                           mean=(0.5,) * 3, std=(0.25,) * 3, config={"data": data})
    teacher = save_model_checkpoint(tmp_path / "five.ckpt", create_model("resnet8", 5, 3), info)
    refused(["evaluate", teacher_checkpoint, "--teacher", teacher, "--out", tmp_path / "eval"],
            "predicts 5 classes, the dataset has 3", "Use the dataset it was trained on")
    assert not (tmp_path / "eval").exists()


# ---------------------------------------------------------------- data


def png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(path)


def imagefolder_config(tmp_path: Path, root: Path) -> Path:
    data = {"name": "imagefolder", "root": str(root), "image_size": 16, "resize_size": 16, "batch_size": 2}
    return write_config(tmp_path / "if.yaml", {**tiny_experiment(tmp_path / "if"), "data": data})


def test_an_empty_imagefolder_and_an_empty_class_folder_are_named(tmp_path):
    root = tmp_path / "tree"
    (root / "train").mkdir(parents=True)
    (root / "val").mkdir()
    refused(["train", imagefolder_config(tmp_path, root)], "has no class folders", "train/<class>")

    for name in ("a", "b"):
        png(root / "val" / name / "0.png")
    for i in range(4):
        png(root / "train" / "a" / f"{i}.png")
    (root / "train" / "b").mkdir()
    refused(["train", imagefolder_config(tmp_path, root)], str(root / "train" / "b"), "hold no images", "remove the folder")

    shutil.rmtree(root / "val" / "a")
    shutil.rmtree(root / "val" / "b")
    png(root / "train" / "b" / "0.png")
    refused(["train", imagefolder_config(tmp_path, root)], "holds no images", "val/<class>")


def damaged_fashion(tmp_path: Path, name: str, damage) -> Path:
    root = tmp_path / "fashion"
    shutil.copytree(FASHION_SAMPLE, root, dirs_exist_ok=True)
    raw = gzip.decompress((root / name).read_bytes())
    (root / name).write_bytes(gzip.compress(damage(raw)))
    return root


@pytest.mark.parametrize("name, damage, phrase", [
    ("train-images-idx3-ubyte.gz", lambda raw: raw[:-100], "truncated or corrupt"),
    ("train-images-idx3-ubyte.gz", lambda raw: raw[:8] + (27).to_bytes(4, "big") + raw[12:-28 * 200],
     "do not match"),  # a well-formed file of 27×28 images
    ("train-labels-idx1-ubyte.gz", lambda raw: raw[:8] + bytes([12]) + raw[9:], "outside 0..9"),
    ("t10k-labels-idx1-ubyte.gz", lambda raw: raw[:8] + raw[9:], "truncated or corrupt"),
    ("t10k-images-idx3-ubyte.gz", lambda raw: raw[:3], "truncated IDX header"),
], ids=["truncated", "mis-sized", "label-out-of-range", "labels-one-short", "no-header"])
def test_damaged_fashion_mnist_files_are_a_data_error(tmp_path, name, damage, phrase):
    root = damaged_fashion(tmp_path, name, damage)
    data = {"name": "fashion_mnist", "root": str(root), "batch_size": 16}
    config = write_config(tmp_path / "fm.yaml", {**tiny_experiment(tmp_path / "fm"), "data": data})
    refused(["train", config], phrase, "intact copies")


def test_the_idx_reader_raises_a_data_error(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(b"not gzip")
    with pytest.raises(DataError, match="not a readable gzip file"):
        read_idx(path, ndim=3)


# ---------------------------------------------------------------- config


def test_a_binary_config_is_not_a_text_file(tmp_path):
    binary = tmp_path / "model.yaml"
    binary.write_bytes(bytes(range(256)))
    refused(["train", binary], "not a text file", "give an experiment YAML file")
    nul = tmp_path / "nul.yaml"
    nul.write_bytes(b"name: x\x00\x00")
    refused(["train", nul], "not a text file")


def test_a_yaml_syntax_error_names_its_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata:\n  name: shapes\n   batch_size: 3\n")
    refused(["train", bad], "not valid YAML", "line 4, column", "Fix the syntax")
    unclosed = tmp_path / "unclosed.yaml"
    unclosed.write_text("name: x\nlosses: [{name: ce}\n")
    refused(["train", unclosed, "--dry-run"], "not valid YAML", "line ")


def test_a_folder_given_as_config_is_called_a_folder(tmp_path):
    output = refused(["train", tmp_path], "is a folder, not a config file")
    assert "does not exist" not in output
    refused(["sweep", tmp_path, "--dry-run"], "is a folder")


@pytest.mark.parametrize("override, phrases", [
    ("recipe.epochs.x=1", ["'recipe.epochs' is a value (2)", "recipe.epochs=..."]),
    ("recipe.epochs.x.y=1", ["'recipe.epochs' is a value (2)"]),
    ("recipe.epochs=[1", ["not valid YAML", "quote it"]),
    ("recipe..epochs=1", ["empty part"]),
    ("data.name.x=1", ["'data.name' is a value ('shapes')"]),
], ids=["leaf-under-a-value", "deeper-under-a-value", "unclosed-list", "empty-part", "under-a-string"])
def test_malformed_overrides_are_one_clear_error(tmp_path, override, phrases):
    config = write_config(tmp_path / "run.yaml", tiny_experiment(tmp_path / "run"))
    refused(["train", config, override, "--dry-run"], *phrases)
    refused(["sweep", config, override, "--dry-run"], *phrases)


def test_evaluate_checks_explanation_names_before_reading_anything(tmp_path, teacher_checkpoint):
    # the checkpoint does not exist: the explainer's name is checked first
    refused(["evaluate", tmp_path / "missing.ckpt", "--explainer", "gradcamm"], "gradcam")
    refused(["evaluate", teacher_checkpoint, "--metrics", "pointing_game", "--out", tmp_path / "eval"], "add --explainer")
    refused(["evaluate", teacher_checkpoint, "--explainer", "gradcam", "--metrics", "pointing_gam", "--out", tmp_path / "eval"],
            "pointing_game")
    assert not (tmp_path / "eval").exists()


# ---------------------------------------------------------------- output


def test_a_file_where_the_output_folder_should_be_is_named(tmp_path, teacher_checkpoint):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    config = write_config(tmp_path / "run.yaml", tiny_experiment(blocker / "run"))
    refused(["train", config], str(blocker / "run"), "write elsewhere")
    refused(["evaluate", teacher_checkpoint, "--out", blocker], str(blocker), "write elsewhere")
    refused(["export", teacher_checkpoint, "--out", blocker / "m.onnx"], str(blocker), "write elsewhere")
    assert blocker.read_text() == "a file, not a folder"


class FullDisk:
    """A file whose writes fail as on a full disk."""

    def __init__(self, raw):
        self._raw = raw

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._raw, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._raw.close()


def test_a_full_disk_keeps_the_previous_checkpoints_and_says_so(tmp_path, monkeypatch):
    """The disk fills up after the first epoch: the run stops with one message naming the file and
    the fix, and epoch 1's checkpoints (and the config) are intact, with no temporary files left."""
    import kdlens.io

    real_fdopen, checkpoint_writes = os.fdopen, []

    def fdopen(fd, *args, **kwargs):
        handle = real_fdopen(fd, *args, **kwargs)
        if ".ckpt." in os.readlink(f"/proc/self/fd/{fd}"):
            checkpoint_writes.append(fd)
            if len(checkpoint_writes) > 2:  # epoch 1 wrote best.ckpt and last.ckpt
                return FullDisk(handle)
        return handle

    monkeypatch.setattr(kdlens.io, "os", SimpleNamespace(**{**vars(os), "fdopen": fdopen}))  # kdlens.io's writes only
    run = tmp_path / "run"
    config = write_config(tmp_path / "run.yaml", tiny_experiment(run, recipe={"epochs": 3, "optimizer": {"name": "sgd", "lr": 0.05}}))
    refused(["train", config], "No space left on device", "Free disk space", "checkpoints")
    monkeypatch.undo()

    folder = RunFolder(run)
    assert training_state(load_checkpoint_file(folder.last))[0] == 1
    assert training_state(load_checkpoint_file(folder.best))[0] == 1
    assert folder.config_file.is_file() and not folder.finished
    assert not [p for p in folder.checkpoint_dir.iterdir() if p.name.endswith(".tmp")]


def test_a_read_only_output_folder_keeps_the_earlier_results(tmp_path, teacher_checkpoint, monkeypatch):
    import kdlens.io

    out = tmp_path / "eval"
    out.mkdir()
    (out / "results.json").write_text('{"earlier": true}')

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(kdlens.io, "tempfile", SimpleNamespace(mkstemp=read_only))  # kdlens.io's writes only
    refused(["evaluate", teacher_checkpoint, "--out", out], str(out / "results.json"), "Read-only file system",
            "Make the folder writable")
    assert json.loads((out / "results.json").read_text()) == {"earlier": True}


# ---------------------------------------------------------------- export


def test_a_model_with_large_logits_exports(tmp_path, teacher_checkpoint):
    def scale_classifier(checkpoint):
        for key in ("model.fc.weight", "model.fc.bias"):
            checkpoint["state_dict"][key] = checkpoint["state_dict"][key] * 1e4

    path = edited_checkpoint(teacher_checkpoint, tmp_path / "large.ckpt", scale_classifier)
    result = runner.invoke(app, ["export", str(path)])
    assert result.exit_code == 0, result.output
    card = json.loads(path.with_suffix(".card.json").read_text())
    assert card["onnxruntime_tolerance"] > 1e-4  # scaled by the logits' size
    assert card["onnxruntime_max_abs_difference"] <= card["onnxruntime_tolerance"]
    assert "1e-4 · max(1, max |logit|)" in path.with_suffix(".card.md").read_text()


def test_an_onnx_mismatch_leaves_nothing_and_keeps_an_earlier_export(tmp_path, teacher_checkpoint, monkeypatch):
    import onnxruntime

    checkpoint = tmp_path / "teacher.ckpt"
    shutil.copy(teacher_checkpoint, checkpoint)
    real_run = onnxruntime.InferenceSession.run
    monkeypatch.setattr(onnxruntime.InferenceSession, "run", lambda self, *a, **k: [x + 1.0 for x in real_run(self, *a, **k)])
    refused(["export", checkpoint], "differ from PyTorch's", "nothing was written", "--device cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher.ckpt"]  # no .onnx, .onnx.data or temporary folder

    monkeypatch.undo()
    assert runner.invoke(app, ["export", str(checkpoint)]).exit_code == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert {"teacher.onnx", "teacher.onnx.data"} <= set(before)
    monkeypatch.setattr(onnxruntime.InferenceSession, "run", lambda self, *a, **k: [x * 2.0 for x in real_run(self, *a, **k)])
    refused(["export", checkpoint], "nothing was written")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
