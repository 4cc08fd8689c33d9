"""The `kdlens` command."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Optional

import typer

from kdlens.config import ConfigError, ExperimentConfig, apply_override, load_config
from kdlens.data import DataError, DatasetNotFoundError
from kdlens.training.checkpoints import CheckpointError
from kdlens.training.module import TrainingDiverged

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Explainable knowledge distillation: train, distil, evaluate.",
)

Overrides = Annotated[Optional[list[str]], typer.Argument(help="key.sub=value overrides, e.g. recipe.epochs=5")]
ConfigPath = Annotated[Path, typer.Argument(help="experiment YAML file")]
Resume = Annotated[bool, typer.Option("--resume", help="continue the run in output_dir from its last checkpoint")]


def _user_errors(command):
    """Errors caused by input print as one clear message and exit 2, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (ConfigError, CheckpointError, DataError, DatasetNotFoundError, TrainingDiverged) as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _run(config: ExperimentConfig, resume: bool) -> None:
    from kdlens.training.run import run_experiment

    result = run_experiment(config, resume=resume)
    if result.results is None:
        return
    best, last = result.results["best"], result.results["last"]
    typer.echo(
        f"{config.name}: best epoch {best['epoch']} val top-1 {best['val_top1']:.4f} test top-1 {best['test']['top1']:.4f}; "
        f"last epoch {last['epoch']} test top-1 {last['test']['top1']:.4f}"
    )
    typer.echo(f"wrote {result.best_checkpoint}, {result.last_checkpoint}, {result.run_dir / 'results.json'}, logs in {result.run_dir / 'logs'}")


@app.command()
@_user_errors
def train(config: ConfigPath, overrides: Overrides = None, resume: Resume = False) -> None:
    """Train a model (e.g. a teacher) with its loss terms, without a teacher."""
    experiment = load_config(config, overrides or [])
    if experiment.teacher is not None:
        raise ConfigError("this config has a teacher: use `kdlens distill` for it")
    _run(experiment, resume)


@app.command()
@_user_errors
def distill(config: ConfigPath, overrides: Overrides = None, resume: Resume = False) -> None:
    """Distil a student from the config's teacher."""
    experiment = load_config(config, overrides or [])
    if experiment.teacher is None:
        raise ConfigError("this config has no teacher: add a 'teacher' section, or use `kdlens train`")
    _run(experiment, resume)


@app.command()
@_user_errors
def sweep(
    config: ConfigPath,
    overrides: Overrides = None,
    grid: Annotated[Optional[list[str]], typer.Option(help="key=v1,v2 or key1,key2=a1:a2,b1:b2 (repeatable)")] = None,
    seeds: Annotated[int, typer.Option(min=1, help="independently seeded runs per grid point")] = 1,
    out: Annotated[Optional[Path], typer.Option(help="sweep folder; default runs/<name>-sweep")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the planned runs and exit")] = False,
) -> None:
    """Train every grid point × seed (skipping finished runs, resuming interrupted ones) and write
    summary.csv / summary.md with mean ± std over seeds."""
    from kdlens.config import read_raw_config
    from kdlens.report.tables import format_table
    from kdlens.training.run import run_experiment
    from kdlens.training.sweep import parse_axis, plan_sweep, run_sweep

    raw = read_raw_config(config, overrides or [])
    sweep_dir = out or Path("runs") / f"{raw.get('name', 'experiment')}-sweep"
    runs = plan_sweep(raw, [parse_axis(axis) for axis in grid or []], seeds, sweep_dir)
    if dry_run:
        for run in runs:
            typer.echo(f"{run.config.name}: {run.point} seed {run.seed} -> {run.config.run_dir}")
        return
    rows = run_sweep(runs, sweep_dir, lambda c, resume: run_experiment(c, resume=resume).results, log=typer.echo)
    typer.echo(format_table(rows))
    typer.echo(f"wrote {sweep_dir / 'summary.csv'} and {sweep_dir / 'summary.md'}")


@app.command()
@_user_errors
def evaluate(
    checkpoints: Annotated[list[Path], typer.Argument(help="kdlens checkpoints (.ckpt)")],
    data: Annotated[Optional[str], typer.Option(help="dataset name; default: the one the first checkpoint was trained on")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="dataset option, e.g. --set shortcut=0.95")] = None,
    teacher: Annotated[Optional[Path], typer.Option(help="teacher checkpoint for agreement and KL")] = None,
    out: Annotated[Optional[Path], typer.Option(help="folder for results.json and results.csv")] = None,
) -> None:
    """Accuracy (top-1/top-5), group accuracies, and agreement and KL with a teacher, on the test
    split and any extra evaluation splits of the dataset."""
    from kdlens.config import validate_data_config
    from kdlens.data import build_data
    from kdlens.io import atomic_write_text, write_json
    from kdlens.metrics.evaluate import evaluate_models
    from kdlens.report.tables import flatten_report, format_table, rows_to_csv
    from kdlens.training.checkpoints import load_model

    loaded = {str(path): load_model(path) for path in checkpoints}
    trained_on = next(iter(loaded.values()))[1]["config"]["data"]
    data_raw = {"name": data} if data and data != trained_on["name"] else dict(trained_on)
    for option in set_ or []:
        apply_override(data_raw, option)
    data_config = validate_data_config(data_raw)
    bundle = build_data(data_config)
    for path, (_, info) in loaded.items():
        if (info["num_classes"], info["in_channels"]) != (bundle.num_classes, bundle.in_channels):
            raise ConfigError(
                f"'{path}' predicts {info['num_classes']} classes from {info['in_channels']} channels but "
                f"'{data_config.name}' has {bundle.num_classes} classes and {bundle.in_channels} channels"
            )
    teacher_model = load_model(teacher)[0] if teacher else None
    reports = evaluate_models({path: model for path, (model, _) in loaded.items()}, bundle, data_config, teacher_model)
    rows = [{"model": path, **flatten_report(report)} for path, report in reports.items()]
    typer.echo(format_table(rows))
    if out:
        write_json(out / "results.json", reports)
        atomic_write_text(out / "results.csv", rows_to_csv(rows))
        typer.echo(f"wrote {out / 'results.json'} and {out / 'results.csv'}")


@app.command()
@_user_errors
def export(
    checkpoint: Annotated[Path, typer.Argument(help="kdlens checkpoint (.ckpt)")],
    format: Annotated[str, typer.Option("--format", help="export format")] = "onnx",
    out: Annotated[Optional[Path], typer.Option(help="output file; default: beside the checkpoint")] = None,
) -> None:
    """Export the trained model (without connectors) to ONNX, verified with onnxruntime, with a
    model card (.card.json/.card.md) beside it."""
    from kdlens.export import export_onnx

    if format != "onnx":
        raise ConfigError(f"unknown export format '{format}': kdlens exports 'onnx'")
    result = export_onnx(checkpoint, out)
    typer.echo(f"wrote {result.onnx_path} (onnxruntime max |Δlogit| {result.max_abs_difference:.1e}) and {result.card_path}")


@app.command()
@_user_errors
def demo(
    out: Annotated[Path, typer.Option(help="output folder")] = Path("runs/demo"),
    epochs: Annotated[int, typer.Option(help="student epochs")] = 8,
    teacher_epochs: Annotated[int, typer.Option(help="teacher epochs")] = 10,
) -> None:
    """Teacher on unbiased shapes; scratch and KD students on shortcut-biased shapes; one table."""
    from kdlens.demo import run_demo

    run_demo(out, epochs=epochs, teacher_epochs=teacher_epochs, log=typer.echo)
