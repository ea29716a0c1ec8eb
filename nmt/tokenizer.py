"""SentencePiece wrapper: the only owner of the vocabulary and of the special ids.

A Tokenizer holds one serialized SentencePiece model (joint vocabulary) or two (source, target).
It is stored byte-for-byte inside every checkpoint, so a checkpoint needs nothing else to translate.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable
from pathlib import Path
from typing import Optional

import sentencepiece as spm

from nmt.errors import NmtError
from nmt.files import atomic_write_bytes

PAD, UNK, BOS, EOS = 0, 1, 2, 3


def train_spm(
    lines: Iterable[str], vocab_size: int, model_type: str, character_coverage: float, seed: int
) -> bytes:
    """Train a SentencePiece model on `lines` and
    return it serialized (deterministic for a seed)."""
    spm.set_random_generator_seed(seed)
    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=buf,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            pad_id=PAD,
            unk_id=UNK,
            bos_id=BOS,
            eos_id=EOS,
            input_sentence_size=2_000_000,
            shuffle_input_sentence=True,
            num_threads=1,  # one thread keeps the result byte-identical from run to run
            hard_vocab_limit=False,  # a small corpus may not support the full size: use what it can
            minloglevel=2,
        )
    except RuntimeError as e:
        raise NmtError(f"SentencePiece training failed: {str(e).splitlines()[-1]}") from None
    return buf.getvalue()


def _load(proto: bytes, what: str) -> spm.SentencePieceProcessor:
    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(proto)
    except (RuntimeError, TypeError):
        raise NmtError(f"{what}: not a valid SentencePiece model") from None
    if (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) != (PAD, UNK, BOS, EOS):
        raise NmtError(
            f"{what}: SentencePiece model has special ids other than pad=0 unk=1 bos=2 eos=3"
        )
    return sp


class Tokenizer:
    """Source and target subword models; `tgt_proto=None` means one joint vocabulary."""

    def __init__(
        self, src_proto: bytes, tgt_proto: Optional[bytes] = None, what: str = "tokenizer"
    ):
        self.src_proto = src_proto
        self.tgt_proto = tgt_proto
        self.src = _load(src_proto, what)
        self.tgt = self.src if tgt_proto is None else _load(tgt_proto, what)

    @property
    def joint(self) -> bool:
        return self.tgt_proto is None

    @property
    def src_vocab_size(self) -> int:
        return self.src.get_piece_size()

    @property
    def tgt_vocab_size(self) -> int:
        return self.tgt.get_piece_size()

    @property
    def sha256(self) -> str:
        """Identity of the vocabulary: a hash over the serialized model(s)."""
        h = hashlib.sha256(self.src_proto)
        if self.tgt_proto is not None:
            h.update(b"\0tgt\0" + self.tgt_proto)
        return h.hexdigest()

    def encode_src(self, lines: list[str], threads: int = -1) -> list[list[int]]:
        """Subword ids of each line; `threads`: SentencePiece's (-1: one per core)."""
        return self.src.encode(lines, num_threads=threads)

    def encode_tgt(self, lines: list[str], threads: int = -1) -> list[list[int]]:
        return self.tgt.encode(lines, num_threads=threads)

    def decode_tgt(self, ids: list[list[int]]) -> list[str]:
        """Detokenize target ids; special ids are dropped and whitespace runs collapsed."""
        return [
            " ".join(t.split())
            for t in self.tgt.decode([[i for i in seq if i > EOS] for seq in ids])
        ]

    def src_pieces(self, ids: list[int]) -> list[str]:
        return [self.src.id_to_piece(i) for i in ids]

    def tgt_pieces(self, ids: list[int]) -> list[str]:
        return [self.tgt.id_to_piece(i) for i in ids]

    # --- files: spm.model (joint) or spm.src.model + spm.tgt.model ---
    def save(self, directory: Path) -> list[str]:
        """Write the model file(s) into `directory`; return their names."""
        if self.joint:
            atomic_write_bytes(directory / "spm.model", self.src_proto)
            return ["spm.model"]
        atomic_write_bytes(directory / "spm.src.model", self.src_proto)
        atomic_write_bytes(directory / "spm.tgt.model", self.tgt_proto)
        return ["spm.src.model", "spm.tgt.model"]

    @classmethod
    def load(cls, directory: Path) -> Tokenizer:
        joint = directory / "spm.model"
        try:
            if joint.exists():
                return cls(joint.read_bytes(), None, what=str(joint))
            src, tgt = directory / "spm.src.model", directory / "spm.tgt.model"
            return cls(src.read_bytes(), tgt.read_bytes(), what=str(src))
        except FileNotFoundError:
            raise NmtError(
                f"{directory}: no spm.model (or spm.src.model + spm.tgt.model); run `nmt prepare`"
            ) from None

    def to_state(self) -> dict[str, Optional[bytes]]:
        return {"src": self.src_proto, "tgt": self.tgt_proto}

    @classmethod
    def from_state(cls, state: dict[str, Optional[bytes]], what: str) -> Tokenizer:
        return cls(state["src"], state["tgt"], what=what)


def load_kept(path: Path) -> Tokenizer:
    """The tokenizer a path names, to encode new data with an existing vocabulary: a checkpoint
    (its tokenizer), a folder holding spm.model or spm.src.model + spm.tgt.model (a prepared
    folder, a run folder), or one SentencePiece model file (a joint vocabulary)."""
    what = f"data.tokenizer: {path}"
    if path.is_dir():
        if not any((path / n).exists() for n in ("spm.model", "spm.src.model")):
            raise NmtError(f"{what}: the folder holds no spm.model (nor spm.src.model)")
        return Tokenizer.load(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise NmtError(f"{what}: cannot read: {e.strerror or e}") from None
    if data[:2] == b"PK":  # a zip file: torch's checkpoint format
        from nmt.checkpoint import load_checkpoint

        ckpt = load_checkpoint(path)
        return Tokenizer.from_state(ckpt["tokenizer"], what=ckpt["path"])
    try:
        return Tokenizer(data, None, what=str(path))
    except NmtError:
        raise NmtError(
            f"{what}: neither a checkpoint, a folder with spm.model, nor a SentencePiece model"
        ) from None
