"""Writing files so that nothing is ever half written: every file the program produces goes to a
temporary file in the same folder, is flushed and fsynced, then renamed over the target, so a
crash leaves the old file or the new one; a whole folder (the prepared data) is built beside the
old one and swapped in. Outputs a user names are checked before any work (check_output).
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Optional

from nmt.errors import NmtError

TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


WRITE_THROUGH = ("/dev/stdout", "/dev/fd/1", "/dev/null")  # written as they are, not replaced


def check_output(path: str | Path, what: str = "--output") -> Optional[Path]:
    """Before any work: can `path` be written (atomically, as every output is)? Returns the file
    to write, a symlink's target (the link stays); None for /dev/stdout and /dev/null (to be written
    through). One error line for a folder, another device, a FIFO or socket, or a folder that is
    missing or not writable."""
    if str(path) in WRITE_THROUGH:
        return None
    target = Path(os.path.realpath(path))
    if target.is_dir():
        raise NmtError(f"{what} {path}: is a folder; give a file name")
    if target.exists() and not target.is_file():
        raise NmtError(
            f"{what} {path}: is a device, FIFO or socket; nmt writes a regular file (complete or "
            "not at all): give a file name, or leave the option out to write to stdout"
        )
    folder = target.parent
    while not folder.exists():  # created when written
        folder = folder.parent
    if not folder.is_dir():
        raise NmtError(f"{what} {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise NmtError(f"{what} {path}: cannot write in {folder}: permission denied")
    return target


@contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """A binary file to write `path` with, piece by piece: a temp file in the same dir, fsynced and
    renamed over `path` when the block ends; if it raises, the temp file goes and `path` is as it
    was. A symlink is followed: its target is replaced, the link stays."""
    path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        # mkstemp creates 0600; give the file the usual permissions
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (temp file in the same dir, fsync, rename, fsync dir)."""
    with atomic_writer(path) as f:
        f.write(data)


def _fsync_dir(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_link(src: Path, dst: Path) -> None:
    """Make `dst` the same file as `src` atomically: a hard
    link (no copy), or a copy where links are unsupported."""
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.{os.getpid()}{TMP_SUFFIX}"
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:  # a filesystem without hard links, or another device
            shutil.copyfile(src, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(dst.parent)


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete temporary files a killed process left behind in `folder`; return them."""
    stale = sorted(Path(folder).glob(f".*{TMP_SUFFIX}"))
    for f in stale:
        f.unlink(missing_ok=True)
    return stale


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """A fresh folder to build `path` in: `.{name}.new-{pid}` beside it, put in its place when
    the block ends (in one step where the OS can swap two folders, else two renames), so `path` is
    always wholly the old folder or wholly the new one; if the block raises, the new one goes.
    Folders a killed build left beside `path` are removed first: the caller must hold `path`
    (nmt.lock). A symlink to a folder is followed: its target is replaced, the link stays."""
    path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    olds = sorted(path.parent.glob(f".{path.name}.old-*"))
    if olds and not path.exists():  # killed between the two renames: the old folder goes back
        os.rename(olds.pop(), path)
    for stale in [*path.parent.glob(f".{path.name}.new-*"), *olds]:
        shutil.rmtree(stale, ignore_errors=True)
    if path.exists() and not path.is_dir():
        raise NmtError(f"{path}: exists and is not a folder")
    new = path.parent / f".{path.name}.new-{os.getpid()}"
    old = path.parent / f".{path.name}.old-{os.getpid()}"
    new.mkdir()
    try:
        yield new
        _fsync_dir(new)
        if not path.exists():
            os.rename(new, path)
        elif _exchange(new, path):
            old = new  # it now holds the old folder
        else:
            os.rename(path, old)
            os.rename(new, path)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    # the new folder is in place: what is left is the old one, removed now or by the next build
    shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
