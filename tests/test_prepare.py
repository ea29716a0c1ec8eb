"""Stage 1 (nmt prepare): corpus checks, cleaning,
train filtering, determinism, tokenizer, manifest."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_helpers import SMOKE, assert_one_error_line
from toy_language import TOY_SIZES

import nmt.encode
import nmt.prepare
from nmt.config import Config, config_from_dict, load_config
from nmt.data import load_split, read_manifest
from nmt.encode import Reservoir, scan
from nmt.errors import NmtError
from nmt.prepare import prepare
from nmt.tokenizer import BOS, EOS, PAD, UNK, Tokenizer

STEMS = ("train", "val", "test_2016_flickr")  # the default data.train / data.valid / data.test
ROLE_STEM = {"train": "train", "valid": "val", "test": "test_2016_flickr"}


def files_cfg(source: Path, out: Path, **data: Any) -> Config:
    """A config for corpus 'files' in `source`, written to `out`, with a small vocabulary."""
    raw: dict = {
        "data": {
            "corpus": "files",
            "source": str(source),
            "prepared_dir": str(out),
            "vocab_size": 80,
            **data,
        }
    }
    if data.get("joint_vocab") is False:
        raw["model"] = {"share_embeddings": False}
    return config_from_dict(raw, origin="test config")


def run_prepare(cfg: Config, source: str | None = None) -> dict:
    return prepare(cfg, source=source, log=lambda m: None)


def read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def train_pairs(out: Path) -> list[tuple[str, str]]:
    """The kept training pairs, decoded from the prepared ids (no training text is stored)."""
    tok, split = Tokenizer.load(out), load_split(out, "train")
    src = tok.src.decode([split.src(i).tolist() for i in range(len(split))])
    return list(zip(src, tok.decode_tgt([split.tgt(i).tolist() for i in range(len(split))])))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def without(text: str, *parts: str) -> str:
    for part in parts:
        text = text.replace(part, "")
    return text


# --- input checks ---


@pytest.mark.parametrize("stem", ["train", "val"])
def test_misaligned_files_name_both_files_and_counts(
    make_corpus, tmp_path: Path, stem: str
) -> None:
    folder = make_corpus()
    src, tgt = folder / f"{stem}.en", folder / f"{stem}.de"
    src.write_text("one\ntwo\nthree\nfour\nfive\nsix\nseven\n", encoding="utf-8")
    tgt.write_text("eins\nzwei\ndrei\nvier\nfuenf\n", encoding="utf-8")
    with pytest.raises(NmtError) as info:
        run_prepare(files_cfg(folder, tmp_path / "out"))
    msg = str(info.value)
    assert str(src) in msg and str(tgt) in msg
    counts = re.findall(r"\d+", without(msg, str(src), str(tgt)))
    assert sorted(counts) == ["5", "7"]
    assert not (tmp_path / "out").exists()


def test_invalid_utf8_names_file_and_line(make_corpus, tmp_path: Path) -> None:
    folder = make_corpus()
    bad = folder / "val.de"
    bad.write_bytes(b"gut\nauch gut\nkaputt \xff hier\nwieder gut\n" + b"x\n" * 8)
    with pytest.raises(NmtError) as info:
        run_prepare(files_cfg(folder, tmp_path / "out"))
    assert f"{bad}:3" in str(info.value)
    assert "UTF-8" in str(info.value)


def test_invalid_utf8_inside_gz_names_the_line_of_the_text(make_corpus, tmp_path: Path) -> None:
    folder = make_corpus(gz=True)
    bad = folder / "test_2016_flickr.en.gz"
    bad.write_bytes(gzip.compress(b"fine\n\xc3\x28 broken\n" + b"x\n" * 10))
    with pytest.raises(NmtError, match=re.escape(f"{bad}:2")):
        run_prepare(files_cfg(folder, tmp_path / "out"))


@pytest.mark.parametrize("damage", ["truncated", "bad_block"])
def test_damaged_gz_is_a_clear_error(make_corpus, tmp_path: Path, damage: str) -> None:
    folder = make_corpus(gz=True)
    path = folder / "train.de.gz"
    data = path.read_bytes()
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:  # first deflate byte after the 10-byte header: BFINAL=1, BTYPE=11 (reserved, invalid)
        data = data[:10] + bytes([0x07]) + data[11:]
    path.write_bytes(data)
    with pytest.raises(NmtError) as info:
        run_prepare(files_cfg(folder, tmp_path / "out"))
    assert str(path) in str(info.value)


def test_missing_split_file_is_named(make_corpus, tmp_path: Path) -> None:
    folder = make_corpus()
    (folder / "test_2016_flickr.de").unlink()
    with pytest.raises(NmtError, match=re.escape(str(folder / "test_2016_flickr.de"))):
        run_prepare(files_cfg(folder, tmp_path / "out"))


def test_missing_corpus_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(NmtError, match=re.escape(str(tmp_path / "nowhere"))):
        run_prepare(files_cfg(tmp_path / "nowhere", tmp_path / "out"))


def test_source_argument_overrides_data_source(make_corpus, tmp_path: Path) -> None:
    folder = make_corpus()
    manifest = run_prepare(files_cfg(tmp_path / "nowhere", tmp_path / "out"), source=str(folder))
    assert manifest["inputs"]["train"][0]["src"]["path"] == str(folder / "train.en")


# --- cleaning ---


def test_gz_inputs_give_the_same_prepared_data_as_plain(make_corpus, tmp_path: Path) -> None:
    plain, gz = make_corpus("plain"), make_corpus("gz", gz=True)
    m_plain = run_prepare(files_cfg(plain, tmp_path / "out_plain"))
    m_gz = run_prepare(files_cfg(gz, tmp_path / "out_gz"))
    a, b = snapshot(tmp_path / "out_plain"), snapshot(tmp_path / "out_gz")
    assert a.keys() == b.keys()
    for name in a:
        if name != "manifest.json":  # it records the input paths and checksums, which differ
            assert a[name] == b[name], name
    assert m_plain["counts"] == m_gz["counts"]
    assert m_gz["inputs"]["train"][0]["src"]["path"].endswith("train.en.gz")


def test_cr_bom_and_whitespace_are_stripped_and_counted(make_corpus, tmp_path: Path) -> None:
    folder = make_corpus()
    src_path = folder / "train.en"
    clean = read_lines(src_path)
    messy = [
        f"  {line}\t" if i % 3 == 0 else line.replace(" ", "  ") for i, line in enumerate(clean)
    ]
    src_path.write_bytes(
        "\ufeff".encode() + "".join(line + "\r\n" for line in messy).encode("utf-8")
    )
    manifest = run_prepare(files_cfg(folder, tmp_path / "out"))
    assert manifest["warnings"] == {str(src_path): {"crlf_lines": len(clean), "bom_lines": 1}}
    assert [s for s, _ in train_pairs(tmp_path / "out")] == clean
    assert manifest["counts"]["train"]["kept"] == len(clean)


def test_warnings_for_crlf_and_duplicated_pairs_are_printed(make_corpus, tmp_path: Path) -> None:
    folder = make_corpus()
    src, tgt = read_lines(folder / "train.en"), read_lines(folder / "train.de")
    assert len(set(zip(src, tgt))) == len(src)
    for path, lines in ((folder / "train.en", src), (folder / "train.de", tgt)):
        # 7 pairs twice
        path.write_text("".join(f"{line}\n" for line in lines + lines[:7]), encoding="utf-8")
    (folder / "val.de").write_bytes((folder / "val.de").read_bytes().replace(b"\n", b"\r\n"))
    messages: list[str] = []
    manifest = prepare(files_cfg(folder, tmp_path / "out"), log=messages.append)
    assert manifest["counts"]["train"]["duplicates"] == 7
    assert "warning: train has 7 duplicated pairs (kept)" in messages
    stripped = "12 lines ended in CR (stripped), 0 byte-order marks (stripped)"
    assert f"warning: {folder / 'val.de'}: {stripped}" in messages


def test_a_file_without_final_newline_loses_no_line(make_corpus, tmp_path: Path) -> None:
    folder = make_corpus()
    path = folder / "val.en"
    lines = read_lines(path)
    path.write_text("\n".join(lines), encoding="utf-8")
    run_prepare(files_cfg(folder, tmp_path / "out"))
    assert read_lines(tmp_path / "out" / "valid.src.txt") == lines


# --- filtering ---


def filter_corpus(make_corpus) -> tuple[Path, list[tuple[str, str]], list[tuple[str, str]]]:
    """Toy corpus plus pairs that are empty (3), too
    long (1, 80 words) and badly proportioned (1)."""
    folder = make_corpus()
    good = list(zip(read_lines(folder / "train.en"), read_lines(folder / "train.de")))[:60]
    long_src, long_tgt = " ".join(["the big dog"] * 27), " ".join(["der gross hund"] * 27)
    bad = [
        ("", "ein hund"),
        ("a dog", ""),
        ("", ""),
        (long_src, long_tgt),
        ("dog", "der mann sieht den hund und die katze im park auf der strasse und das haus"),
    ]
    train = good[:20] + bad[:2] + good[20:40] + bad[2:] + good[40:]
    for path, side in ((folder / "train.en", 0), (folder / "train.de", 1)):
        path.write_text("".join(p[side] + "\n" for p in train), encoding="utf-8")
    valid = list(zip(read_lines(folder / "val.en"), read_lines(folder / "val.de")))
    valid = valid[:3] + bad + valid[3:]
    for path, side in ((folder / "val.en", 0), (folder / "val.de", 1)):
        path.write_text("".join(p[side] + "\n" for p in valid), encoding="utf-8")
    return folder, good, valid


def test_train_filter_counts_each_reason(make_corpus, tmp_path: Path) -> None:
    folder, good, _ = filter_corpus(make_corpus)
    out = tmp_path / "out"
    manifest = run_prepare(files_cfg(folder, out, max_len=60, max_len_ratio=3.0))
    train = manifest["counts"]["train"]
    assert train["dropped"] == {"empty": 3, "too_long": 1, "ratio": 1}
    assert (train["read"], train["kept"]) == (len(good) + 5, len(good))
    assert json.loads((out / "manifest.json").read_text())["counts"]["train"] == train
    assert train_pairs(out) == good


def test_kept_training_pairs_satisfy_the_filters(make_corpus, tmp_path: Path) -> None:
    folder, _, _ = filter_corpus(make_corpus)
    out = tmp_path / "out"
    run_prepare(files_cfg(folder, out, max_len=60, max_len_ratio=3.0))
    split = load_split(out, "train")
    assert split.src_lens.min() > 0 and split.tgt_lens.min() > 0
    assert max(split.src_lens.max(), split.tgt_lens.max()) <= 60
    ratio = np.maximum(split.src_lens, split.tgt_lens) / np.minimum(split.src_lens, split.tgt_lens)
    assert ratio.max() <= 3.0


def test_valid_and_test_are_never_filtered(make_corpus, tmp_path: Path) -> None:
    folder, _, valid = filter_corpus(make_corpus)
    out = tmp_path / "out"
    manifest = run_prepare(files_cfg(folder, out, max_len=60, max_len_ratio=3.0))
    assert manifest["counts"]["valid"] == {"read": len(valid), "kept": len(valid)}
    assert read_lines(out / "valid.src.txt") == [s for s, _ in valid]
    assert read_lines(out / "valid.tgt.txt") == [t for _, t in valid]
    assert len(load_split(out, "valid")) == len(valid)
    n_test = len(read_lines(folder / "test_2016_flickr.en"))
    assert manifest["counts"]["test"]["kept"] == n_test == len(load_split(out, "test"))


def test_max_train_pairs_takes_the_first_pairs(make_corpus, tmp_path: Path) -> None:
    folder = make_corpus()
    out = tmp_path / "out"
    manifest = run_prepare(files_cfg(folder, out, max_train_pairs=30))
    assert manifest["counts"]["train"]["read"] == 30
    assert [s for s, _ in train_pairs(out)] == read_lines(folder / "train.en")[:30]
    # `inputs` describes the files as stored (their checksum is of the whole file): all their lines
    assert manifest["inputs"]["train"][0]["src"]["lines"] == len(read_lines(folder / "train.en"))


def test_no_training_pairs_left_is_an_error(make_corpus, tmp_path: Path) -> None:
    folder = make_corpus()
    with pytest.raises(NmtError, match="data.max_len"):
        run_prepare(files_cfg(folder, tmp_path / "out", max_len=1))


# --- outputs ---


def test_prepare_twice_gives_byte_identical_files(tiny_corpus: Path, tmp_path: Path) -> None:
    cfg = files_cfg(tiny_corpus, tmp_path / "out")
    run_prepare(cfg)
    first = snapshot(tmp_path / "out")
    run_prepare(cfg)
    second = snapshot(tmp_path / "out")
    assert first.keys() == second.keys()
    for name in first:
        assert first[name] == second[name], name
    assert {
        "manifest.json",
        "spm.model",
        "train.src.npy",
        "train.tgt.off.npy",
        "test.tgt.txt",
    } <= first.keys()


def test_tokenizer_special_ids_and_encoded_data(tiny_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_prepare(files_cfg(tiny_corpus, out))
    tok = Tokenizer.load(out)
    assert (PAD, UNK, BOS, EOS) == (0, 1, 2, 3)
    for sp in (tok.src, tok.tgt):
        assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2, 3)
    for role in ("train", "valid", "test"):
        split = load_split(out, role)
        ids = np.concatenate([split._src, split._tgt])
        # specials are added by Batch, never stored
        assert not np.isin(ids, [PAD, BOS, EOS]).any(), role
        assert ids.max() < tok.src_vocab_size


def test_encoded_train_decodes_back_to_its_text(tiny_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_prepare(files_cfg(tiny_corpus, out))
    corpus = list(zip(read_lines(tiny_corpus / "train.en"), read_lines(tiny_corpus / "train.de")))
    assert train_pairs(out) == corpus  # toy pairs: none is filtered out
    # the training text is not copied (valid and test text stay: they are the references)
    assert not list(out.glob("train.*.txt")) and not list(out.glob(".*tmp"))


def test_vocab_size_shrinks_to_what_a_small_corpus_supports(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    manifest = run_prepare(files_cfg(tiny_corpus, tmp_path / "out", vocab_size=5000))
    assert 16 <= manifest["tokenizer"]["src_vocab_size"] < 5000


def test_separate_vocabularies_write_two_models(tiny_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    manifest = run_prepare(files_cfg(tiny_corpus, out, joint_vocab=False, vocab_size=60))
    assert (out / "spm.src.model").is_file() and (out / "spm.tgt.model").is_file()
    assert not (out / "spm.model").exists()
    assert manifest["tokenizer"]["files"] == ["spm.src.model", "spm.tgt.model"]
    tok = Tokenizer.load(out)
    assert not tok.joint
    assert (out / "spm.src.model").read_bytes() != (out / "spm.tgt.model").read_bytes()
    assert (tok.tgt.pad_id(), tok.tgt.unk_id(), tok.tgt.bos_id(), tok.tgt.eos_id()) == (0, 1, 2, 3)


def test_manifest_records_input_checksums_and_line_counts(make_corpus, tmp_path: Path) -> None:
    folder = make_corpus(gz=True)
    manifest = run_prepare(files_cfg(folder, tmp_path / "out"))
    for role, stem in ROLE_STEM.items():
        for side, lang in (("src", "en"), ("tgt", "de")):
            entry = manifest["inputs"][role]
            entry = (entry[0] if role == "train" else entry)[side]
            path = folder / f"{stem}.{lang}.gz"
            assert entry["path"] == str(path)
            assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
            assert entry["lines"] == len(gzip.decompress(path.read_bytes()).decode().splitlines())


# --- read_manifest ---


def test_read_manifest_accepts_matching_settings(tiny_corpus: Path, tmp_path: Path) -> None:
    cfg = files_cfg(tiny_corpus, tmp_path / "out")
    written = run_prepare(cfg)
    assert read_manifest(tmp_path / "out", cfg) == written
    # where the corpus came from is not a data setting: a moved corpus keeps its prepared dir valid
    moved = files_cfg(tmp_path / "elsewhere", tmp_path / "out")
    assert read_manifest(tmp_path / "out", moved) == written


def test_read_manifest_rejects_other_data_settings(tiny_corpus: Path, tmp_path: Path) -> None:
    run_prepare(files_cfg(tiny_corpus, tmp_path / "out"))
    other = files_cfg(tiny_corpus, tmp_path / "out", max_len=50, vocab_size=90)
    with pytest.raises(NmtError) as info:
        read_manifest(tmp_path / "out", other)
    msg = str(info.value)
    assert "data.max_len" in msg and "data.vocab_size" in msg and str(tmp_path / "out") in msg


def test_read_manifest_rejects_another_format_version(tiny_corpus: Path, tmp_path: Path) -> None:
    cfg = files_cfg(tiny_corpus, tmp_path / "out")
    run_prepare(cfg)
    path = tmp_path / "out" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["version"] += 1
    path.write_text(json.dumps(manifest))
    with pytest.raises(NmtError) as info:
        read_manifest(tmp_path / "out", cfg)
    assert str(path) in str(info.value) and f"v{manifest['version']}" in str(info.value)


def test_read_manifest_of_an_unprepared_dir(tmp_path: Path) -> None:
    with pytest.raises(NmtError, match="nmt prepare"):
        read_manifest(tmp_path)


# --- Multi30k ---


def smoke_cfg(repo_root: Path, *overrides: str) -> Config:
    return load_config(repo_root / "configs" / "smoke.yaml", list(overrides))


MULTI30K_EN_DE = [f"{stem}.{lang}.gz" for stem in STEMS for lang in ("en", "de")]


def copy_multi30k(src: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in MULTI30K_EN_DE:
        shutil.copyfile(src / name, dest / name)
    return dest


@pytest.fixture
def fake_multi30k(toy_corpus: Path, monkeypatch) -> Path:
    """The toy corpus posing as Multi30k's en/de files: the sha256 sums nmt.prepare checks become
    the toy files' own, so the fetch/verify mechanism runs without the real corpus."""
    sums = {n: hashlib.sha256((toy_corpus / n).read_bytes()).hexdigest() for n in MULTI30K_EN_DE}
    monkeypatch.setattr(nmt.prepare, "MULTI30K_SHA256", {**nmt.prepare.MULTI30K_SHA256, **sums})
    return toy_corpus


