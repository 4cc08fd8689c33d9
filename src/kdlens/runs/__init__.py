"""Run artifacts: kdlens checkpoints (and the import of other codebases' checkpoints). Written by
training, read by evaluation, export, the report and the CLI; no Lightning import."""

from kdlens.runs.checkpoints import (
    CheckpointError,
    checkpoint_info,
    load_checkpoint_file,
    load_model,
    model_from_checkpoint,
    save_model_checkpoint,
)
from kdlens.runs.importing import (
    FORMATS,
    import_checkpoint,
    import_checkpoint_file,
    import_or_load,
    infer_architecture,
)

__all__ = [
    "FORMATS",
    "CheckpointError",
    "checkpoint_info",
    "import_checkpoint",
    "import_checkpoint_file",
    "import_or_load",
    "infer_architecture",
    "load_checkpoint_file",
    "load_model",
    "model_from_checkpoint",
    "save_model_checkpoint",
]
