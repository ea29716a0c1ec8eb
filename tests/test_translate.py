"""Stage 3 (nmt translate) as a stream: chunks of any size give the same output, a pipe gets each
translation before it is closed, and a file is replaced only when the whole input has been
translated. On the smoke run of tests/conftest.py: bad input and outputs as one `error:` line,
the decoding options (length limits, workers, early exit, no repeated n-grams), attention heatmaps,
bf16 weights (int8: an error naming the CTranslate2 export), devices, ensembles, and outputs
through a symlink or /dev/null."""

from __future__ import annotations

import io
import json
import os
import select
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import LONG, SHORT, assert_one_error_line, write
from conftest import SmokeRun
from toy_language import toy_sentences

from nmt.cli import main
from nmt.config import load_config
from nmt.prepare import prepare
from nmt.train import train


@pytest.fixture(scope="module")
def checkpoint(repo_root: Path, toy_data: list[str], tmp_path_factory) -> Path:
    """configs/smoke.yaml trained on the toy language (100 steps: it translates, imperfectly)."""
    work = tmp_path_factory.mktemp("translate")
    sets = [*toy_data, f"data.prepared_dir={work / 'prepared'}", "train.max_steps=100"]
    cfg = load_config(repo_root / "configs" / "smoke.yaml", sets)
    prepare(cfg, log=lambda m: None)
    return train(cfg, work / "run") / "best.pt"


