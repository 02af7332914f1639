"""A disk that fills up, for tests of what a save does then.

It behaves as the kernel does on a full disk: a write takes what still fits and returns the short
count, the next one fails with ENOSPC. `torch.save` meets it as it meets a real full disk (checked
against a 20 MB tmpfs): it swallows the `OSError` and raises a `RuntimeError` ("unexpected pos").
/dev/full is no substitute: it refuses even the last flush of a file, which raises the `OSError`
again at close and so hides how `torch.save` reacts.
"""

from __future__ import annotations

import errno
import io
import os
import tempfile
from collections.abc import Callable


class _FillingFile(io.RawIOBase):
    def __init__(self, fd: int, capacity: int) -> None:
        self.fd, self.left = fd, capacity

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if self.left == 0 and len(view):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = os.write(self.fd, view[: self.left])
        self.left -= written
        return written

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if not self.closed:
            os.close(self.fd)
        super().close()


def fill_disk(monkeypatch, capacity: int, fails: Callable[[str], bool]) -> list[str]:
    """From now on, files that `tempfile.mkstemp` creates under a name for which `fails(name)` is
    true hold at most `capacity` bytes when written through `os.fdopen`.

    Returns:
        the names of the files made to fail, appended as they are created.
    """
    real_mkstemp, real_fdopen = tempfile.mkstemp, os.fdopen
    failing: set[int] = set()
    made: list[str] = []

    def mkstemp(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        if fails(name):
            failing.add(fd)
            made.append(name)
        return fd, name

    def fdopen(fd, mode="r", *args, **kwargs):
        if fd in failing and "w" in mode:
            failing.discard(fd)
            return io.BufferedWriter(_FillingFile(fd, capacity))
        return real_fdopen(fd, mode, *args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "fdopen", fdopen)
    return made