def test_multi30k_local_copy_with_wrong_checksum_is_rejected(
    repo_root, fake_multi30k, tmp_path: Path
) -> None:
    local = copy_multi30k(fake_multi30k, tmp_path / "m30k")
    victim = local / "val.de.gz"
    # same text, different gzip header: the check is on the file as published
    victim.write_bytes(gzip.compress(gzip.decompress(victim.read_bytes()), mtime=1))
    cfg = smoke_cfg(repo_root, f"data.source={local}", f"data.prepared_dir={tmp_path / 'out'}")
    with pytest.raises(NmtError) as info:
        run_prepare(cfg)
    assert str(victim) in str(info.value) and "sha256" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_multi30k_local_copy_with_a_missing_file(repo_root, fake_multi30k, tmp_path: Path) -> None:
    local = copy_multi30k(fake_multi30k, tmp_path / "m30k")
    (local / "test_2016_flickr.en.gz").unlink()
    cfg = smoke_cfg(repo_root, f"data.prepared_dir={tmp_path / 'out'}")
    with pytest.raises(NmtError, match=re.escape(str(local / "test_2016_flickr.en.gz"))):
        run_prepare(cfg, source=str(local))


def test_multi30k_without_network_or_source_points_at_source(
    repo_root, tmp_path: Path, monkeypatch
) -> None:
    calls: list[str] = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("network is unreachable")

    cache = tmp_path / "cache"
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr(nmt.prepare, "MULTI30K_CACHE", cache)
    cfg = smoke_cfg(repo_root, "data.source=null", f"data.prepared_dir={tmp_path / 'out'}")
    with pytest.raises(NmtError) as info:
        run_prepare(cfg)
    assert "--source" in str(info.value)
    assert calls and calls[0].startswith("https://") and calls[0].endswith(".gz")
    assert not any(cache.glob("*.gz"))  # nothing half-downloaded left behind