def run_cli(monkeypatch, capsys, *args: object, stdin: bytes = b"") -> tuple[object, str, str]:
    """`nmt ARGS` in this process; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["nmt", *map(str, args)])
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    with pytest.raises(SystemExit) as info:
        main()
    out, err = capsys.readouterr()
    return info.value.code, out, err


def lines_in(n: int) -> bytes:
    src, _ = toy_sentences(n, seed=7)
    src[3] = ""  # an empty line stays an empty line
    return "".join(s + "\n" for s in src).encode()


def test_any_chunk_size_gives_the_same_lines_in_input_order(checkpoint, monkeypatch, capsys):
    text = lines_in(23)
    outputs = {}
    for buffer in (1, 7, 100_000):
        code, out, err = run_cli(
            monkeypatch, capsys, "translate", "--checkpoint", checkpoint, "--buffer", buffer,
            stdin=text,
        )  # fmt: skip
        assert code in (0, None), err
        outputs[buffer] = out
    assert len(outputs[1].splitlines()) == 23 and outputs[1].splitlines()[3] == ""
    assert outputs[1] == outputs[7] == outputs[100_000]
    assert len(set(outputs[1].splitlines())) > 15  # not one line repeated


def test_nbest_indices_count_across_chunks(checkpoint, monkeypatch, capsys):
    text = "".join(s + "\n" for s in toy_sentences(9, seed=8)[0]).encode()
    args = ["translate", "--checkpoint", checkpoint, "--beam", 2, "--nbest", 2]
    _, chunked, _ = run_cli(monkeypatch, capsys, *args, "--buffer", 2, stdin=text)
    _, whole, _ = run_cli(monkeypatch, capsys, *args, stdin=text)
    assert chunked == whole
    assert [int(line.split(" ||| ")[0]) for line in chunked.splitlines()] == [
        i for i in range(9) for _ in range(2)
    ]


def test_a_pipe_gets_each_translation_before_stdin_is_closed(checkpoint: Path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "nmt", "translate", "--checkpoint", str(checkpoint)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        for line in (b"A small dog runs.\n", b"The woman sits on the bench.\n"):
            proc.stdin.write(line)
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], 120)
            assert ready, "no translation while stdin is still open"
            assert proc.stdout.readline().strip()
        proc.stdin.close()
        assert proc.stdout.read() == b"" and proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        proc.wait()


def test_an_output_file_is_replaced_only_by_a_complete_translation(
    checkpoint, monkeypatch, capsys, tmp_path: Path
):
    """Bad UTF-8 at line 9, with chunks of 3: the error names the line, the old output file is
    untouched and no temporary file is left; with good input the file holds every line."""
    src = tmp_path / "in.txt"
    src.write_bytes(lines_in(8) + b"bad \xff\n")
    out = tmp_path / "out.txt"
    out.write_text("an earlier translation\n", encoding="utf-8")
    args = ["translate", "--checkpoint", checkpoint, "--buffer", 3, "-i", src, "-o", out]
    code, stdout, err = run_cli(monkeypatch, capsys, *args)
    assert code == 1 and err.strip() == f"error: {src}:9: invalid UTF-8 at byte 4 of the line"
    assert out.read_text(encoding="utf-8") == "an earlier translation\n" and stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.txt"]
    src.write_bytes(lines_in(8))
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code in (0, None), err
    assert len(out.read_text(encoding="utf-8").splitlines()) == 8


def test_buffer_below_one_is_one_error_line(checkpoint, monkeypatch, capsys):
    code, _, err = run_cli(
        monkeypatch, capsys, "translate", "--checkpoint", checkpoint, "--buffer", 0, stdin=b"a\n"
    )
    assert code == 2 and err.strip() == "error: --buffer 0: expected 1 or more"


def test_sampling_is_reproducible_for_a_seed_whatever_the_chunks(checkpoint, monkeypatch, capsys):
    text = lines_in(30)
    args = ["translate", "--checkpoint", checkpoint, "--sample", "--topk", 10]

    def sample(*more: object) -> str:
        code, out, err = run_cli(monkeypatch, capsys, *args, *more, stdin=text)
        assert code in (0, None), err
        return out

    first = sample("--seed", 3)
    assert sample("--seed", 3, "--buffer", 4) == first
    assert sample("--seed", 4) != first
    _, greedy, _ = run_cli(
        monkeypatch, capsys, "translate", "--checkpoint", checkpoint, "--beam", 1, stdin=text
    )
    assert first != greedy and len(first.splitlines()) == 30


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--topk", 5], "--topk is a sampling option: add --sample"),
        (["--sample", "--beam", 4], "--sample draws one translation per line: --beam"),
        (["--sample", "--topp", 0], "--topp 0.0: expected a probability in (0, 1]"),
    ],
)
def test_sampling_flags_that_do_not_fit_are_one_error(
    checkpoint, monkeypatch, capsys, flags, message
):
    code, _, err = run_cli(
        monkeypatch, capsys, "translate", "--checkpoint", checkpoint, *flags, stdin=b"a\n"
    )
    assert code == 2 and err.startswith("error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1


# --- on the smoke run of tests/conftest.py: input, output and their errors ---


def test_translate_input_file_with_invalid_utf8(cli, smoke: SmokeRun, tmp_path: Path) -> None:
    path = tmp_path / "in.txt"
    path.write_bytes(b"ok\nalso ok\n\xe4rger\n")
    code, out, err = cli("translate", "--checkpoint", smoke.run / "best.pt", "--input", path)
    assert_one_error_line(code, err, f"{path}:3")
    assert out == ""


def test_translate_missing_input_file(cli, smoke: SmokeRun, tmp_path: Path) -> None:
    code, _, err = cli(
        "translate", "--checkpoint", smoke.run / "best.pt", "--input", tmp_path / "none.txt"
    )
    assert_one_error_line(code, err, tmp_path / "none.txt")


def test_translate_empty_input_gives_empty_output(cli, smoke: SmokeRun, tmp_path: Path) -> None:
    code, out, err = cli("translate", "--checkpoint", smoke.run / "best.pt", stdin=b"")
    assert code in (0, None), err
    assert out == ""
    empty = write(tmp_path / "empty.txt", "")
    code, _, err = cli(
        "translate",
        "--checkpoint",
        smoke.run / "best.pt",
        "--input",
        empty,
        "--output",
        tmp_path / "o.txt",
    )
    assert code in (0, None), err
    assert (tmp_path / "o.txt").read_bytes() == b""


def test_translate_output_that_cannot_be_written(cli, smoke: SmokeRun, tmp_path: Path) -> None:
    (tmp_path / "a_dir").mkdir()
    code, _, err = cli(
        "translate",
        "--checkpoint",
        smoke.run / "best.pt",
        "--output",
        tmp_path / "a_dir",
        stdin=b"a\n",
    )
    assert_one_error_line(code, err, tmp_path / "a_dir")


def test_nbest_larger_than_beam(cli, smoke: SmokeRun) -> None:
    code, _, err = cli(
        "translate",
        "--checkpoint",
        smoke.run / "best.pt",
        "--nbest",
        "3",
        "--beam",
        "2",
        stdin=b"a\n",
    )
    assert code == 2
    assert_one_error_line(code, err, "--nbest 3", "--beam 2")


def test_translate_a_line_longer_than_the_model_allows(cli, smoke: SmokeRun) -> None:
    # ~600 subwords; the model takes 127
    long_line = " ".join(["A man in a blue shirt walks."] * 80)
    code, out, err = cli(
        "translate",
        "--checkpoint",
        smoke.run / "best.pt",
        "--beam",
        "1",
        stdin=f"{SHORT}\n{long_line}\n".encode(),
    )
    assert code in (0, None), err
    assert len(out.splitlines()) == 2
    warning = "warning: 1 input line(s) longer than the model's 127 subwords were truncated"
    assert f"{warning} (first: line 2)" in err


# --- decoding options ---


def test_translate_length_limit_options(cli, smoke: SmokeRun) -> None:
    """--max-len-a 0 --max-len-b 1 leaves room only for EOS: every output is empty."""
    code, out, err = cli(
        "translate",
        "--checkpoint",
        smoke.run / "best.pt",
        "--max-len-a",
        "0",
        "--max-len-b",
        "1",
        "--no-repeat-ngram",
        "2",
        stdin=f"{SHORT}\n{LONG}\n".encode(),
    )
    assert code in (0, None), err
    assert out == "\n\n"


def test_translate_with_one_and_with_three_workers_gives_the_same_lines(
    cli, smoke: SmokeRun, monkeypatch
) -> None:
    """Workers decode batches side by side; each line
    still gets its own translation, in input order."""
    import nmt.search

    threaded = []
    in_threads = nmt.search.in_threads
    monkeypatch.setattr(
        nmt.search,
        "in_threads",
        lambda fn, items, workers: threaded.append(len(items)) or in_threads(fn, items, workers),
    )
    # more lines than one decoding batch holds
    lines = (smoke.prepared / "valid.src.txt").read_text(encoding="utf-8") * 10
    many = write(smoke.cwd.parent / "valid_x10.txt", lines)
    outs = []
    for workers in ("1", "3"):
        code, out, err = cli(
            "translate",
            "--checkpoint",
            smoke.run / "best.pt",
            "-i",
            many,
            "--beam",
            "2",
            "--workers",
            workers,
        )
        assert code in (0, None), err
        outs.append(out.splitlines())
    # only --workers 3 took the threads, over more than one batch
    assert len(threaded) == 1 and threaded[0] > 1
    assert len(outs[0]) == len(lines.splitlines()) and outs[0] == outs[1] and len(set(outs[0])) > 50
    code, _, err = cli(
        "translate",
        "--checkpoint",
        smoke.run / "best.pt",
        "-i",
        smoke.prepared / "valid.src.txt",
        "--workers",
        "0",
    )
    assert code == 2 and "--workers" in err  # typer's range check


def test_early_exit_decodes_fewer_rows_and_keeps_its_results_apart(
    cli, smoke: SmokeRun, run_copy: Path, monkeypatch
) -> None:
    """--early-exit ends a sentence once its best continuation ends it: fewer decoder rows over the
    valid split; its results are saved under their own name, beside those of the default rule."""
    from nmt.models.transformer import Transformer

    rows = []
    step = Transformer.step
    monkeypatch.setattr(
        Transformer,
        "step",
        lambda self, prev, state: rows.append(prev.size(0)) or step(self, prev, state),
    )
    counts, saved = [], {}
    for flag in ("--no-early-exit", "--early-exit"):
        rows.clear()
        code, out, err = cli(
            "evaluate",
            "--checkpoint",
            run_copy / "best.pt",
            "--split",
            "valid",
            "--beam",
            "3",
            flag,
            "--json",
        )
        assert code == 0, err
        counts.append(sum(rows))
        saved[flag] = json.loads(out)
    assert counts[1] < counts[0]
    assert [saved[f]["decode"]["early_exit"] for f in ("--no-early-exit", "--early-exit")] == [
        False,
        True,
    ]
    assert Path(saved["--early-exit"]["hyp"]).name == "valid.best.beam3.alpha0.6.early.hyp.txt"
    assert Path(saved["--no-early-exit"]["hyp"]).name == "valid.best.beam3.alpha0.6.hyp.txt"


def test_no_repeat_ngram_on_the_trained_smoke_model(smoke: SmokeRun) -> None:
    """Sentences whose right translation repeats bigrams ("der hund rennt und der hund rennt"), and
    one the toy model does not know: blocking bigrams leaves no repeated bigram in any output."""
    from nmt.translate import load_translator, translate_lines

    tr = load_translator(smoke.run / "best.pt", "cpu")
    lines = [
        "The dog runs and the dog runs.",
        "A small cat sits on the bench and a small cat sits on the bench.",
        LONG,
    ]

    def repeats(hyps: list) -> int:
        out = 0
        for h in hyps:
            grams = list(zip(h[0].tokens, h[0].tokens[1:]))
            out += len(grams) - len(set(grams))
        return out

    assert repeats(translate_lines(tr, lines, replace(tr.settings(), beam=2, alpha=0.6))) > 0
    assert (
        repeats(
            translate_lines(tr, lines, replace(tr.settings(), beam=2, alpha=0.6, no_repeat_ngram=2))
        )
        == 0
    )
    assert (
        repeats(
            translate_lines(tr, lines, replace(tr.settings(), beam=1, alpha=0.6, no_repeat_ngram=2))
        )
        == 0
    )


# --- attention heatmaps ---


def test_translate_writes_attention_heatmaps(cli, smoke: SmokeRun, tmp_path: Path) -> None:
    from PIL import Image

    out_dir = tmp_path / "attention"
    code, out, err = cli(
        "translate",
        "--checkpoint",
        smoke.run / "best.pt",
        "--attention-dir",
        out_dir,
        stdin=f"{SHORT}\n\n{LONG}\n".encode(),
    )
    assert code in (0, None), err
    assert "attention of 2 sentence(s) written" in err
    translations = out.splitlines()
    assert sorted(p.name for p in out_dir.iterdir() if p.name.startswith("0003")) == [
        "0003.cross.layer1.heads.png",
        "0003.cross.layer1.png",
        "0003.encoder.layer1.png",
        "0003.json",
        "0003.npz",
        "0003.self.layer1.png",
    ]
    assert not list(out_dir.glob("0002.*"))  # the empty line has no translation and no attention
    for line in (1, 3):
        meta = json.loads((out_dir / f"{line:04d}.json").read_text(encoding="utf-8"))
        assert meta["translation"] == translations[line - 1] and meta["source"] in (SHORT, LONG)
        assert meta["score"] < 0  # the translation's length-normalised log-probability
        s, t = len(meta["source_tokens"]), len(meta["target_tokens"])
        assert meta["source_tokens"][-1] == "</s>" and meta["decoder_inputs"][0] == "<s>"
        with np.load(out_dir / f"{line:04d}.npz") as w:
            assert (
                w["cross"].shape == (1, 4, t, s)
                and w["self"].shape == (1, 4, t, t)
                and w["encoder"].shape == (1, 4, s, s)
            )
            np.testing.assert_allclose(w["cross"].sum(-1), 1.0, atol=1e-5)
            assert not np.triu(w["self"], k=1).any()
        sizes = {
            "cross.layer1.png": (t, s),
            "encoder.layer1.png": (s, s),
            "self.layer1.png": (t, t),
        }
        for suffix, (rows, cols) in sizes.items():
            with Image.open(out_dir / f"{line:04d}.{suffix}") as image:
                assert image.size == (110 + 28 * cols + 70, 110 + 28 * rows + 50), suffix
        with Image.open(out_dir / f"{line:04d}.cross.layer1.heads.png") as image:
            # the four heads side by side
            assert image.size == (4 * (110 + 28 * s + 70), 110 + 28 * t + 50)


def test_greedy_heatmaps_carry_the_translation_score(cli, smoke: SmokeRun, tmp_path: Path) -> None:
    """Greedy search without an n-best list skips the softmax and its scores, except where they are
    shown: the heatmaps' JSON."""
    out_dir = tmp_path / "attention"
    code, out, err = cli(
        "translate", "--checkpoint", smoke.run / "best.pt", "--beam", "1",
        "--attention-dir", out_dir, stdin=f"{SHORT}\n".encode(),
    )  # fmt: skip
    assert code in (0, None), err
    meta = json.loads((out_dir / "0001.json").read_text(encoding="utf-8"))
    assert meta["translation"] == out.splitlines()[0] and meta["score"] < 0


