"""Reading text in chunks: sizes, cleaning, line numbers in errors, and a pipe that stays open."""

from __future__ import annotations

import gzip
import io
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from nmt.errors import NmtError
from nmt.textstream import file_chunks, stream_chunks

RAW = b"\xef\xbb\xbf  one \r\ntwo  words\n\nthree\r\nfour\nfive"  # BOM, CRs, blanks, no final \n
LINES = ["one", "two words", "", "three", "four", "five"]


@pytest.mark.parametrize("size", [1, 2, 4, 100])
def test_chunks_hold_at_most_size_clean_lines_in_order(size: int) -> None:
    chunks = list(stream_chunks(io.BytesIO(RAW), "<stdin>", size))
    assert [line for c in chunks for line in c] == LINES
    assert all(1 <= len(c) <= size for c in chunks) and len(chunks) == -(-len(LINES) // size)


def test_bad_utf8_is_named_by_its_line_in_the_whole_input_not_in_its_chunk() -> None:
    data = b"a\nb\nc\nd\nbad \xff\n"
    chunks = stream_chunks(io.BytesIO(data), "<stdin>", 2)
    assert next(chunks) == ["a", "b"] and next(chunks) == ["c", "d"]
    with pytest.raises(NmtError, match=r"<stdin>:5: invalid UTF-8"):
        next(chunks)


def test_files_plain_and_gzipped_read_alike(tmp_path: Path) -> None:
    plain, gz = tmp_path / "in.txt", tmp_path / "in.txt.gz"
    plain.write_bytes(RAW)
    gz.write_bytes(gzip.compress(RAW))
    assert [x for c in file_chunks(plain, 4) for x in c] == LINES
    assert list(file_chunks(gz, 4)) == list(file_chunks(plain, 4))
    with pytest.raises(NmtError, match=str(tmp_path / "none.txt")):
        list(file_chunks(tmp_path / "none.txt", 4))
    (tmp_path / "bad.gz").write_bytes(b"not gzip at all")
    with pytest.raises(NmtError, match="bad.gz: cannot read"):
        list(file_chunks(tmp_path / "bad.gz", 4))


def next_within(chunks: Iterator[list[str]], seconds: float) -> list[str]:
    """next(chunks), failing (instead of hanging) if it does not come within `seconds`."""
    got: list = []
    reader = threading.Thread(target=lambda: got.append(next(chunks, None)), daemon=True)
    reader.start()
    reader.join(seconds)
    assert got, f"no chunk within {seconds} s: the reader waited for more input"
    return got[0]


def test_a_chunk_from_a_pipe_ends_when_no_more_input_is_waiting() -> None:
    """Two lines in an open pipe come back as a chunk at once, though the chunk could hold 100:
    a line written into `nmt translate` is translated without waiting for more input."""
    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb", buffering=0) as reader:
        chunks = stream_chunks(reader, "<stdin>", 100)
        os.write(write_end, b"first line\nsecond line\n")
        assert next_within(chunks, 10) == ["first line", "second line"]
        os.write(write_end, b"third line\nfour")
        os.write(write_end, b"th, after a pause\n")
        assert next_within(chunks, 10) == ["third line", "fourth, after a pause"]
        os.close(write_end)
        assert next_within(chunks, 10) is None