def test_multi30k_is_downloaded_verified_then_read_from_the_cache_offline(
    repo_root, fake_multi30k, tmp_path: Path, monkeypatch
) -> None:
    """The smoke recipe as a fresh clone runs it: the files come from the upstream URLs (here
    served from the toy corpus), are checked and kept in the cache; a second prepare needs no
    network. A download with the wrong bytes is refused and leaves nothing in the cache."""
    served: list[str] = []

    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def network(url, *args, **kwargs):
        served.append(url)
        return Response((fake_multi30k / url.rsplit("/", 1)[1]).read_bytes())

    cache = tmp_path / "cache"
    monkeypatch.setattr(nmt.prepare, "MULTI30K_CACHE", cache)
    cfg = smoke_cfg(repo_root, f"data.prepared_dir={tmp_path / 'out'}")
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, *a, **k: Response(b"tampered"))
    with pytest.raises(NmtError, match="sha256"):
        run_prepare(cfg)
    assert not any(cache.glob("*.gz"))

    monkeypatch.setattr(urllib.request, "urlopen", network)
    manifest = run_prepare(cfg)
    assert sorted(u.rsplit("/", 1)[1] for u in served) == sorted(MULTI30K_EN_DE)
    assert all(u.startswith("https://github.com/multi30k/dataset/") for u in served)
    for name in MULTI30K_EN_DE:
        assert (cache / name).read_bytes() == (fake_multi30k / name).read_bytes()
    counts = manifest["counts"]
    assert counts["train"]["read"] == cfg.data.max_train_pairs
    assert counts["valid"] == {"read": TOY_SIZES["val"], "kept": TOY_SIZES["val"]}
    assert counts["test"]["read"] == TOY_SIZES["test_2016_flickr"]

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    again = run_prepare(smoke_cfg(repo_root, f"data.prepared_dir={tmp_path / 'again'}"))
    assert again["counts"] == counts


