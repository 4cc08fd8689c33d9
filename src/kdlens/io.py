"""Atomic file writes: a crash at any moment leaves the old file or the new one, never a torn one;
and the text formats result rows are written in (CSV, Markdown)."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, rename it over ``path``.

    A file system that refuses (full disk, read-only or missing folder, a file where the folder
    should be) raises :class:`~kdlens.errors.OutputError` naming ``path`` and the fix; the
    temporary file is removed and ``path`` keeps what it held before."""
    path = Path(path)
    tmp: str | None = None
    file = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
        with os.fdopen(fd, "wb") as raw:
            file = _RecordingFile(raw)
            write(file)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
        tmp = None
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
    except OSError as err:
        raise _output_error(path, err) from None
    except BaseException as err:
        # Writers that call file.write from C (torch.save) turn its OSError into a RuntimeError.
        if file is not None and file.error is not None and not isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise _output_error(path, file.error) from None
        raise
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return path


def _output_error(path: Path, err: OSError) -> OSError:
    from kdlens.errors import OutputError

    return err if isinstance(err, OutputError) else OutputError(path, err)


class _RecordingFile:
    """A binary file that remembers the first OSError its ``write`` raised."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw, self.error = raw, None

    def write(self, data: Any) -> int:
        try:
            return self._raw.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def read_json(path: Path, error: type[Exception], missing: str, unreadable_fix: str) -> Any:
    """The JSON in ``path``; ``error(missing)`` when the file does not exist, ``error`` naming the
    file and ``unreadable_fix`` when it cannot be read or parsed."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise error(missing) from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise error(f"{path} is unreadable ({type(err).__name__}): {unreadable_fix}") from None


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    """CSV text of result rows; the columns are every key of any row, in first-seen order."""
    fields = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of result rows; the columns are every key of any row, in first-seen order."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
