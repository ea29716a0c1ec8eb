"""Text read as a stream, in chunks of cleaned lines: what `nmt translate` decodes while it reads.

A chunk holds at most `size` lines. Read from a pipe or a terminal, a chunk also ends as soon as no
more input is waiting, so a line typed or written into the pipe is translated without waiting for
`size` more (select on the file descriptor, with our own buffer: Python's would hide lines it has
already read from select). Files, plain or gzipped, are read line by line.
"""

from __future__ import annotations

import gzip
import os
import select
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Optional

from nmt.data import clean_line
from nmt.errors import NmtError


class _FdLines:
    """Lines of a file descriptor, read with os.read into a buffer that select cannot see past."""

    def __init__(self, fd: int):
        self.fd, self.buf, self.pos, self.eof = fd, b"", 0, False

    def waiting(self) -> bool:
        """Whether a line can be had without blocking."""
        if self.eof or self.buf.find(b"\n", self.pos) >= 0:
            return True
        return bool(select.select([self.fd], [], [], 0)[0])

    def readline(self) -> Optional[bytes]:
        """The next line without its newline (blocking until it is complete); None at the end."""
        end = self.buf.find(b"\n", self.pos)
        while end < 0 and not self.eof:
            data = os.read(self.fd, 1 << 16)
            if data:
                self.buf, self.pos = self.buf[self.pos :] + data, 0
                end = self.buf.find(b"\n")
            else:
                self.eof = True
        if end >= 0:
            line, self.pos = self.buf[self.pos : end], end + 1
            return line
        line, self.buf, self.pos = self.buf[self.pos :], b"", 0
        return line or None


def _fileno(stream: BinaryIO) -> Optional[int]:
    try:
        return stream.fileno()
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is an OSError
        return None


def _readline(stream: BinaryIO) -> Optional[bytes]:
    line = stream.readline()
    if not line:
        return None
    return line[:-1] if line.endswith(b"\n") else line


def stream_chunks(
    stream: BinaryIO, name: str, size: int, watch: bool = True
) -> Iterator[list[str]]:
    """Cleaned lines of `stream` (see data.clean_line), in lists of 1 to `size`. With `watch` and a
    stream that has a file descriptor (stdin: a pipe, a terminal), a list also ends when no more
    input is waiting. `name` goes into errors (bad UTF-8: name:line)."""
    fd = _fileno(stream) if watch else None
    lines: Optional[_FdLines] = _FdLines(fd) if fd is not None else None
    n, chunk = 0, []
    while (raw := lines.readline() if lines else _readline(stream)) is not None:
        n += 1
        chunk.append(clean_line(raw, name, n))
        if len(chunk) >= size or (lines is not None and not lines.waiting()):
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def file_chunks(path: Path, size: int) -> Iterator[list[str]]:
    """Cleaned lines of a UTF-8 text file, plain or gzipped (.gz), `size` at a time."""
    try:
        stream = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    except OSError as e:
        raise NmtError(f"{path}: cannot read: {e.strerror or e}") from None
    with stream:
        try:
            yield from stream_chunks(stream, str(path), size, watch=False)
        except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
            raise NmtError(f"{path}: cannot read: {e}") from None
