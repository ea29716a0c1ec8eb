"""Self-describing, checksummed checkpoints (config + tokenizer + weights + train state), written
atomically (nmt/files.py).

A checkpoint is an ordinary `torch.save` zip file whose zip comment holds the sha256 of everything
before it, so `torch.load` still reads it and `load_checkpoint` detects truncation and flipped bits.
"""

from __future__ import annotations

import hashlib
import io
import struct
import sys
from pathlib import Path
from typing import Any

import torch

from nmt.errors import NmtError
from nmt.files import atomic_write_bytes

FORMAT = "nmt-checkpoint"
VERSION = 2  # 2: sealed with a sha256 in the zip comment; 1 (unsealed) still loads, with a warning
# zip end-of-central-directory record: 22 bytes, the last 2 are the comment length
_EOCD = b"PK\x05\x06"
_SEAL = b"nmt-sha256:"
_SEAL_LEN = len(_SEAL) + 64


class CorruptCheckpoint(NmtError):
    """A checkpoint file that exists but cannot be trusted (truncated, bits flipped, not ours)."""


def seal(data: bytes) -> bytes:
    """Put the sha256 of a torch zip file into its (empty) zip comment."""
    if data[-22:-18] != _EOCD or data[-2:] != b"\0\0":
        raise ValueError("not a zip file without a comment")
    body = data[:-2]
    return body + struct.pack("<H", _SEAL_LEN) + _SEAL + hashlib.sha256(body).hexdigest().encode()


def verify(path: Path, data: bytes) -> bool:
    """False if `data` carries no seal; True if its seal
    matches its content; CorruptCheckpoint if not."""
    n = len(data) - _SEAL_LEN
    if (
        n < 22
        or data[n - 22 : n - 18] != _EOCD
        or data[n - 2 : n] != struct.pack("<H", _SEAL_LEN)
        or data[n : n + len(_SEAL)] != _SEAL
    ):
        return False
    if hashlib.sha256(data[: n - 2]).hexdigest().encode() != data[n + len(_SEAL) :]:
        raise CorruptCheckpoint(f"{path}: checksum mismatch, the file is corrupt")
    return True


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Serialize a checkpoint payload (see `payload` in resume.py), seal it, write it atomically."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **payload}, buf)
    atomic_write_bytes(path, seal(buf.getvalue()))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint onto the CPU; a missing, foreign or corrupt file is a one-line NmtError."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).exists():
                path = path / name
                break
        else:
            raise NmtError(f"{path}: run directory holds no best.pt or last.pt")
    if not path.exists():
        raise NmtError(f"{path}: checkpoint not found")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise NmtError(f"{path}: cannot read: {e.strerror or e}") from None
    sealed = verify(path, data)
    try:
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file
        raise CorruptCheckpoint(
            f"{path}: not a readable checkpoint (truncated or corrupt?): {type(e).__name__}"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CorruptCheckpoint(f"{path}: not an nmt checkpoint")
    if not sealed and ckpt.get("version") != 1:
        raise CorruptCheckpoint(f"{path}: checksum missing, the file is damaged")
    if not sealed:
        print(
            f"warning: {path}: written by an older nmt without a checksum; cannot verify it",
            file=sys.stderr,
        )
    if ckpt.get("version") not in (1, VERSION):
        raise NmtError(
            f"{path}: checkpoint format version {ckpt.get('version')} "
            f"is not supported (expected {VERSION})"
        )
    ckpt["path"] = str(path)
    return ckpt