def test_attention_dir_errors(cli, smoke: SmokeRun, tmp_path: Path, monkeypatch) -> None:
    code, _, err = cli(
        "translate",
        "--checkpoint",
        smoke.run / "best.pt",
        "--attention-dir",
        tmp_path / "a",
        "--attention-layer",
        "2",
        stdin=b"a\n",
    )
    assert_one_error_line(code, err, "--attention-layer 2", "1 decoder layer")
    # a seq2seq model without attention has nothing to plot
    from nmt.checkpoint import load_checkpoint, save_checkpoint
    from nmt.config import config_from_dict
    from nmt.models import build_model

    ckpt = load_checkpoint(smoke.run / "best.pt")
    raw = ckpt["config"]
    raw["model"].update(arch="rnn", attention="none", hidden_size=64, layers=1)
    vocab = ckpt["model"]["src_embed.weight"].shape[0]
    plain = build_model(config_from_dict(raw, origin="test").model, vocab, vocab)
    save_checkpoint(
        tmp_path / "plain.pt",
        {
            **{k: v for k, v in ckpt.items() if k != "path"},
            "config": raw,
            "model": plain.state_dict(),
        },
    )
    code, _, err = cli(
        "translate",
        "--checkpoint",
        tmp_path / "plain.pt",
        "--attention-dir",
        tmp_path / "b",
        stdin=b"a\n",
    )
    assert_one_error_line(code, err, "plain.pt", "without attention")
    # a file where the folder should be
    (tmp_path / "taken").write_text("x")
    code, _, err = cli(
        "translate",
        "--checkpoint",
        smoke.run / "best.pt",
        "--attention-dir",
        tmp_path / "taken",
        stdin=b"a\n",
    )
    assert_one_error_line(code, err, "--attention-dir", "taken")
    # unwritable outputs of average and sweep
    (tmp_path / "a_dir").mkdir()
    code, _, err = cli("average", smoke.run / "best.pt", "-o", tmp_path / "a_dir")
    assert_one_error_line(code, err, "a_dir", "is a folder")
    code, _, err = cli(
        "sweep",
        "--checkpoint",
        smoke.run / "best.pt",
        "--beam",
        "1",
        "--alpha",
        "0",
        "-o",
        tmp_path / "a_dir",
    )
    assert_one_error_line(code, err[err.index("error:") :], "a_dir", "is a folder")
    # matplotlib missing: the one-line hint, before any decoding
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, _, err = cli(
        "translate",
        "--checkpoint",
        smoke.run / "best.pt",
        "--attention-dir",
        tmp_path / "c",
        stdin=b"a\n",
    )
    assert_one_error_line(code, err, "pip install 'nmt[plot]'")
    assert not (tmp_path / "c").exists()


