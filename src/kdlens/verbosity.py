"""How much of the libraries' own output kdlens shows: by default only kdlens's lines (and one
progress display); ``kdlens --verbose`` brings back everything Lightning, torch and the exporters
print. Pure Python (logging, warnings): importing it loads nothing heavy."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

_verbose = False

LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")
"""Lightning's loggers: each sets its own level at import, so each is quietened by name."""
OWN_MODULES = r"kdlens(\..*)?$"
"""Warnings raised by these modules (kdlens's own) are always shown."""


def set_verbose(verbose: bool) -> None:
    """Show (True) or hide (False, the default) the libraries' informational output."""
    global _verbose
    _verbose = bool(verbose)


def is_verbose() -> bool:
    return _verbose


@contextmanager
def library_output_hidden(loggers: Iterable[str] = LIGHTNING_LOGGERS) -> Iterator[None]:
    """Within: the named loggers show errors only, and warnings not raised by kdlens's own modules
    are dropped. Both are restored on exit (no process-wide filter is left behind); with
    :func:`set_verbose` ``(True)`` nothing is hidden."""
    if _verbose:
        yield
        return
    saved = {name: logging.getLogger(name).level for name in loggers}
    for name in saved:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore")
            warnings.filterwarnings("default", module=OWN_MODULES)
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