def test_the_real_multi30k_matches_the_published_checksums_and_sizes(
    repo_root, multi30k_dir, tmp_path: Path
) -> None:
    """Real language: the Multi30k files found match the sums nmt.prepare checks, and the smoke
    recipe prepares them with the published split sizes (valid 1014, test 1000, never filtered)."""
    for name in MULTI30K_EN_DE:
        got = hashlib.sha256((multi30k_dir / name).read_bytes()).hexdigest()
        assert got == nmt.prepare.MULTI30K_SHA256[name], name
    cfg = smoke_cfg(repo_root, f"data.prepared_dir={tmp_path / 'out'}")
    manifest = run_prepare(cfg, source=str(multi30k_dir))
    counts = manifest["counts"]
    assert counts["train"]["read"] == cfg.data.max_train_pairs
    assert 0 < counts["train"]["kept"] <= cfg.data.max_train_pairs
    assert counts["valid"] == {"read": 1014, "kept": 1014}
    assert counts["test"] == {"read": 1000, "kept": 1000}
    assert manifest["tokenizer"]["src_vocab_size"] == cfg.data.vocab_size


def test_encoded_splits_are_opened_memory_mapped_and_read_only(tiny_corpus: Path, tmp_path: Path):
    """Training maps the prepared ids instead of reading them: its private memory does not grow
    with the corpus, and torchrun's ranks share the pages."""
    out = tmp_path / "out"
    run_prepare(files_cfg(tiny_corpus, out))
    split = load_split(out, "train")
    first = read_lines(tiny_corpus / "train.en")[0]  # toy pairs: none is filtered out
    arrays = (split._src, split._src_off, split._tgt, split._tgt_off)
    assert all(isinstance(a, np.memmap) and not a.flags.writeable for a in arrays)
    assert split.src(0).tolist() == Tokenizer.load(out).encode_src([first])[0]
    with pytest.raises(ValueError):
        split._src[0] = 1