# --- precision, devices, ensembles ---


def test_bf16_weights_translate_like_float32(smoke: SmokeRun) -> None:
    import torch

    from nmt.data import read_lines
    from nmt.translate import load_translator, translate_lines

    fp32, low = (
        load_translator(smoke.run / "best.pt", "cpu", "fp32"),
        load_translator(smoke.run / "best.pt", "cpu", "bf16"),
    )
    assert (fp32.precision, low.precision) == ("fp32", "bf16")
    assert all(p.dtype == torch.float32 for p in fp32.model.parameters())
    assert all(p.dtype == torch.bfloat16 for p in low.model.parameters())
    # decoding pads rows for oneDNN's kernels
    one = torch.tensor([[5, 6, 3]])
    with torch.inference_mode():
        rows = [t.model.start(one, one == 0).row_multiple for t in (low, fp32)]
    assert rows == [64, 1]
    src = read_lines(smoke.prepared / "valid.src.txt")[:100]
    for beam in (1, 2):
        a = [
            h[0].tokens
            for h in translate_lines(fp32, src, replace(fp32.settings(), beam=beam, alpha=0.6))
        ]
        b = [
            h[0].tokens
            for h in translate_lines(low, src, replace(low.settings(), beam=beam, alpha=0.6))
        ]
        # most outputs are identical: rounding flips close calls of this tiny model, while wrong
        # weights would leave almost none the same
        assert sum(x == y for x, y in zip(a, b)) >= 50


