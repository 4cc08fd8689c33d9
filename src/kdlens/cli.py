"""The `kdlens` command."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

# Only what --help needs at module level: every command imports what it uses (torch, the
# registries' packages, Lightning) when it runs.
from kdlens.errors import DISK_ERRNOS, ConfigError, UserError, describe_os_error

if TYPE_CHECKING:
    from kdlens.config import ExperimentConfig

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Explainable knowledge distillation: train, distil, evaluate.",
)

Overrides = Annotated[Optional[list[str]], typer.Argument(help="key.sub=value overrides, e.g. recipe.epochs=5")]
ConfigPath = Annotated[Path, typer.Argument(help="experiment YAML file")]
Resume = Annotated[bool, typer.Option("--resume", help="continue the run in output_dir from its last checkpoint")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="validate the config and print the resolved plan; no data, no training")]
Device = Annotated[Optional[str], typer.Option("--device", help="device the models run on: cpu, cuda, cuda:N, mps or auto (default: CUDA when present, else CPU)")]


@app.callback()
def _global_options(
    verbose: Annotated[bool, typer.Option("--verbose", help="also show the libraries' own output (Lightning's start-up and status lines, their warnings, torch.onnx's export steps)")] = False,
    engine: Annotated[str, typer.Option("--engine", help="how forward-only passes run (metric sweeps, perturbation explainers, evaluation, frozen-teacher outputs): auto (the fastest backend that reproduces the logits, measured), eager, folded, jit, onnxruntime or compile")] = "auto",
) -> None:
    """Explainable knowledge distillation: train, distil, evaluate."""
    from kdlens.engine import BACKENDS
    from kdlens.verbosity import set_verbose

    set_verbose(verbose)
    if engine not in BACKENDS:
        typer.echo(f"Error: unknown --engine '{engine}': choose one of {', '.join(BACKENDS)}", err=True)
        raise typer.Exit(2)
    if engine != "auto":
        from kdlens.engine import set_default_backend

        set_default_backend(engine)


def _user_errors(command):
    """Errors caused by input print as one clear message and exit 2, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as err:  # ConfigError, DataError, CheckpointError, ExplainError, WeightsError, ...
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
        except OSError as err:  # the file system refused (full disk, read-only folder, ...) outside kdlens's writers
            if err.errno not in DISK_ERRNOS:
                raise
            typer.echo(f"error: {describe_os_error(err)}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _plan(config: ExperimentConfig) -> str:
    """What a run of ``config`` would do, from the config alone (no data is read)."""
    from kdlens.config import dump_config

    def weights(m) -> str:
        return f"weights {m.weights}" if m.weights else f"from {m.checkpoint}" if m.checkpoint else "initialised at random"

    teacher = f"{config.teacher.name} {weights(config.teacher)}" if config.teacher else "none"
    terms = " + ".join(f"{term.weight:g}·{term.name}" for term in config.losses)
    schedule = config.recipe.schedule
    lines = [
        f"plan for '{config.name}' -> {config.run_dir}",
        f"  data: {config.data.name}, batch {config.data.batch_size} per process × {config.trainer.devices} device(s) × {config.trainer.num_nodes} node(s)",
        f"  model: {config.model.name} {weights(config.model)}; teacher: {teacher}",
        f"  loss: {terms}",
        f"  recipe: {config.recipe.epochs} epochs, {config.recipe.optimizer.name} lr {config.recipe.optimizer.lr:g}, {schedule.name} schedule",
        "resolved config:",
        dump_config(config),
    ]
    return "\n".join(lines)


def _run(config: ExperimentConfig, resume: bool, dry_run: bool = False) -> None:
    if dry_run:
        typer.echo(_plan(config))
        return
    from kdlens.training.run import run_experiment

    result = run_experiment(config, resume=resume)
    if result.results is None:
        return
    best, last, folder = result.results.best, result.results.last, result.folder
    typer.echo(
        f"{config.name}: best epoch {best.epoch} val top-1 {best.val_top1:.4f} test top-1 {best.metric('test', 'top1'):.4f}; "
        f"last epoch {last.epoch} test top-1 {last.metric('test', 'top1'):.4f}"
    )
    typer.echo(f"wrote {folder.best}, {folder.last}, {folder.results_file}, logs in {folder.logs_dir}")


@app.command()
@_user_errors
def train(config: ConfigPath, overrides: Overrides = None, resume: Resume = False, dry_run: DryRun = False) -> None:
    """Train a model (e.g. a teacher) with its loss terms, without a teacher."""
    from kdlens.config import load_config

    experiment = load_config(config, overrides or [])
    if experiment.teacher is not None:
        raise ConfigError("this config has a teacher: use `kdlens distill` for it")
    _run(experiment, resume, dry_run)


@app.command()
@_user_errors
def distill(config: ConfigPath, overrides: Overrides = None, resume: Resume = False, dry_run: DryRun = False) -> None:
    """Distil a student from the config's teacher."""
    from kdlens.config import load_config

    experiment = load_config(config, overrides or [])
    if experiment.teacher is None:
        raise ConfigError("this config has no teacher: add a 'teacher' section, or use `kdlens train`")
    _run(experiment, resume, dry_run)


@app.command()
@_user_errors
def sweep(
    config: Annotated[Optional[Path], typer.Argument(help="experiment YAML file")] = None,
    overrides: Overrides = None,
    grid: Annotated[Optional[list[str]], typer.Option(help="key=v1,v2 or key1,key2=a1:a2,b1:b2 (repeatable)")] = None,
    seeds: Annotated[int, typer.Option(min=1, help="independently seeded runs per grid point")] = 1,
    out: Annotated[Optional[Path], typer.Option(help="sweep folder; default runs/<name>-sweep")] = None,
    launcher: Annotated[str, typer.Option(help="local: one run after another here; pool: --workers runs at a time here, each in its own process; slurm: one Slurm job per run (submitit, the cluster extra)")] = "local",
    workers: Annotated[Optional[int], typer.Option(min=1, help="--launcher pool: runs at a time (CPU threads divided between them, one GPU each when there are GPUs)")] = None,
    slurm: Annotated[Optional[list[str]], typer.Option("--slurm", help="--launcher slurm: a job option key=value (partition, time, gpus_per_node, nodes, cpus_per_task, mem, account, qos, requeues), over the config's slurm section (repeatable)")] = None,
    status: Annotated[Optional[Path], typer.Option("--status", metavar="DIR", help="show each run of the sweep in DIR as pending, running, finished or failed, and exit")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the planned runs (with --launcher slurm: each job's submitit parameters) and exit")] = False,
) -> None:
    """Train every grid point × seed (skipping finished runs and runs another process is training,
    resuming interrupted ones) and write summary.csv / summary.md with mean ± std over the seeds
    that finished."""
    from kdlens.config import read_raw_config
    from kdlens.launch import LAUNCHERS
    from kdlens.report.tables import format_table
    from kdlens.training.sweep import SUMMARY_FILES, default_sweep_dir, parse_axis, plan_sweep, run_sweep, sweep_status
    from kdlens.verbosity import is_verbose

    if status is not None:
        if config is not None:
            raise UserError("--status DIR shows a sweep's runs: give it without a config file")
        rows = sweep_status(status)
        typer.echo(format_table(rows))
        counts = {state: sum(row["status"] == state for row in rows) for state in ("finished", "running", "failed", "pending")}
        typer.echo(", ".join(f"{count} {state}" for state, count in counts.items()))
        return
    if config is None:
        raise UserError("give the sweep's config file (kdlens sweep CONFIG --grid ...), or --status DIR to see a sweep's runs")
    if launcher not in LAUNCHERS:
        raise UserError(f"--launcher {launcher!r} is not one of {', '.join(LAUNCHERS)}")
    if (workers is None) == (launcher == "pool"):
        raise UserError("--launcher pool needs --workers N (runs at a time)" if workers is None else "--workers is for --launcher pool")
    if slurm and launcher != "slurm":
        raise UserError("--slurm options are for --launcher slurm")
    for option in slurm or []:
        if "=" not in option:
            raise UserError(f"--slurm {option!r} is not key=value, e.g. --slurm partition=gpu --slurm time=24:00:00")
    raw = read_raw_config(config, [*(overrides or []), *(f"slurm.{option}" for option in slurm or [])])
    sweep_dir = out or default_sweep_dir(raw)
    runs = plan_sweep(raw, [parse_axis(axis) for axis in grid or []], seeds, sweep_dir)
    if launcher == "slurm":
        import json

        from kdlens.launch.slurm import check_slurm_available, job_spec, jobs_dir

        specs = [job_spec(run.config) for run in runs]  # every job's resources are checked before any is submitted
        if dry_run:
            for run, spec in zip(runs, specs):
                typer.echo(f"{run.config.name}: job {json.dumps(spec)} in {jobs_dir(run.config)}")
            return
        check_slurm_available()
    if dry_run:
        for run in runs:
            typer.echo(f"{run.config.name}: {run.point} seed {run.seed} -> {run.config.run_dir}")
        return
    if launcher == "pool":
        from kdlens.launch.pool import PoolLauncher

        chosen = PoolLauncher(workers, verbose=is_verbose())
    elif launcher == "slurm":
        from kdlens.launch.slurm import SlurmLauncher

        chosen = SlurmLauncher(verbose=is_verbose())
    else:
        from kdlens.training.run import run_experiment

        def chosen(experiment: ExperimentConfig, resume: bool) -> object:
            return run_experiment(experiment, resume=resume).results
    rows = run_sweep(runs, sweep_dir, chosen, log=typer.echo)
    if rows:
        typer.echo(format_table(rows))
    typer.echo(f"wrote {' and '.join(str(sweep_dir / name) for name in SUMMARY_FILES)}")
    if launcher == "slurm":
        typer.echo(f"`kdlens sweep --status {sweep_dir}` follows the jobs; run this command again when they end to summarise them")


@app.command()
@_user_errors
def evaluate(
    checkpoints: Annotated[list[Path], typer.Argument(help="kdlens checkpoints (.ckpt)")],
    data: Annotated[Optional[str], typer.Option(help="dataset name; default: the one the first checkpoint was trained on")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="dataset option, e.g. --set shortcut=0.95")] = None,
    teacher: Annotated[Optional[Path], typer.Option(help="teacher checkpoint for agreement and KL (with --explainer, its explanations are scored too, as model 'teacher')")] = None,
    explainer: Annotated[Optional[str], typer.Option(help="explanation methods, comma-separated (e.g. gradcam,lrp): adds explanation metrics")] = None,
    metrics: Annotated[str, typer.Option(help="comma-separated metric presets (thesis, localisation, complexity, perturbation_curves) and metric names, e.g. thesis,decile_prediction_drop; thesis is scaled to the image size")] = "thesis",
    target: Annotated[str, typer.Option(help="class explained: label (ground truth, as the thesis), pred or teacher")] = "label",
    layer: Annotated[Optional[str], typer.Option(help="module path the CAM-family explainers explain, e.g. layer4 (default: each model's last feature stage)")] = None,
    tta: Annotated[bool, typer.Option("--tta", help="average each explanation over horizontal flip × brightness {0.9, 1, 1.1} (the thesis's aug_smooth)")] = False,
    n: Annotated[Optional[int], typer.Option("--n", min=1, help="explain only the first n test images")] = None,
    sweep_precision: Annotated[str, typer.Option("--sweep-precision", help="precision of the explanation metrics' forward passes: float32, or bfloat16 / float16 (autocast, for GPUs; docs/benchmarks/precision.md measures which metrics keep their scores)")] = "float32",
    out: Annotated[Optional[Path], typer.Option(help="folder for results.json/.csv and the explanation scores")] = None,
    device: Device = None,
) -> None:
    """Accuracy (top-1/top-5), group accuracies, and agreement and KL with a teacher, on the test
    split and any extra evaluation splits of the dataset. With --explainer: every model (and the
    teacher) × explainer × metric on the test split, per sample (explanations.csv) and aggregated
    (explanations_summary.csv: mean, std, n, NaN count); with decile_prediction_drop, the
    per-image curve too (decile_prediction_drop.csv: columns -10% (unperturbed), 0%, …, 90%).
    Every name is checked before any work starts."""
    from kdlens.evaluation import evaluate_classification, open_checkpoints, plan_explanations, resolve_device, run_explanations
    from kdlens.io import atomic_write_text, rows_to_csv, write_json
    from kdlens.report.tables import flatten_report, format_table

    if not explainer and (layer is not None or tta or metrics != "thesis" or sweep_precision != "float32"):
        raise ConfigError("--layer, --tta, --metrics and --sweep-precision are options of the explanations: "
                          "add --explainer (e.g. --explainer gradcam)")
    if explainer:  # names first, before any checkpoint or data is read
        from kdlens.explain import EXPLAINERS
        from kdlens.registry import unknown_name_message

        for name in (m.strip() for m in explainer.split(",") if m.strip()):
            if name not in EXPLAINERS:
                raise ConfigError(unknown_name_message("explanation method", name, EXPLAINERS.names()))
    chosen_device = resolve_device(device)
    inputs = open_checkpoints(checkpoints, data, set_, teacher=teacher)
    # Check every explanation name now, before the accuracy pass and before any file is written.
    plan = plan_explanations(inputs, explainer, metrics, target, layer, tta, n, sweep_precision) if explainer else None
    if plan is not None and plan.precision != "float32":
        sensitive = [name for name, metric in plan.metrics.items() if metric.precision_sensitive]
        if sensitive:
            typer.echo(f"note: {', '.join(sensitive)} run in float32: {plan.precision} changes their scores "
                       "(a pass/fail test of close scores, docs/benchmarks/precision.md)")
    reports = evaluate_classification(inputs, chosen_device)
    rows = [{"model": path, **flatten_report(report)} for path, report in reports.items()]
    typer.echo(format_table(rows))
    if out:
        write_json(out / "results.json", reports)
        atomic_write_text(out / "results.csv", rows_to_csv(rows))
        typer.echo(f"wrote {out / 'results.json'} and {out / 'results.csv'}")
    if plan is None:
        return
    explained = run_explanations(plan, chosen_device)
    typer.echo(format_table(explained.summary))
    if out:
        written = {"explanations.csv": explained.scores, "explanations_summary.csv": explained.summary}
        written |= {f"{name}.csv": rows for name, rows in explained.curves.items()}
        for name, rows in written.items():
            atomic_write_text(out / name, rows_to_csv(rows))
        typer.echo(f"wrote {', '.join(str(out / name) for name in written)}")


@app.command()
@_user_errors
def export(
    checkpoint: Annotated[Path, typer.Argument(help="kdlens checkpoint (.ckpt)")],
    format: Annotated[str, typer.Option("--format", help="export format")] = "onnx",
    out: Annotated[Optional[Path], typer.Option(help="output file; default: beside the checkpoint")] = None,
    device: Device = None,
) -> None:
    """Export the trained model (without connectors) to ONNX, verified with onnxruntime, with a
    model card (.card.json/.card.md) beside it."""
    from kdlens.device import resolve_device
    from kdlens.export import export_onnx

    if format != "onnx":
        raise ConfigError(f"unknown export format '{format}': kdlens exports 'onnx'")
    result = export_onnx(checkpoint, out, device=resolve_device(device))
    typer.echo(f"wrote {result.onnx_path} (onnxruntime max |Δlogit| {result.max_abs_difference:.1e}) and {result.card_path}")


@app.command("import")
@_user_errors
def import_(
    source: Annotated[Optional[Path], typer.Argument(help="checkpoint of another codebase (mdistiller/CRD .pth, state_dict, Lightning .ckpt) or kdlens's; omit with --weights")] = None,
    out: Annotated[Path, typer.Option(help="kdlens checkpoint to write (.ckpt)")] = ...,
    data: Annotated[str, typer.Option(help="dataset the weights were trained on (its facts only: no images are read), e.g. cifar100")] = ...,
    model: Annotated[Optional[str], typer.Option(help="kdlens architecture; default: from an mdistiller/CRD folder <arch>_vanilla")] = None,
    weights: Annotated[Optional[str], typer.Option(help="published weights by name instead of SOURCE, e.g. --model resnet50 --weights IMAGENET1K_V2")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="dataset option, e.g. --set root=/data/imagenet")] = None,
    format: Annotated[str, typer.Option("--format", help="auto, kdlens, mdistiller, state_dict or lightning")] = "auto",
) -> None:
    """Convert a published checkpoint (e.g. an mdistiller/CRD CIFAR-100 teacher
    <arch>_vanilla/ckpt_epoch_240.pth) or published weights by name (--weights) into a kdlens
    checkpoint that computes the same logits."""
    from kdlens.config import apply_override, validate_data_config
    from kdlens.data import describe_data
    from kdlens.models import MODELS
    from kdlens.registry import unknown_name_message
    from kdlens.runs.checkpoints import save_model_checkpoint
    from kdlens.runs.importing import import_checkpoint_file, import_published, infer_architecture

    if (source is None) == (weights is None):
        raise ConfigError("give either SOURCE (a checkpoint file) or --weights NAME (published weights, with --model)")
    architecture = model or (infer_architecture(source) if source is not None else None)
    if architecture is None:
        where = f"'{source.parent.name}/' does not name the architecture (as mdistiller's <arch>_vanilla/ folders do)" if source else "--weights needs it"
        raise ConfigError(f"--model is required: {where}; give the kdlens architecture, e.g. --model resnet56")
    if architecture not in MODELS:
        raise ConfigError(unknown_name_message("model", architecture, MODELS.names()))
    data_raw: dict = {"name": data}
    for option in set_ or []:
        apply_override(data_raw, option)
    data_config = validate_data_config(data_raw)
    stored_config = {"data": data_config.model_dump(mode="json")}
    if weights is not None:
        imported, record = import_published(architecture, weights, describe_data(data_config), config=stored_config)
        save_model_checkpoint(out, imported, record)
        origin = f"weights {weights}"
    else:
        record = import_checkpoint_file(source, out, architecture, describe_data(data_config), format, config=stored_config)
        origin = f"format {record.source['format']}"
    typer.echo(f"wrote {out} ({origin}, architecture {architecture}, {record.num_classes} classes of {data_config.name})")


@app.command()
@_user_errors
def demo(
    out: Annotated[Path, typer.Option(help="output folder")] = Path("runs/demo"),
    epochs: Annotated[Optional[int], typer.Option(min=1, help="student epochs (default: the demo's)")] = None,
    teacher_epochs: Annotated[Optional[int], typer.Option(min=1, help="teacher epochs (default: the demo's)")] = None,
    train_size: Annotated[Optional[int], typer.Option(
        min=64, help="training images (default 2000); the test and shifted splits get half as many")] = None,
    device: Device = None,
) -> None:
    """Teacher on unbiased shapes; scratch, KD and e²KD students on shapes with a decoy-patch
    shortcut; one table of accuracy and where each model looks."""
    from kdlens.demo import DEMO_EPOCHS, DEMO_TEACHER_EPOCHS, DEMO_TRAIN_SIZE, run_demo
    from kdlens.device import resolve_device

    run_demo(out, epochs=epochs or DEMO_EPOCHS, teacher_epochs=teacher_epochs or DEMO_TEACHER_EPOCHS, log=typer.echo,
             device=resolve_device(device), train_size=train_size or DEMO_TRAIN_SIZE)


@app.command()
@_user_errors
def explain(
    checkpoints: Annotated[list[Path], typer.Argument(help="kdlens checkpoints (.ckpt): the first is the teacher, the others students")],
    method: Annotated[list[str], typer.Option("--method", help="explanation method, repeatable (e.g. gradcam, lrp, lime)")],
    out: Annotated[Path, typer.Option(help="folder for explanations.png and explanations.npz")],
    data: Annotated[Optional[str], typer.Option(help="dataset name; default: the one the teacher was trained on")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="dataset option, e.g. --set shortcut=0.95")] = None,
    n: Annotated[int, typer.Option("--n", min=1, help="number of images (the first n of the split)")] = 16,
    split: Annotated[str, typer.Option(help="train, val, test or an extra split of the dataset (e.g. shifted)")] = "test",
    target: Annotated[str, typer.Option(help="class explained: label (true), pred (each model's own top-1) or teacher (the teacher's top-1)")] = "label",
    device: Device = None,
) -> None:
    """Explanation maps of a teacher and its students on the first n images of a split: a PNG grid
    (rows: images; columns: the input, then per method the teacher and each student, one colour
    scale per method) and the raw maps, images, labels and predictions as .npz."""
    import torch

    from kdlens.evaluation import open_checkpoints, resolve_device
    from kdlens.explain import EXPLAINERS, check_target
    from kdlens.explain.figure import write_explanations
    from kdlens.registry import unknown_name_message

    for name in method:
        if name not in EXPLAINERS:
            raise ConfigError(unknown_name_message("explanation method", name, EXPLAINERS.names()))
    check_target(target)  # the first checkpoint is the teacher
    chosen_device = resolve_device(device)
    # Explain the images themselves, also on the train split: no augmentation.
    inputs = open_checkpoints(checkpoints, data, set_, augment=False)
    bundle, teacher_info = inputs.bundle, inputs.infos[0]
    splits = {"train": bundle.train, "val": bundle.val, "test": bundle.test, **bundle.extra_splits}
    if split not in splits:
        raise ConfigError(f"--split '{split}' is not a split of '{inputs.data.name}'; its splits: {', '.join(splits)}")
    samples = [splits[split][i] for i in range(min(n, len(splits[split])))]

    model_names = ["teacher"] + [f"student {i}" for i in range(1, len(checkpoints))]
    png, npz = write_explanations(
        out, [model.to(chosen_device) for model in inputs.models], model_names, [str(p) for p in checkpoints],
        torch.stack([s["image"] for s in samples]).to(chosen_device),
        torch.stack([s["label"] for s in samples]).to(chosen_device),
        method, target, mean=teacher_info.mean, std=teacher_info.std,
        class_names=teacher_info.class_names or [str(c) for c in range(bundle.num_classes)],
    )
    typer.echo(f"wrote {png} and {npz} ({len(samples)} {split} images, target: {target}; "
               f"columns: {', '.join(model_names)} for {', '.join(method)})")


