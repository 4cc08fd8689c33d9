"""The run artifact layer: the run-folder layout (:class:`RunFolder`), what a finished run's
results.json holds (:class:`RunResults`), what a checkpoint records besides its weights
(:class:`CheckpointInfo`), loading models (:func:`load_model`), finding runs (:func:`find_runs`,
:func:`list_runs`) and importing other codebases' checkpoints. Training writes through it;
evaluation, export, the report, the sweep and the CLI read through it. No Lightning import."""

from kdlens.runs.checkpoints import (
    CheckpointError,
    CheckpointInfo,
    IncompatibleCheckpoint,
    check_fits,
    checkpoint_info,
    load_checkpoint_file,
    load_model,
    model_from_checkpoint,
    save_model_checkpoint,
)
from kdlens.runs.discovery import Run, RunGroup, find_run_dirs, find_runs, group_runs
from kdlens.runs.importing import (
    FORMATS,
    import_checkpoint,
    import_checkpoint_file,
    import_or_load,
    infer_architecture,
)
from kdlens.runs.layout import EMPTY, FINISHED, INTERRUPTED, RunFolder, RunFolderError
from kdlens.runs.listing import RunInfo, list_runs
from kdlens.runs.results import CHECKPOINTS, CheckpointResults, RunResults

__all__ = [
    "CHECKPOINTS",
    "EMPTY",
    "FINISHED",
    "FORMATS",
    "INTERRUPTED",
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointResults",
    "IncompatibleCheckpoint",
    "Run",
    "RunFolder",
    "RunFolderError",
    "RunGroup",
    "RunInfo",
    "RunResults",
    "check_fits",
    "checkpoint_info",
    "find_run_dirs",
    "find_runs",
    "group_runs",
    "import_checkpoint",
    "import_checkpoint_file",
    "import_or_load",
    "infer_architecture",
    "list_runs",
    "load_checkpoint_file",
    "load_model",
    "model_from_checkpoint",
    "save_model_checkpoint",
]