def test_unknown_precision_is_one_error_line(cli, smoke: SmokeRun) -> None:
    code, _, err = cli(
        "translate", "--checkpoint", smoke.run / "best.pt", "--precision", "fp8", stdin=b"a\n"
    )
    assert code == 2
    assert_one_error_line(code, err, "--precision fp8", "auto, fp32, bf16")


def test_int8_precision_points_to_the_ctranslate2_export(cli, smoke: SmokeRun) -> None:
    code, _, err = cli(
        "translate", "--checkpoint", smoke.run / "best.pt", "--precision", "int8", stdin=b"a\n"
    )
    assert code == 2
    assert_one_error_line(code, err, "--precision int8", "nmt export", "--quantization int8")


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "cuda"])
def test_translate_on_a_device_that_is_not_there(cli, smoke: SmokeRun, device: str) -> None:
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = cli(
        "translate", "--checkpoint", smoke.run / "best.pt", "--device", device, stdin=b"a\n"
    )
    assert code == 2
    assert_one_error_line(code, err, f"--device {device}")


def test_translate_sweep_and_evaluate_with_an_ensemble(
    cli, smoke: SmokeRun, run_copy: Path, tmp_path: Path
) -> None:
    """--checkpoint twice: the ensemble of two checkpoints of the run translates every line;
    evaluate names its members and keeps its results apart from a single checkpoint's; sweep decodes
    valid with it."""
    from nmt.retention import step_files

    a, b = step_files(run_copy)[100], step_files(run_copy)[200]
    lines = (smoke.prepared / "valid.src.txt").read_text(encoding="utf-8").splitlines()[:12]
    code, out, err = cli(
        "translate",
        "--checkpoint",
        a,
        "--checkpoint",
        b,
        "--beam",
        "2",
        stdin="\n".join(lines).encode() + b"\n",
    )
    assert code in (0, None), err
    assert len(out.splitlines()) == 12 and any(out.splitlines())
    code, out, err = cli(
        "evaluate",
        "--checkpoint",
        a,
        "--checkpoint",
        b,
        "--split",
        "valid",
        "--beam",
        "1",
        "--json",
    )
    assert code in (0, None), err
    ensemble = json.loads(out)
    assert (
        ensemble["ensemble"] == [str(a), str(b)]
        and ".ensemble2-" in ensemble["hyp"]
        and Path(ensemble["hyp"]).is_file()
    )
    code, out, err = cli("evaluate", "--checkpoint", b, "--split", "valid", "--beam", "1", "--json")
    assert code in (0, None), err
    single = json.loads(out)
    assert (
        "ensemble" not in single
        and single["hyp"] != ensemble["hyp"]
        and Path(ensemble["hyp"]).is_file()
    )
    code, out, err = cli(
        "sweep",
        "--checkpoint",
        a,
        "--checkpoint",
        b,
        "--beam",
        "1",
        "--alpha",
        "0.6",
        "-o",
        tmp_path / "s.json",
    )
    assert code in (0, None), err
    swept = json.loads((tmp_path / "s.json").read_text())
    assert swept["ensemble"] == [str(a), str(b)] and swept["best"]["bleu"] == round(
        ensemble["metrics"]["bleu"]["score"], 2
    )


