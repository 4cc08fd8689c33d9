"""`python -m kdlens ...` (e.g. under torchrun) is the `kdlens` command."""

from kdlens.cli import app

app(prog_name="kdlens")