# --- streamed, in worker processes ---


def test_output_is_the_same_bytes_for_any_number_of_workers(
    make_corpus, tmp_path: Path, monkeypatch
) -> None:
    """Chunks of 7 pairs, so that several are in flight in each of 2 and 3 worker processes."""
    monkeypatch.setattr(nmt.encode, "CHUNK", 7)
    folder, _, _ = filter_corpus(make_corpus)  # pairs dropped for every reason, and duplicates
    outputs = []
    for workers in (1, 2, 3):
        out = tmp_path / f"w{workers}"
        run_prepare(files_cfg(folder, out, max_len=60, workers=workers))
        outputs.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert outputs[0] == outputs[1] == outputs[2]
    assert len(load_split(tmp_path / "w2", "train")) > 7 * 3


def test_sentencepiece_learns_from_a_seeded_sample(make_corpus, tmp_path: Path) -> None:
    """spm_sample 40 sentences: 20 pairs of the 120 for a joint vocabulary, the same 20 for the same
    seed; every pair is still encoded."""
    folder = make_corpus()
    src, tgt = folder / "train.en", folder / "train.de"

    def sample(size: int, seed: int) -> list[tuple[str, str]]:
        reservoir = Reservoir(size, seed)
        scan(src, tgt, 0, reservoir)
        return reservoir.sample

    a = sample(20, seed=1)
    assert len(a) == 20 and a == sample(20, seed=1)
    assert sample(20, seed=2) != a
    pairs = list(zip(read_lines(src), read_lines(tgt)))
    assert set(a) <= set(pairs) and sample(500, 1) == pairs
    manifest = run_prepare(files_cfg(folder, tmp_path / "out", spm_sample=40))
    assert manifest["counts"]["train"]["kept"] == 120
    again = run_prepare(files_cfg(folder, tmp_path / "again", spm_sample=40))
    assert again["tokenizer"]["sha256"] == manifest["tokenizer"]["sha256"]


