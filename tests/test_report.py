"""`kdlens report`: one self-contained HTML file about runs and sweeps, checked as text and rendered
in headless Chromium."""

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import kd_sections, tiny_experiment
from typer.testing import CliRunner

from kdlens.cli import app
from kdlens.config import validate_config
from kdlens.report.runs import format_mean_std
from kdlens.training.run import run_experiment

runner = CliRunner()
CHROMIUM = Path("/usr/bin/chromium")
SECTIONS = ("summary", "accuracy", "agreement", "calibration", "explanation-metrics", "heatmaps", "curves", "tsne",
            "class-correlation")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, teacher_checkpoint):
    """A sweep folder with a KD student in two seeds, and a scratch run: 1 epoch each, tiny."""
    root = tmp_path_factory.mktemp("report")
    for seed in (0, 1):
        run_dir = root / "sweep" / "kd" / f"seed{seed}"
        raw = tiny_experiment(run_dir, **kd_sections(teacher_checkpoint), seed=seed, recipe={"epochs": 1})
        run_experiment(validate_config({**raw, "name": f"kd_seed{seed}"}))
    run_experiment(validate_config(tiny_experiment(root / "scratch", recipe={"epochs": 1})))
    return root


@pytest.fixture(scope="module")
def report(runs):
    out = runs / "report.html"
    result = runner.invoke(app, ["report", str(runs / "sweep"), str(runs / "scratch"), "--out", str(out),
                                 "--data-limit", "48", "--explain-n", "8", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    return out


def test_report_is_self_contained_with_every_section_and_the_runs_numbers(report, runs):
    html = report.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I), "external URL in the report"
    assert "<script" not in html.lower() and "@media print" in html
    assert html.count('src="data:image/png;base64,') >= 8
    for section in SECTIONS:
        assert f'id="{section}"' in html
    results = [json.loads((runs / "sweep" / "kd" / f"seed{s}" / "results.json").read_text()) for s in (0, 1)]
    scratch = json.loads((runs / "scratch" / "results.json").read_text())
    # The two seeds are one group: mean ± std over them.
    for which in ("best", "last"):
        assert format_mean_std([r[which]["test"]["top1"] for r in results]) in html
    assert format_mean_std([r["best"]["test"]["agreement"] for r in results]) in html
    assert format_mean_std([r["best"]["test"]["kl_teacher_student"] for r in results]) in html
    assert f"{scratch['best']['test']['top1']:.4f}" in html
    assert "ce×0.1 + kd×0.9 (T=4)" in html and "2 runs in 2 groups" not in html and "3 runs in 2 groups" in html
    assert "pointing game" in html and "SSIM" in html and "ECE (15 bins)" in html


def test_report_without_a_teacher_says_so_and_bad_input_exits_2(runs, tmp_path):
    out = tmp_path / "scratch.html"
    result = runner.invoke(app, ["report", str(runs / "scratch"), "--out", str(out), "--data-limit", "24", "--threads", "1"])
    assert result.exit_code == 0, result.output
    html = out.read_text()
    assert "No run has a teacher" in html and 'id="calibration"' in html
    result = runner.invoke(app, ["report", str(tmp_path / "missing"), "--out", str(out)])
    assert result.exit_code == 2 and "is not a folder" in result.output and "Traceback" not in result.output


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium (/usr/bin/chromium) is not installed; CI installs it")
def test_report_renders_in_headless_chromium(report, tmp_path):
    from PIL import Image

    screenshot = tmp_path / "report.png"
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
               f"--screenshot={screenshot}", "--window-size=1280,2000", report.resolve().as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert screenshot.is_file(), f"no screenshot (exit {done.returncode}): {done.stderr[-2000:]}"
    console_errors = [line for line in done.stderr.splitlines()
                      if "ERROR:CONSOLE" in line or ("CONSOLE" in line and ("Error" in line or "Uncaught" in line))]
    assert not console_errors, console_errors
    image = Image.open(screenshot).convert("RGB")
    assert image.size == (1280, 2000)
    pixels = [tuple(p) for p in np.asarray(image.resize((320, 500))).reshape(-1, 3)]
    not_white = sum(1 for p in pixels if min(p) < 235) / len(pixels)
    assert not_white > 0.05, f"the page looks blank ({not_white:.1%} non-white pixels)"
    assert len(set(pixels)) > 200, "too few colours: the figures did not render"
