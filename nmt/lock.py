"""One writer per folder: `nmt train` holds its run folder and `nmt prepare` its prepared folder
with an exclusive OS lock (flock) on a file beside the folder, `.{name}.lock`. The OS releases the
lock when the process ends, however it ends, so a killed run leaves no stale lock; a second process
that wants the folder is refused with one line naming the folder and the process holding it.

The lock file sits beside the folder, not in it, because `prepare` replaces its folder whole.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nmt.errors import NmtError


def lock_path(folder: Path) -> Path:
    folder = Path(os.path.realpath(folder))  # one lock for every spelling of a folder
    return folder.parent / f".{folder.name}.lock"


@contextmanager
def hold(folder: Path, what: str) -> Iterator[None]:
    """Hold `folder` for the block: refused with one line if another process holds it."""
    path = lock_path(folder)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise NmtError(f"{folder}: cannot create {path.name} beside it: {e.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            raise NmtError(
                f"{folder}: in use by {holder}; wait for it to end, or use another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} ({what})\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race with a waiter)