def test_ensemble_of_checkpoints_that_do_not_fit_together(
    cli, smoke: SmokeRun, other_prepared: Path, tmp_path: Path
) -> None:
    """Another tokenizer, or the other direction: one error line naming the checkpoint;
    --attention-dir wants one model."""
    from nmt.checkpoint import load_checkpoint, save_checkpoint
    from nmt.retention import step_files
    from nmt.tokenizer import Tokenizer

    good = step_files(smoke.run)[200]
    ckpt = load_checkpoint(good)
    del ckpt["path"]
    other_tok = tmp_path / "other_tok.pt"
    save_checkpoint(other_tok, {**ckpt, "tokenizer": Tokenizer.load(other_prepared).to_state()})
    data = dict(
        ckpt["config"]["data"],
        src_lang=ckpt["config"]["data"]["tgt_lang"],
        tgt_lang=ckpt["config"]["data"]["src_lang"],
    )
    reversed_ = tmp_path / "reversed.pt"
    save_checkpoint(reversed_, {**ckpt, "config": {**ckpt["config"], "data": data}})
    code, _, err = cli(
        "translate", "--checkpoint", good, "--checkpoint", other_tok, stdin=b"a dog\n"
    )
    assert_one_error_line(code, err, other_tok, "tokenizer")
    code, _, err = cli(
        "evaluate", "--checkpoint", good, "--checkpoint", reversed_, "--split", "valid"
    )
    assert_one_error_line(code, err, reversed_, "direction")
    code, _, err = cli(
        "translate",
        "--checkpoint",
        good,
        "--checkpoint",
        good,
        "--attention-dir",
        tmp_path / "attn",
        stdin=b"a dog\n",
    )
    assert_one_error_line(code, err, "--attention-dir", "one --checkpoint")


# --- outputs that are not plain files ---


def test_translate_follows_a_symlink_and_writes_through_dev_null(
    cli, smoke: SmokeRun, tmp_path: Path
) -> None:
    target = tmp_path / "target.txt"
    target.write_text("old\n")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    ckpt = smoke.run / "best.pt"
    code, _, err = cli("translate", "--checkpoint", ckpt, "-o", link, stdin=SHORT.encode() + b"\n")
    assert code in (0, None), err
    assert link.is_symlink() and target.read_text() != "old\n" and len(target.read_text()) > 1
    code, _, err = cli("translate", "--checkpoint", ckpt, "-o", "/dev/null", stdin=b"a\n")
    assert code in (0, None), err
    assert Path("/dev/null").is_char_device()
