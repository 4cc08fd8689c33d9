"""Errors caused by what the user gave (a config, a file, a name, an option), importable without
importing torch: the CLI catches :class:`UserError` and prints its message, which names the fix,
without a traceback (exit status 2)."""

from __future__ import annotations


class UserError(Exception):
    """Base of the errors whose message tells the user what to change; every module that raises
    such an error subclasses it (``ConfigError``, ``DataError``, ``WeightsError``, ...)."""


class ConfigError(UserError, ValueError):
    """A config that cannot run; the message names every problem and its fix."""
