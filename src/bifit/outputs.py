"""Failures to write outputs (a read-only or full location, a file where a folder should be) as one
`OutputError` whose message names the path and what failed.

An `OSError` raised while writing often names no file: a disk that fills up mid-write gives just
"[Errno 28] No space left on device". Writers wrap their work in :func:`writing` so the message says
which file or folder could not be written and why.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["OutputError", "make_dirs", "output_error", "write_text", "writing"]


class OutputError(OSError):
    """An output could not be written; `str()` names the path and the reason, `errno` is the cause's."""


def output_error(exc: Exception, path: str | os.PathLike[str], action: str = "write") -> OutputError:
    """`exc` (an `OSError`, or a PyAV error, which carries the same attributes) as an `OutputError`
    naming the file it carries, else `path`."""
    if isinstance(exc, OutputError):
        return exc
    filename = getattr(exc, "filename", None)
    target = filename if isinstance(filename, (str, bytes, os.PathLike)) else path
    error = OutputError(f"cannot {action} {os.fsdecode(target)}: {getattr(exc, 'strerror', None) or exc}")
    error.errno = getattr(exc, "errno", None)
    return error


@contextmanager
def writing(path: str | os.PathLike[str], action: str = "write") -> Iterator[None]:
    """Turn an `OSError` raised inside the block into an `OutputError` ("cannot <action> <path>: <reason>").

    Raises:
        OutputError: from any `OSError` of the block (an `OutputError` passes unchanged).
    """
    try:
        yield
    except OSError as exc:
        raise output_error(exc, path, action) from exc


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """`Path(path).write_text(text)` (UTF-8), failing with an `OutputError` naming `path`."""
    path = Path(path)
    with writing(path):
        path.write_text(text, encoding="utf-8")
    return path


def make_dirs(path: str | os.PathLike[str]) -> Path:
    """`Path(path).mkdir(parents=True, exist_ok=True)`, failing with an `OutputError` naming the folder."""
    path = Path(path)
    with writing(path, "create the folder"):
        path.mkdir(parents=True, exist_ok=True)
    return path