@app.command()
@_user_errors
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="run folders and/or sweep folders (their runs are found below them)")],
    out: Annotated[Path, typer.Option(help="HTML file to write")] = Path("report.html"),
    data_limit: Annotated[int, typer.Option("--data-limit", min=1, help="test images per model for calibration, t-SNE and correlations")] = 512,
    explain_n: Annotated[int, typer.Option("--explain-n", min=1, help="test images explained with Grad-CAM for the explanation metrics")] = 32,
    threads: Annotated[Optional[int], typer.Option(min=1, help="torch CPU threads (default: torch's); 1 is fastest for small models on busy cores")] = None,
    device: Device = None,
) -> None:
    """One self-contained HTML report (embedded images, no external files) of runs and sweeps:
    summary, accuracy, agreement and KL, calibration, explanation metrics and heatmaps, training
    curves, t-SNE of penultimate features and class-correlation matrices. Runs differing only by
    seed are grouped as mean ± std."""
    from kdlens.evaluation import collect_report_data, resolve_device
    from kdlens.report.build import write_report

    data = collect_report_data(run_dirs, data_limit=data_limit, explain_n=explain_n, threads=threads,
                               device=resolve_device(device))
    typer.echo(f"wrote {write_report(data, out)}")


@app.command("runs")
@_user_errors
def runs_command(
    folder: Annotated[Path, typer.Argument(metavar="DIR", help="folder holding run folders, searched recursively (sweeps too)")] = Path("runs"),
) -> None:
    """List the runs below a folder: model, teacher, epochs done / planned, best and last test
    top-1, and status (finished, interrupted, empty/failed); then the command that resumes each
    interrupted run."""
    from kdlens.report.tables import format_table
    from kdlens.runs.layout import CHECKPOINTS_DIR, CONFIG_FILE, LAST
    from kdlens.runs.listing import COLUMNS, list_runs

    if not folder.is_dir():
        raise ConfigError(f"'{folder}' is not a folder: give the folder that holds the run folders (default: runs/)")
    found = list_runs(folder)
    if not found:
        typer.echo(f"no runs in '{folder}' (a run folder holds {CONFIG_FILE} and/or {CHECKPOINTS_DIR}/{LAST})")
        return
    typer.echo(format_table([run.row() for run in found], COLUMNS))
    resumable = [run for run in found if run.resume_command]
    if resumable:
        typer.echo("\nresume interrupted runs with:")
        for run in resumable:
            elsewhere = run.saved_run_dir is not None and Path(run.saved_run_dir).resolve() != run.path.resolve()
            hint = f"  # from the folder it was started in: its config writes to '{run.saved_run_dir}'" if elsewhere else ""
            typer.echo(f"  {run.resume_command}{hint}")
    for run in found:
        if run.note:
            typer.echo(f"note: {run.path}: {run.note}")