# --- through the command line (`nmt prepare`) ---


def test_prepare_source_flag_stands_in_for_data_source(
    cli, tiny_corpus: Path, repo_root: Path, tmp_path: Path
) -> None:
    """configs/base.yaml leaves data.source null;
    `--source DIR` supplies it, as its comment says."""
    out = tmp_path / "prepared"
    code, _, err = cli(
        "prepare",
        "--config",
        repo_root / "configs" / "base.yaml",
        "--source",
        tiny_corpus,
        "--set",
        f"data.prepared_dir={out}",
        "--set",
        "data.vocab_size=60",
    )
    assert code in (0, None), err
    assert (out / "manifest.json").is_file()


@pytest.mark.parametrize(
    "change, names",
    [
        (
            lambda d: (d / "train.de").write_text(
                "".join(f"{s}\n" for s in (d / "train.de").read_text().splitlines()[:-2])
            ),
            ["train.en", "train.de", "120", "118"],
        ),
        (
            lambda d: (d / "val.en").write_bytes((d / "val.en").read_bytes() + b"caf\xe9\n"),
            ["val.en:13", "UTF-8"],
        ),
        (lambda d: (d / "test_2016_flickr.de").unlink(), ["test_2016_flickr.de", "not found"]),
    ],
    ids=["different_lengths", "invalid_utf8", "missing_file"],
)
def test_prepare_bad_corpus(cli, make_corpus, tmp_path: Path, change, names) -> None:
    folder = make_corpus()
    change(folder)
    code, _, err = cli(
        "prepare",
        "--config",
        SMOKE,
        "--source",
        folder,
        "--set",
        "data.corpus=files",
        "--set",
        f"data.prepared_dir={tmp_path / 'out'}",
        "--set",
        "data.vocab_size=60",
    )
    assert_one_error_line(code, err, *names)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_prepare_with_nothing_left_after_filtering(cli, make_corpus, tmp_path: Path) -> None:
    folder = make_corpus()
    code, _, err = cli(
        "prepare",
        "--config",
        SMOKE,
        "--source",
        folder,
        "--set",
        "data.corpus=files",
        "--set",
        f"data.prepared_dir={tmp_path / 'out'}",
        "--set",
        "data.vocab_size=60",
        "--set",
        "data.max_len=1",
    )
    assert_one_error_line(code, err, "no training pairs left after filtering", "data.max_len=1")
