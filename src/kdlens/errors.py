"""Errors caused by what the user gave (a config, a file, a name, an option), importable without
importing torch: the CLI catches :class:`UserError` and prints its message, which names the fix,
without a traceback (exit status 2)."""

from __future__ import annotations

import errno


class UserError(Exception):
    """Base of the errors whose message tells the user what to change; every module that raises
    such an error subclasses it (``ConfigError``, ``DataError``, ``WeightsError``, ...)."""


class ConfigError(UserError, ValueError):
    """A config that cannot run; the message names every problem and its fix."""


class OutputError(UserError, OSError):
    """A file kdlens was writing could not be written (a full disk, a read-only or missing folder,
    a file where a folder is expected). Whatever was there before is left as it was: every file is
    written to a temporary file beside it and renamed over it only when complete."""

    def __init__(self, path: object, err: OSError, fix: str | None = None) -> None:
        self.path, self.reason = str(path), err
        super().__init__(err.errno, f"cannot write '{path}': {_strerror(err)}. {fix or output_fix(err)}")

    def __str__(self) -> str:
        return self.args[1]


_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_READ_ONLY = {errno.EACCES, errno.EPERM, errno.EROFS}
_NOT_A_FOLDER = {errno.ENOTDIR, errno.EEXIST, errno.EISDIR}
DISK_ERRNOS = frozenset(_NO_SPACE | _READ_ONLY | _NOT_A_FOLDER | {errno.ENOENT, errno.ENAMETOOLONG, errno.EIO})
"""The ``errno`` of an OSError that the file system, not kdlens, caused: the CLI reports those
as one message naming the file and the fix (exit 2)."""


def _strerror(err: OSError) -> str:
    return err.strerror or str(err) or type(err).__name__


def output_fix(err: OSError) -> str:
    """What to do about an OSError raised while writing, by its errno."""
    if err.errno in _NO_SPACE:
        return "Free disk space (or raise the quota), or write elsewhere (output_dir=..., --out ...); the files written before are intact"
    if err.errno in _READ_ONLY:
        return "Make the folder writable, or write elsewhere (output_dir=..., --out ...); the files written before are intact"
    if err.errno == errno.ENOENT:
        return "Check that the path and its folders exist, or write elsewhere (output_dir=..., --out ...)"
    if err.errno in _NOT_A_FOLDER:
        return "A file stands where a folder is needed (or the reverse): move it, or write elsewhere (output_dir=..., --out ...)"
    return "Check the path and the disk, or write elsewhere (output_dir=..., --out ...); the files written before are intact"


def describe_os_error(err: OSError) -> str:
    """One line for an OSError of the file system that reached the CLI: the file, the reason, the fix."""
    where = f" '{err.filename}'" if err.filename else ""
    return f"cannot use{where}: {_strerror(err)}. {output_fix(err)}"
