"""Stage 1: check and clean a parallel corpus, train SentencePiece, write an encoded prepared dir.

A corpus is a folder of aligned files `{split}.{lang}` (or `.gz`). The named corpus `multi30k` is
that same thing with a known upstream URL and sha256 sums, downloaded (or read from a local copy)
and verified before use. Output (all written atomically, byte-identical for identical inputs):

    <prepared_dir>/manifest.json          counts, filters, settings, input checksums
    <prepared_dir>/spm.model              (or spm.src.model + spm.tgt.model)
    <prepared_dir>/{valid,test}.{src,tgt}.txt            cleaned text (references for scoring)
    <prepared_dir>/{train,valid,test}.{src,tgt}.npy      token ids, concatenated (int32)
    <prepared_dir>/{train,valid,test}.{src,tgt}.off.npy  offsets into the above (int64, n+1)
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import numpy as np

from nmt.config import Config
from nmt.data import PREPARED_FORMAT, PREPARED_VERSION, TextFile, data_settings, read_text
from nmt.encode import Reservoir, TrainFilter, default_workers, encode_train, scan, sha256_file
from nmt.errors import NmtError
from nmt.files import atomic_folder, atomic_write_bytes, atomic_write_text
from nmt.lock import hold
from nmt.tokenizer import Tokenizer, load_kept, train_spm

ROLES = ("train", "valid", "test")

MULTI30K_URL = "https://github.com/multi30k/dataset/raw/master/data/task1/raw/{name}"
MULTI30K_CACHE = Path("data/multi30k")
MULTI30K_SHA256 = {
    "test_2016_flickr.cs.gz": "200a4a74cc9560f051924abb9803be008d1908d77f747e9141aeb86dfd2797f1",
    "test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
    "test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
    "test_2016_flickr.fr.gz": "6d326e188d259fb1d04ac19eae3af956559b3a0b93d7635e56c90987c40c8b90",
    "train.cs.gz": "a65adb8b32e3bc664f21ecba7a6e7f6950fd1f405e135f7c312faabdb6255077",
    "train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
    "train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
    "train.fr.gz": "622e75069e9f4c577425c4f277116ce66e63a2401c0a2312d90073cb12379a3c",
    "val.cs.gz": "b63226e05c4bd5dd6a42897d74b86a1b9d2c31498252c572b1ea7f7996927fcc",
    "val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
    "val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
    "val.fr.gz": "ca3106f1a72390591d25f6c45cb4cd39dec4cd3f123e099748a3ce5256c160e9",
}


def find_file(folder: Path, stem: str, lang: str) -> Path:
    """`{folder}/{stem}.{lang}` or its `.gz`; a one-line error naming both when neither exists."""
    for name in (f"{stem}.{lang}", f"{stem}.{lang}.gz"):
        if (folder / name).is_file():
            return folder / name
    raise NmtError(f"{folder / f'{stem}.{lang}'}: file not found (nor {stem}.{lang}.gz)")


def read_parallel(src_path: Path, tgt_path: Path) -> tuple[TextFile, TextFile]:
    src, tgt = read_text(src_path), read_text(tgt_path)
    if len(src.lines) != len(tgt.lines):
        raise NmtError(
            f"{src_path} has {len(src.lines)} lines but {tgt_path} has {len(tgt.lines)}: parallel "
            "files must be aligned line by line"
        )
    return src, tgt


def fetch_multi30k(folder: Path, names: list[str]) -> None:
    """Download the named Multi30k files into `folder`
    (unless already there) and verify checksums."""
    for name in names:
        dest = folder / name
        if dest.is_file() and sha256_file(dest) == MULTI30K_SHA256[name]:
            continue
        url = MULTI30K_URL.format(name=name)
        print(f"downloading {url}", file=sys.stderr)
        try:
            with urllib.request.urlopen(url, timeout=60) as r:
                data = r.read()
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise NmtError(
                f"cannot download {url} ({reason}); "
                "with no network, point at a local copy of Multi30k: "
                f"nmt prepare --config C --source DIR (or data.source: DIR), DIR holding {name}"
            ) from None
        got = hashlib.sha256(data).hexdigest()
        if got != MULTI30K_SHA256[name]:
            raise NmtError(
                f"{url}: sha256 {got} does not match the expected {MULTI30K_SHA256[name]}"
            )
        atomic_write_bytes(dest, data)


def corpus_files(cfg: Config, source: Optional[str]) -> dict:
    """(src_path, tgt_path) of valid and test, and a list of them, one per corpus, for train;
    Multi30k's files fetched/verified when that corpus is named (a training corpus with a folder
    of its own is plain files)."""
    d = cfg.data
    folder = Path(source or d.source or MULTI30K_CACHE)
    stems = [c.stem for c in d.corpora if not c.source] + [d.valid, d.test]
    if d.corpus == "multi30k":
        names = [f"{stem}.{lang}.gz" for stem in stems for lang in (d.src_lang, d.tgt_lang)]
        unknown = [n for n in names if n not in MULTI30K_SHA256]
        if unknown:
            raise NmtError(
                f"data: multi30k has no file {unknown[0]} (languages: en de fr cs; splits: train "
                "val test_2016_flickr)"
            )
        if source or d.source:
            for name in names:
                path = folder / name
                if not path.is_file():
                    raise NmtError(
                        f"{path}: file not found (the local Multi30k folder must hold "
                        f"{', '.join(names)})"
                    )
                if sha256_file(path) != MULTI30K_SHA256[name]:
                    raise NmtError(f"{path}: sha256 does not match the upstream Multi30k file")
        else:
            fetch_multi30k(folder, names)
    elif not folder.is_dir():
        raise NmtError(f"{folder}: corpus folder not found (data.source)")

    def pair(where: Path, stem: str) -> tuple[Path, Path]:
        return find_file(where, stem, d.src_lang), find_file(where, stem, d.tgt_lang)

    for c in d.corpora:
        if c.source and not Path(c.source).is_dir():
            raise NmtError(f"{c.source}: corpus folder not found (data.train, corpus {c.stem})")
    return {
        "train": [pair(Path(c.source) if c.source else folder, c.stem) for c in d.corpora],
        "valid": pair(folder, d.valid),
        "test": pair(folder, d.test),
    }


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def write_split(
    out: Path,
    role: str,
    src_lines: list[str],
    tgt_lines: list[str],
    src_ids: list[list[int]],
    tgt_ids: list[list[int]],
) -> None:
    for side, lines, ids in (("src", src_lines, src_ids), ("tgt", tgt_lines, tgt_ids)):
        atomic_write_text(out / f"{role}.{side}.txt", "".join(line + "\n" for line in lines))
        lengths = np.array([len(x) for x in ids], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        flat = np.fromiter((t for x in ids for t in x), dtype=np.int32, count=int(offsets[-1]))
        atomic_write_bytes(out / f"{role}.{side}.npy", npy_bytes(flat))
        atomic_write_bytes(out / f"{role}.{side}.off.npy", npy_bytes(offsets))


def build_tokenizer(cfg: Config, src_lines: list[str], tgt_lines: list[str]) -> Tokenizer:
    """SentencePiece trained on the training text, or the one `data.tokenizer` names (kept)."""
    d = cfg.data
    if d.tokenizer:
        tok = load_kept(Path(d.tokenizer))
        if tok.joint != d.joint_vocab:
            kind = "one joint vocabulary" if tok.joint else "a source and a target vocabulary"
            raise NmtError(
                f"data.tokenizer: {d.tokenizer} has {kind}; set data.joint_vocab: "
                f"{str(tok.joint).lower()}"
            )
        return tok
    args = (d.vocab_size, d.spm_type, d.character_coverage, d.seed)
    if d.joint_vocab:
        return Tokenizer(train_spm([*src_lines, *tgt_lines], *args))
    return Tokenizer(train_spm(src_lines, *args), train_spm(tgt_lines, *args))


def prepare(cfg: Config, source: Optional[str] = None, log=print) -> dict:
    """Run stage 1 for `cfg`; return the manifest written to `<prepared_dir>/manifest.json`. The
    training files are streamed (nmt/encode.py): memory holds the SentencePiece sample and the
    chunks in flight, not the corpus. The folder is built beside the old one and swapped in at the
    end (atomic_folder), under the folder's lock: it is always wholly the old one or the new one."""
    out = cfg.prepared_dir
    with hold(out, "nmt prepare"):
        check_replaceable(out)
        d = cfg.data
        files = corpus_files(cfg, source)
        texts = {role: read_parallel(*files[role]) for role in ("valid", "test")}
        for role, (src, _) in texts.items():
            if not src.lines:
                raise NmtError(f"{src.path}: the {role} split is empty (data.{role})")
        reservoir = Reservoir(d.spm_sample // 2 if d.joint_vocab else d.spm_sample, d.seed)
        scans = [scan(src, tgt, d.max_train_pairs, reservoir) for src, tgt in files["train"]]
        if not reservoir.sample:
            raise NmtError(f"{files['train'][0][0]}: no non-empty training pairs")
        tok = build_tokenizer(
            cfg, [s for s, _ in reservoir.sample], [t for _, t in reservoir.sample]
        )
        del reservoir
        try:
            with atomic_folder(out) as work:
                manifest = build(cfg, files, scans, texts, tok, work, log)
        except OSError as e:  # a full disk, a folder that turned read-only
            raise NmtError(
                f"{e.filename or out}: {e.strerror or e}; {out} is as it was before"
            ) from None
    report(manifest, out, log)
    return manifest


def check_replaceable(out: Path) -> None:
    """prepare replaces its folder whole: refuse one that holds anything but prepared data."""
    if not out.exists():
        return
    if not out.is_dir():
        raise NmtError(f"{out}: exists and is not a folder (data.prepared_dir)")
    entries = list(out.iterdir())
    if entries and (not (out / "manifest.json").is_file() or any(p.is_dir() for p in entries)):
        raise NmtError(
            f"{out}: holds files that are not prepared data (no manifest.json, or folders), and "
            "nmt prepare replaces its folder whole: give data.prepared_dir a folder of its own"
        )


def encode_training(
    cfg: Config, corpora: list[tuple[Path, Path]], tok: Tokenizer, out: Path, log
) -> tuple[list[TrainFilter], TrainFilter]:
    """The training split encoded into `out` (encode.encode_train); returns each corpus's counts and
    their total. A corpus with no pair left is an error."""
    d = cfg.data
    workers = d.workers or default_workers()
    started = time.perf_counter()
    each, duplicates = encode_train(
        corpora, d.max_train_pairs, tok, d.max_len, d.max_len_ratio, workers, out
    )
    for (src_path, _), stats in zip(corpora, each):
        if not stats.kept:
            raise NmtError(
                f"{src_path}: no training pairs left after filtering "
                f"(data.max_len={d.max_len}, data.max_len_ratio={d.max_len_ratio})"
            )
    total = TrainFilter()
    for stats in each:
        total.add(stats)
    total.duplicates = duplicates
    log(
        f"encoded {total.read} training pairs in {time.perf_counter() - started:.1f} s "
        f"({workers} worker process{'es' if workers > 1 else ''})"
    )
    return each, total


def build(
    cfg: Config, files: dict, scans: list, texts: dict, tok: Tokenizer, out: Path, log
) -> dict:
    """Write the prepared folder's files into `out` (a fresh folder); return the manifest."""
    d = cfg.data
    each, total = encode_training(cfg, files["train"], tok, out, log)
    manifest: dict = {"format": PREPARED_FORMAT, "version": PREPARED_VERSION}
    manifest["data"] = data_settings(cfg)
    corpora = [{"corpus": c.name, **asdict(stats)} for c, stats in zip(d.corpora, each)]
    manifest["counts"] = {"train": {**asdict(total), "corpora": corpora}}
    manifest["inputs"] = {"train": []}
    manifest["warnings"] = {}
    for c, (src_path, tgt_path), found in zip(d.corpora, files["train"], scans):
        manifest["inputs"]["train"].append(
            {"corpus": c.name} | {
                side: {"path": str(path), "sha256": sha256_file(path), "lines": n}
                for side, path, n in zip(("src", "tgt"), (src_path, tgt_path), found.lines)
            }
        )  # fmt: skip
        for path, crlf, bom in zip((src_path, tgt_path), found.crlf, found.bom):
            if crlf or bom:
                manifest["warnings"][str(path)] = {"crlf_lines": crlf, "bom_lines": bom}
    for role, (src, tgt) in texts.items():
        src_ids, tgt_ids = tok.encode_src(src.lines), tok.encode_tgt(tgt.lines)
        manifest["counts"][role] = {"read": len(src.lines), "kept": len(src.lines)}
        write_split(out, role, src.lines, tgt.lines, src_ids, tgt_ids)
        manifest["inputs"][role] = {
            side: {"path": f.path, "sha256": f.sha256, "lines": len(f.lines)}
            for side, f in (("src", src), ("tgt", tgt))
        }
        for f in (src, tgt):
            if f.crlf or f.bom:
                manifest["warnings"][f.path] = {"crlf_lines": f.crlf, "bom_lines": f.bom}
    manifest["tokenizer"] = {
        "files": tok.save(out),
        "sha256": tok.sha256,
        "src_vocab_size": tok.src_vocab_size,
        "tgt_vocab_size": tok.tgt_vocab_size,
    }
    # every file's size and checksum: what later stages check the folder against
    manifest["files"] = {
        p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(out.iterdir())
        if p.is_file()
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def report(manifest: dict, out: Path, log) -> None:
    c = manifest["counts"]
    t = c["train"]
    rows = [("train", t)]
    if len(t["corpora"]) > 1:  # and each corpus's share
        rows += [(f"  {corpus['corpus']}", corpus) for corpus in t["corpora"]]
    for name, n in rows:
        log(
            f"{name}: {n['read']} pairs read, {n['kept']} kept; dropped: "
            + ", ".join(f"{k} {v}" for k, v in n["dropped"].items())
            + (f"; {n['duplicates']} duplicated" if n is not t and n["duplicates"] else "")
        )
    log(f"valid: {c['valid']['kept']} pairs, test: {c['test']['kept']} pairs (never filtered)")
    for path, w in manifest["warnings"].items():
        log(
            f"warning: {path}: {w['crlf_lines']} lines ended in CR (stripped), {w['bom_lines']} "
            "byte-order marks (stripped)"
        )
    if t["duplicates"]:
        log(f"warning: train has {t['duplicates']} duplicated pairs (kept)")
    tk, kept = manifest["tokenizer"], manifest["data"]["tokenizer"]
    log(
        f"vocabulary: {tk['src_vocab_size']} source / {tk['tgt_vocab_size']} target pieces "
        f"({', '.join(tk['files'])}{f', kept from {kept}' if kept else ''})"
    )
    log(f"wrote {out}")
