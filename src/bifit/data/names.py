"""Names read from datasets (video ids, expression ids, frame names, ...) that become parts of paths.

Dataset metadata is untrusted input: an id ``../../x`` joined into a path would read or write
outside the dataset or output folder. Every reader passes the ids it turns into paths through
:func:`safe_name` where it parses them, and every writer of dataset-named outputs checks the final
folder with :func:`inside`.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["UnsafeNameError", "inside", "safe_name"]

_SEPARATORS = ("/", "\\")


class UnsafeNameError(ValueError):
    """A name from a dataset or file that is not a plain file name, or a path that leaves its folder."""


def safe_name(value: object, what: str, source: str | os.PathLike[str] | None = None) -> str:
    """``value`` if it is a plain file name: a non-empty string without ``/``, ``\\`` or NUL that is
    neither ``.`` nor ``..`` (so it is never absolute and never leaves the folder it is joined to).

    Args:
        value: the name as read.
        what: what it is, for the message, e.g. ``"video id"``.
        source: the file it was read from, for the message.

    Raises:
        UnsafeNameError: naming ``source``, ``what`` and the offending value.
    """
    where = f"{source}: " if source is not None else ""
    if not isinstance(value, str):
        raise UnsafeNameError(f"{where}{what} must be a string, got {type(value).__name__} {value!r}")
    if not value or value in (".", "..") or "\0" in value or any(s in value for s in _SEPARATORS) or os.path.isabs(value):
        raise UnsafeNameError(
            f"{where}{what} {value!r} is not a plain name (it must be non-empty, not '.' or '..', and hold no "
            "'/', '\\' or NUL); refusing to use it as a file or folder name"
        )
    return value


def inside(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """``path`` if it lies inside ``root`` once symbolic links and ``..`` are resolved.

    A defensive check on output paths built from dataset names: with every name checked by
    :func:`safe_name` it only fails when a link inside ``root`` points out of it.

    Raises:
        UnsafeNameError: ``path`` resolves outside ``root``.
    """
    path = Path(path)
    resolved_root = Path(root).resolve()
    if not path.resolve().is_relative_to(resolved_root):
        raise UnsafeNameError(
            f"{path} resolves to {path.resolve()}, outside the output folder {resolved_root}; refusing to write there"
        )
    return path
