import torch
from conftest import tiny_experiment
from lightning.pytorch.callbacks import Callback

from kdlens.config import validate_config
from kdlens.data import build_data
from kdlens.data.shapes import ShapesConfig
from kdlens.explain.cache import default_cache_dir
from kdlens.training.run import run_experiment


def test_attached_maps_get_the_same_crop_and_flip_as_the_image():
    bundle = build_data(ShapesConfig(train_size=64, test_size=8, image_size=16))
    train = bundle.train
    plain_masks = torch.stack([train.unaugmented()[i]["mask"] for i in range(len(train))])
    attached = train.attach(spatial={"teacher_map": plain_masks}, plain={"teacher_logits": torch.arange(len(train)).float()[:, None]})
    torch.manual_seed(0)
    moved = 0
    for i in range(len(train)):
        sample = attached[i]
        assert torch.equal(sample["teacher_map"], sample["mask"])  # the mask got the image's crop/flip
        assert sample["teacher_logits"].item() == i
        moved += not torch.equal(sample["teacher_map"], plain_masks[i])
    assert moved > len(train) // 2  # augmentation did move most of them


class CountTeacherCallsInTrainingSteps(Callback):
    """Validation still runs the teacher (for agreement); training steps must not."""

    def on_train_start(self, trainer, pl_module):
        self.calls, self.in_step = 0, False

        def count(*_):
            self.calls += self.in_step

        pl_module.teacher.register_forward_hook(count)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.in_step = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.in_step = False


def test_frozen_teacher_runs_without_teacher_passes_and_reuses_its_cache(tmp_path, teacher_checkpoint, monkeypatch):
    monkeypatch.setenv("KDLENS_CACHE", str(tmp_path / "cache"))
    sections = {
        "teacher": {"name": "resnet8", "checkpoint": str(teacher_checkpoint)},
        "losses": [{"name": "kd"}, {"name": "e2kd", "weight": 1.0, "frozen_teacher": True}],
        "recipe": {"epochs": 1},
    }
    counter = CountTeacherCallsInTrainingSteps()
    run_experiment(validate_config(tiny_experiment(tmp_path / "first", **sections)), callbacks=[counter])
    assert counter.calls == 0
    cached = {path: path.stat().st_mtime_ns for path in default_cache_dir().glob("*.pt")}
    assert len(cached) == 2  # the maps and the logits

    run_experiment(validate_config(tiny_experiment(tmp_path / "second", **sections)))
    assert {path: path.stat().st_mtime_ns for path in default_cache_dir().glob("*.pt")} == cached

    other_data = tiny_experiment(tmp_path / "third", **sections)
    other_data["data"] = {**other_data["data"], "seed": 1}
    run_experiment(validate_config(other_data))
    assert len(list(default_cache_dir().glob("*.pt"))) == 4  # another dataset: new entries


def test_offline_kd_trains_on_frozen_logits_without_teacher_passes(tmp_path, teacher_checkpoint, monkeypatch):
    monkeypatch.setenv("KDLENS_CACHE", str(tmp_path / "cache"))
    sections = {
        "teacher": {"name": "resnet8", "checkpoint": str(teacher_checkpoint)},
        "losses": [{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9, "frozen_teacher": True}],
        "recipe": {"epochs": 1},
    }
    counter = CountTeacherCallsInTrainingSteps()
    run = run_experiment(validate_config(tiny_experiment(tmp_path / "offline", **sections)), callbacks=[counter])
    assert counter.calls == 0
    assert len(list(default_cache_dir().glob("*.pt"))) == 1  # the logits only: no explanation was computed
    assert run.results.best.val_top1 is not None
