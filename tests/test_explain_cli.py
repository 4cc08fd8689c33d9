"""`kdlens explain`: a grid of teacher and student maps and the raw maps, from checkpoints."""

import numpy as np
from typer.testing import CliRunner

from kdlens.cli import app

runner = CliRunner()


def test_explain_writes_the_grid_and_the_raw_maps(tmp_path, teacher_checkpoint):
    out = tmp_path / "explained"
    # The same checkpoint as teacher and as a student: two model columns per method.
    result = runner.invoke(app, ["explain", str(teacher_checkpoint), str(teacher_checkpoint), "--method", "gradcam",
                                 "--method", "saliency", "--n", "5", "--target", "teacher", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out / 'explanations.png'}" in result.output
    assert (out / "explanations.png").read_bytes().startswith(b"\x89PNG")
    saved = np.load(out / "explanations.npz")
    assert saved["maps_gradcam"].shape == saved["maps_saliency"].shape == (2, 5, 16, 16)
    assert saved["images"].shape == (5, 3, 16, 16) and 0 <= saved["images"].min() and saved["images"].max() <= 1
    assert saved["labels"].shape == (5,) and saved["predictions"].shape == (2, 5)
    np.testing.assert_array_equal(saved["targets"][1], saved["predictions"][0])
    np.testing.assert_allclose(saved["maps_gradcam"][0], saved["maps_gradcam"][1], rtol=1e-5, atol=1e-6)


def test_explain_input_errors_exit_2_with_a_message(tmp_path, teacher_checkpoint):
    result = runner.invoke(app, ["explain", str(teacher_checkpoint), "--method", "gradcm", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "Did you mean 'gradcam'" in result.output
    result = runner.invoke(app, ["explain", str(teacher_checkpoint), "--method", "bcos", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "use a B-cos model" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["explain", str(teacher_checkpoint), "--method", "gradcam", "--split", "holdout",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 2 and "its splits: train, val, test, shifted" in result.output
