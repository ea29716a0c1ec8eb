"""The command line, end to end on configs/smoke.yaml,
and its error paths (one `error:` line, no traceback).

The end-to-end test runs the real program in subprocesses (`python -m nmt ...`) for each stage.
Further calls, and most error paths, go through `nmt.cli.main` in-process: it is the console-script
entry point itself, and it saves the ~2.5 s each subprocess spends importing torch. One error path
also runs as a subprocess to check the real exit status and stderr.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import toy_pairs

from nmt.cli import main

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
NBEST_LINE = re.compile(r"^(\d+) \|\|\| (.*) \|\|\| (-?\d+\.\d+)$")
SHORT = "A dog runs."
LONG = "A man in a blue shirt is standing on a ladder and cleaning the windows of a tall building."


def nmt(*args: object, cwd: Path, stdin: bytes = b"") -> subprocess.CompletedProcess:
    """Run `python -m nmt ARGS` in `cwd`; stdout/stderr as text."""
    # One thread: on a small shared machine two OpenMP threads per process can be ~40x slower.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "nmt", *map(str, args)],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        timeout=300,
        env=env,
    )
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode()
    )


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{proc.args} failed:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc


def assert_one_error_line(code: object, stderr: str, *names: object) -> str:
    """Non-zero exit, no traceback, exactly one non-empty
    stderr line `error: ...` naming each of `names`."""
    assert code not in (0, None)
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), lines[0]
    for name in names:
        assert str(name) in lines[0]
    return lines[0]


@dataclass
class SmokeRun:
    cwd: Path  # an empty directory every command runs in: nothing may appear there
    prepared: Path
    run: Path
    sets: list[str]  # the --set flags that go with every config-taking command
    prepare: subprocess.CompletedProcess
    train: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, toy_corpus: Path) -> SmokeRun:
    """`nmt prepare` then `nmt train` on configs/smoke.yaml
    and the toy corpus, everything under a tmp dir."""
    work = tmp_path_factory.mktemp("cli")
    cwd, prepared, run = work / "cwd", work / "prepared", work / "run"
    cwd.mkdir()
    sets = ["--set", f"data.prepared_dir={prepared}", "--set", "data.corpus=files"]
    sets += ["--set", f"data.source={toy_corpus}"]
    prep = nmt("prepare", "--config", SMOKE, *sets, cwd=cwd)
    train = nmt(
        "train", "--config", SMOKE, "--run-dir", run, *sets, "--set", "train.threads=1", cwd=cwd
    )
    return SmokeRun(cwd, prepared, run, sets, prep, train)


# --- in-process calls of the entry point ---


@pytest.fixture
def cli(monkeypatch, capsys, tmp_path: Path):
    """Call `nmt.cli.main` with argv (and stdin bytes); returns (exit code, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)

    def call(*args: object, stdin: bytes = b"") -> tuple[object, str, str]:
        monkeypatch.setattr(sys, "argv", ["nmt", *map(str, args)])
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
        import torch

        threads = torch.get_num_threads()  # `nmt train` sets it from the config: put it back
        torch.set_num_threads(1)  # see nmt(): one thread is the fast choice here
        try:
            with pytest.raises(SystemExit) as info:
                main()
        finally:
            torch.set_num_threads(threads)
        out, err = capsys.readouterr()
        return info.value.code, out, err

    return call


def test_end_to_end(smoke: SmokeRun, cli, tmp_path: Path) -> None:
    ok(smoke.prepare)
    assert (smoke.prepared / "manifest.json").is_file() and (smoke.prepared / "spm.model").is_file()
    ok(smoke.train)
    for name in ("best.pt", "last.pt", "config.yaml", "metrics.jsonl"):
        assert (smoke.run / name).is_file(), name
    ckpt, cwd = smoke.run / "best.pt", smoke.cwd

    # 1-best, stdin and file: one line per input line, an empty line stays an empty line
    lines = [LONG, "", SHORT]
    text = "".join(line + "\n" for line in lines)
    from_stdin = ok(nmt("translate", "--checkpoint", ckpt, cwd=cwd, stdin=text.encode())).stdout
    assert from_stdin.endswith("\n") and len(from_stdin.split("\n")[:-1]) == len(lines)
    assert from_stdin.split("\n")[1] == ""
    (tmp_path / "in.txt").write_text(text, encoding="utf-8")
    out_file = tmp_path / "sub" / "out.txt"
    proc = ok(
        nmt(
            "translate",
            "--checkpoint",
            smoke.run,
            "--input",
            tmp_path / "in.txt",
            "--output",
            out_file,
            cwd=cwd,
        )
    )
    assert proc.stdout == ""
    assert out_file.read_text(encoding="utf-8") == from_stdin  # a run dir means its best.pt

    # n-best: `i ||| text ||| score`, 2 per input, grouped by input index in input order
    def nbest(order: list[str]) -> dict[str, list[float]]:
        code, out, err = cli(
            "translate",
            "--checkpoint",
            ckpt,
            "--nbest",
            2,
            "--beam",
            2,
            stdin="".join(s + "\n" for s in order).encode(),
        )
        assert code in (0, None), err
        rows = [NBEST_LINE.match(line) for line in out.splitlines()]
        assert all(rows), out
        assert [int(m.group(1)) for m in rows] == [0, 0, 1, 1]
        return {
            order[i]: [float(m.group(3)) for m in rows if int(m.group(1)) == i] for i in range(2)
        }

    forward, backward = nbest([LONG, SHORT]), nbest([SHORT, LONG])
    assert forward[LONG] != forward[SHORT]  # otherwise the comparison below proves nothing
    assert backward == forward  # each input keeps its own hypotheses whatever its position
    for scores in forward.values():
        assert scores == sorted(scores, reverse=True)

    # evaluate a checkpoint on the test split: JSON with scores and signatures, hypotheses saved
    result = json.loads(
        ok(nmt("evaluate", "--checkpoint", ckpt, "--split", "test", "--json", cwd=cwd)).stdout
    )
    refs = smoke.prepared / "test.tgt.txt"
    n_refs = len(refs.read_text(encoding="utf-8").splitlines())
    hyp = Path(result["hyp"])
    assert len(hyp.read_text(encoding="utf-8").splitlines()) == n_refs
    for metric in ("bleu", "chrf", "ter"):
        m = result["metrics"][metric]
        assert isinstance(m["score"], float) and m["score"] >= 0
        assert "nrefs:1" in m["signature"] and "version:" in m["signature"]
    # the smoke model has learned the toy language (about 50 BLEU after its 200 steps; an untrained
    # one scores about 0): masks, search, detokenization and scoring work together
    assert 30 <= result["metrics"]["bleu"]["score"] <= 100

    assert "bleu_paper" in result["metrics"]  # the checkpoint knows its target language

    # evaluate --hyp --ref scores those same hypotheses
    # identically (given the language, also paper-style)
    code, out, err = cli("evaluate", "--hyp", hyp, "--ref", refs, "--lang", "de", "--json")
    assert code in (0, None), err
    assert json.loads(out)["metrics"] == result["metrics"]

    assert list(cwd.iterdir()) == []  # every output went where it was told to go


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_invalid_utf8_on_stdin_subprocess(smoke: SmokeRun) -> None:
    proc = nmt(
        "translate", "--checkpoint", smoke.run / "best.pt", cwd=smoke.cwd, stdin=b"fine\nbad \xff\n"
    )
    line = assert_one_error_line(proc.returncode, proc.stderr, "<stdin>:2")
    assert "UTF-8" in line
    assert proc.stdout == ""


@pytest.mark.parametrize("command", ["prepare", "train"])
def test_missing_config_file(cli, tmp_path: Path, command: str) -> None:
    code, _, err = cli(command, "--config", tmp_path / "nope.yaml")
    assert_one_error_line(code, err, tmp_path / "nope.yaml", "not found")


def test_unknown_key(cli, tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "data:\n  source: /x\ntrain:\n  max_step: 10\n")
    code, _, err = cli("train", "--config", path)
    assert_one_error_line(code, err, path, "train.max_step", "train.max_steps")


def test_bad_yaml(cli, tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "data:\n  source: /x\nmodel: {layers: 2\n")
    code, _, err = cli("prepare", "--config", path)
    assert_one_error_line(code, err, path, "line ")


def test_set_with_a_bad_value(cli) -> None:
    code, _, err = cli("prepare", "--config", SMOKE, "--set", "train.max_steps=many")
    assert_one_error_line(code, err, SMOKE, "train.max_steps", "--set")


def test_set_without_equals(cli) -> None:
    code, _, err = cli("train", "--config", SMOKE, "--set", "train.max_steps")
    assert code == 2
    assert_one_error_line(code, err, "train.max_steps")


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


def test_missing_checkpoint(cli, tmp_path: Path) -> None:
    code, _, err = cli("translate", "--checkpoint", tmp_path / "none.pt")
    assert_one_error_line(code, err, tmp_path / "none.pt")


def test_run_dir_without_checkpoints(cli, tmp_path: Path) -> None:
    code, _, err = cli("evaluate", "--checkpoint", tmp_path, "--split", "test")
    assert_one_error_line(code, err, tmp_path)


@pytest.mark.parametrize("content", [b"not a checkpoint\n", b"PK\x03\x04 truncated zip"])
def test_file_that_is_not_a_checkpoint(cli, tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "fake.pt"
    path.write_bytes(content)
    code, _, err = cli("translate", "--checkpoint", path)
    assert_one_error_line(code, err, path)


def test_train_refuses_a_run_dir_that_holds_a_run(cli, smoke: SmokeRun, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"")
    code, _, err = cli("train", "--config", SMOKE, "--run-dir", run, *smoke.sets)
    assert_one_error_line(code, err, run, "--resume")
    assert [p.name for p in run.iterdir()] == ["last.pt"]  # nothing written into it


def test_resume_with_nothing_to_resume(cli, smoke: SmokeRun, tmp_path: Path) -> None:
    code, _, err = cli(
        "train", "--config", SMOKE, "--run-dir", tmp_path / "fresh", "--resume", *smoke.sets
    )
    assert_one_error_line(code, err, tmp_path / "fresh" / "last.pt")


def test_train_without_prepared_data(cli, tmp_path: Path) -> None:
    code, _, err = cli(
        "train",
        "--config",
        SMOKE,
        "--run-dir",
        tmp_path / "run",
        "--set",
        f"data.prepared_dir={tmp_path / 'unprepared'}",
    )
    assert_one_error_line(code, err, tmp_path / "unprepared", "nmt prepare")


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


def test_evaluate_that_cannot_write_beside_the_checkpoint(
    cli, smoke: SmokeRun, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes((smoke.run / "best.pt").read_bytes())
    (run / "valid.best.beam1.alpha0.6.hyp.txt").mkdir()  # where the hypotheses would go
    code, _, err = cli(
        "evaluate",
        "--checkpoint",
        run / "best.pt",
        "--split",
        "valid",
        "--beam",
        "1",
        "--alpha",
        "0.6",
    )
    assert_one_error_line(code, err, run, "valid.best.beam1.alpha0.6.hyp.txt")


def test_evaluate_keeps_the_results_of_each_setting_apart(
    cli, smoke: SmokeRun, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes((smoke.run / "best.pt").read_bytes())
    settings = (
        ["--beam", "2", "--alpha", "0"],
        ["--beam", "2", "--alpha", "1"],
        ["--beam", "2", "--alpha", "1", "--no-repeat-ngram", "2"],
        ["--beam", "2", "--alpha", "1", "--max-len-a", "0.5", "--max-len-b", "2"],
    )
    for args in settings:
        code, out, err = cli(
            "evaluate", "--checkpoint", run / "best.pt", "--split", "valid", *args, "--json"
        )
        assert code == 0, err
    saved = {p.name: json.loads(p.read_text()) for p in run.glob("valid.*.json")}
    assert sorted(saved) == [
        "valid.best.beam2.alpha0.json",
        "valid.best.beam2.alpha1.json",
        "valid.best.beam2.alpha1.len0.5x+2.json",
        "valid.best.beam2.alpha1.norepeat2.json",
    ]
    assert [
        saved["valid.best.beam2.alpha0.json"]["alpha"],
        saved["valid.best.beam2.alpha1.json"]["alpha"],
    ] == [0.0, 1.0]
    assert saved["valid.best.beam2.alpha1.norepeat2.json"]["decode"]["no_repeat_ngram"] == 2
    assert saved["valid.best.beam2.alpha1.len0.5x+2.json"]["decode"]["max_len_b"] == 2
    for name, result in saved.items():  # each JSON names its own hypotheses, which exist
        assert (
            Path(result["hyp"]).name == name.replace(".json", ".hyp.txt")
            and Path(result["hyp"]).exists()
        )


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


def test_evaluate_mismatched_line_counts(cli, tmp_path: Path) -> None:
    hyp = write(tmp_path / "hyp.txt", "a\nb\nc\n")
    ref = write(tmp_path / "ref.txt", "a\nb\n")
    code, _, err = cli("evaluate", "--hyp", hyp, "--ref", ref)
    assert_one_error_line(code, err, hyp, ref)


def test_evaluate_identical_files_score_perfectly(cli, tmp_path: Path) -> None:
    ref = write(tmp_path / "ref.txt", "Ein Mann fährt Fahrrad.\nZwei Hunde spielen im Schnee.\n")
    code, out, err = cli("evaluate", "--hyp", ref, "--ref", ref, "--json")
    assert code in (0, None), err
    m = json.loads(out)["metrics"]
    assert (m["bleu"]["score"], m["chrf"]["score"], m["ter"]["score"]) == (100.0, 100.0, 0.0)


@pytest.mark.parametrize(
    "args",
    [
        ["evaluate"],  # neither --hyp/--ref nor --checkpoint
        ["evaluate", "--hyp", "h.txt"],  # --hyp without --ref
        # both ways at once
        ["evaluate", "--checkpoint", "c.pt", "--hyp", "h.txt", "--ref", "r.txt"],
    ],
)
def test_evaluate_needs_exactly_one_way_in(cli, args: list[str]) -> None:
    code, _, err = cli(*args)
    assert_one_error_line(code, err, "--hyp")


def test_evaluate_unknown_split(cli, smoke: SmokeRun) -> None:
    code, _, err = cli("evaluate", "--checkpoint", smoke.run / "best.pt", "--split", "train")
    assert code == 2
    assert_one_error_line(code, err, "--split train")


# --- runs that must be refused without touching what is already there ---


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture
def run_copy(smoke: SmokeRun, tmp_path: Path) -> Path:
    """A copy of the smoke run, free to be resumed or damaged."""
    import shutil

    return Path(shutil.copytree(smoke.run, tmp_path / "run_copy"))


@pytest.fixture(scope="module")
def other_prepared(smoke: SmokeRun, toy_corpus: Path) -> Path:
    """The smoke data prepared with another vocabulary size: another tokenizer."""
    other = smoke.prepared.parent / "prepared_100"
    ok(
        nmt(
            "prepare",
            "--config",
            SMOKE,
            "--source",
            toy_corpus,
            *smoke.sets,
            "--set",
            f"data.prepared_dir={other}",
            "--set",
            "data.vocab_size=100",
            cwd=smoke.cwd,
        )
    )
    return other


def test_resume_with_a_changed_model_config_is_refused(
    cli, smoke: SmokeRun, run_copy: Path
) -> None:
    before = snapshot(run_copy)
    code, _, err = cli(
        "train",
        "--config",
        SMOKE,
        "--run-dir",
        run_copy,
        "--resume",
        *smoke.sets,
        "--set",
        "model.d_model=32",
        "--set",
        "model.ffn=128",
    )
    assert_one_error_line(code, err, run_copy / "last.pt", "model.d_model", "model.ffn")
    assert snapshot(run_copy) == before


def test_resume_with_another_tokenizer_is_refused(
    cli, smoke: SmokeRun, run_copy: Path, other_prepared: Path
) -> None:
    before = snapshot(run_copy)
    code, _, err = cli(
        "train",
        "--config",
        SMOKE,
        "--run-dir",
        run_copy,
        "--resume",
        *smoke.sets,
        "--set",
        f"data.prepared_dir={other_prepared}",
        "--set",
        "data.vocab_size=100",
    )
    assert_one_error_line(code, err, "different tokenizer", other_prepared, "resume")
    assert snapshot(run_copy) == before


def test_fine_tuning_with_another_tokenizer_is_refused(
    cli, smoke: SmokeRun, other_prepared: Path, tmp_path: Path
) -> None:
    code, _, err = cli(
        "train",
        "--config",
        SMOKE,
        "--run-dir",
        tmp_path / "ft",
        "--init",
        smoke.run / "best.pt",
        *smoke.sets,
        "--set",
        f"data.prepared_dir={other_prepared}",
        "--set",
        "data.vocab_size=100",
    )
    assert_one_error_line(code, err, smoke.run / "best.pt", "different tokenizer", "fine-tune")
    assert not list((tmp_path / "ft").glob("*.pt"))


def test_fine_tuning_starts_from_the_checkpoint_weights(
    cli, smoke: SmokeRun, tmp_path: Path
) -> None:
    import torch

    from nmt.checkpoint import load_checkpoint

    code, _, err = cli(
        "train",
        "--config",
        SMOKE,
        "--run-dir",
        tmp_path / "ft",
        "--init",
        smoke.run / "best.pt",
        *smoke.sets,
        "--set",
        "train.max_steps=1",
        "--set",
        "train.lr=1e-12",
        "--set",
        "train.warmup_steps=0",
        "--set",
        "train.valid_bleu=false",
    )
    assert code in (0, None), err
    start, tuned = (
        load_checkpoint(smoke.run / "best.pt"),
        load_checkpoint(tmp_path / "ft" / "last.pt"),
    )
    # a new run: its own step count, optimizer and schedule
    assert tuned["train_state"]["step"] == 1
    assert all(torch.allclose(t, tuned["model"][k], atol=1e-6) for k, t in start["model"].items())
    env = json.loads((tmp_path / "ft" / "env.json").read_text())["sessions"][-1]
    assert env["init_from"] == str(smoke.run / "best.pt") and env["start_step"] == 0


def test_init_and_resume_together_are_refused(cli, smoke: SmokeRun, run_copy: Path) -> None:
    code, _, err = cli(
        "train",
        "--config",
        SMOKE,
        "--run-dir",
        run_copy,
        "--resume",
        "--init",
        smoke.run / "best.pt",
        *smoke.sets,
    )
    assert_one_error_line(code, err, "--init", "--resume")


def test_evaluate_with_a_prepared_dir_of_another_tokenizer(
    cli, smoke: SmokeRun, other_prepared: Path
) -> None:
    code, _, err = cli(
        "evaluate", "--checkpoint", smoke.run / "best.pt", "--prepared-dir", other_prepared
    )
    assert_one_error_line(code, err, "different tokenizer", other_prepared)


def test_train_on_a_prepared_dir_of_another_format_version(
    cli, smoke: SmokeRun, tmp_path: Path
) -> None:
    import shutil

    prepared = Path(shutil.copytree(smoke.prepared, tmp_path / "prepared"))
    manifest = json.loads((prepared / "manifest.json").read_text())
    manifest["version"] += 1
    (prepared / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = cli(
        "train",
        "--config",
        SMOKE,
        "--run-dir",
        tmp_path / "run",
        "--set",
        f"data.prepared_dir={prepared}",
    )
    assert_one_error_line(
        code, err, prepared / "manifest.json", f"v{manifest['version']}", "nmt prepare"
    )


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


def test_evaluate_empty_files(cli, tmp_path: Path) -> None:
    hyp, ref = write(tmp_path / "hyp.txt", ""), write(tmp_path / "ref.txt", "")
    code, _, err = cli("evaluate", "--hyp", hyp, "--ref", ref)
    assert_one_error_line(code, err, ref, "empty")


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


@pytest.mark.parametrize(
    "setting, names",
    [
        ("model.heads=3", ["model.heads", "3 heads do not divide model.d_model=64"]),
        ("train.lr=-1", ["train.lr", "must be > 0.0"]),
        ("train.max_steps=ten", ["train.max_steps", "expected int"]),
    ],
)
def test_train_with_a_bad_setting(
    cli, smoke: SmokeRun, tmp_path: Path, setting: str, names: list[str]
) -> None:
    code, _, err = cli(
        "train", "--config", SMOKE, "--run-dir", tmp_path / "run", *smoke.sets, "--set", setting
    )
    assert_one_error_line(code, err, *names)
    assert not (tmp_path / "run").exists()


def test_bleu_by_source_length_buckets() -> None:
    from nmt.metrics import bleu_by_length

    short = "a b c d e"  # 5 words
    long = " ".join("w" * (i % 7 + 1) for i in range(30))  # 30 words
    srcs = [short, short, long, long]
    refs = [
        "Ein Hund rennt im Park.",
        "Zwei Kinder spielen im Sand.",
        "Ein Mann fährt mit dem Rad den Berg hinab.",
        "Eine Frau liest ein Buch im Garten unter einem Baum.",
    ]
    hyps = [refs[0], refs[1], "Völlig anders.", "Nichts davon stimmt hier."]
    buckets = bleu_by_length(srcs, hyps, refs)
    assert [(b["source_words"], b["sentences"]) for b in buckets] == [("1-10", 2), ("26+", 2)]
    assert buckets[0]["bleu"] == 100.0 and buckets[1]["bleu"] < 10.0


def test_paper_style_bleu_lowercases_and_moses_tokenizes(cli, tmp_path: Path) -> None:
    from nmt.metrics import paper_bleu, score_all

    # case and detached punctuation do not count against
    # a hypothesis (Moses splits "Rad." and "(links)")
    refs = ["Ein Mann fährt mit dem Rad (links) nach Hause.", "Zwei Hunde spielen im Schnee."]
    hyps = ["ein mann fährt mit dem rad ( links ) nach hause .", "zwei Hunde spielen im Schnee ."]
    m = score_all(hyps, refs, "de")
    assert m["bleu_paper"]["score"] == 100.0 and m["bleu"]["score"] < 100.0
    assert "bleu_paper" not in score_all(hyps, refs)
    # Moses knows German abbreviations: "z.B." is one token (13a makes four of it, all matching): 10
    # tokens, not 13
    p = paper_bleu(
        ["er sagt z.B. dass eine Katze im Garten sitzt."],
        ["Er sagt z.B. dass ein Hund im Park rennt."],
        "de",
    )
    assert (
        "hyp_len = 10 ref_len = 10" in p["text"]
        and p["score"]
        < score_all(
            ["er sagt z.B. dass eine Katze im Garten sitzt."],
            ["Er sagt z.B. dass ein Hund im Park rennt."],
        )["bleu_lc"]["score"]
    )
    ref_file, hyp_file = (
        write(tmp_path / "ref.txt", "\n".join(refs) + "\n"),
        write(tmp_path / "hyp.txt", "\n".join(hyps) + "\n"),
    )
    code, out, err = cli("evaluate", "--hyp", hyp_file, "--ref", ref_file, "--lang", "de")
    assert code in (0, None) and err == "", err
    assert "paper-style BLEU (lowercased, Moses-tokenized): 100.00" in out


def test_plot_learning_curves_of_a_run(cli, smoke: SmokeRun, tmp_path: Path) -> None:
    from PIL import Image

    code, out, err = cli("plot", smoke.run, "--output", tmp_path / "curves.png")
    assert code in (0, None), err
    assert out.strip() == str(tmp_path / "curves.png")
    with Image.open(tmp_path / "curves.png") as image:
        assert image.format == "PNG" and image.size == (1500, 800)


def test_plot_of_a_folder_that_is_not_a_run(cli, tmp_path: Path) -> None:
    code, _, err = cli("plot", tmp_path)
    assert_one_error_line(code, err, tmp_path / "metrics.jsonl")


def test_plot_without_matplotlib_says_how_to_install_it(
    cli, smoke: SmokeRun, tmp_path: Path, monkeypatch
) -> None:
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    code, _, err = cli("plot", smoke.run, "--output", tmp_path / "c.png")
    assert_one_error_line(code, err, "pip install 'nmt[plot]'")
    assert not (tmp_path / "c.png").exists()


# --- decoding options, sweep, average ---


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


def test_sweep_grid_tries_the_stopping_rules_only_with_a_beam() -> None:
    from nmt.sweep import grid

    assert grid([1, 2], [0.6], [0], [False, True]) == [
        (1, 0.6, 0, False),
        (2, 0.6, 0, False),
        (2, 0.6, 0, True),
    ]
    assert grid([1], [0.6, 1.0], [0, 2], [True, False]) == [(1, 0.6, 0, True), (1, 0.6, 2, True)]


def test_sweep_scores_a_grid_on_valid_and_agrees_with_evaluate(
    cli, smoke: SmokeRun, run_copy: Path, tmp_path: Path
) -> None:
    out_json = tmp_path / "sweep.json"
    code, out, err = cli(
        "sweep",
        "--checkpoint",
        run_copy / "best.pt",
        "--beam",
        "1,2",
        "--alpha",
        "0,1.0",
        "-o",
        out_json,
    )
    assert code in (0, None), err
    rows = json.loads(out_json.read_text())["rows"]
    # beam 1: one alpha
    assert [(r["beam"], r["alpha"]) for r in rows] == [(1, 0.0), (2, 0.0), (2, 1.0)]
    best = max(rows, key=lambda r: r["bleu"])
    assert f"best on valid: --beam {best['beam']} --alpha {best['alpha']}" in out
    code, out, err = cli(
        "evaluate",
        "--checkpoint",
        run_copy / "best.pt",
        "--split",
        "valid",
        "--beam",
        "2",
        "--alpha",
        "1.0",
        "--json",
    )
    assert code in (0, None), err
    assert json.loads(out)["metrics"]["bleu"]["score"] == rows[2]["bleu"]


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--beam", "0,2"),
        ("--alpha", "0.6,x"),
        ("--no-repeat-ngram", "-1"),
        ("--early-exit", "no,maybe"),
    ],
)
def test_sweep_with_a_bad_grid(cli, smoke: SmokeRun, flag: str, value: str) -> None:
    code, _, err = cli("sweep", "--checkpoint", smoke.run / "best.pt", flag, value)
    assert code == 2
    assert_one_error_line(code, err, flag)


def test_average_the_last_checkpoints_of_a_run_and_evaluate_it(
    cli, smoke: SmokeRun, run_copy: Path
) -> None:
    code, out, err = cli("average", "--run-dir", run_copy, "--last", "2")
    assert code in (0, None), err
    assert "averaged 2 checkpoints (steps 100, 200)" in out
    averaged = run_copy / "average-last-2.pt"
    code, out, err = cli(
        "evaluate", "--checkpoint", averaged, "--split", "valid", "--beam", "1", "--json"
    )
    assert code in (0, None), err
    assert json.loads(out)["decode"]["no_repeat_ngram"] == 0


@pytest.mark.parametrize(
    "args,names",
    [
        ([], ["--run-dir"]),
        (["{run}/best.pt"], ["--output"]),
        (["--run-dir", "{run}", "--last", "9"], ["kept", "train.keep_last"]),
        (["--run-dir", "{run}"], ["--last N", "--best N"]),
    ],
)
def test_average_bad_requests(cli, smoke: SmokeRun, args: list[str], names: list[str]) -> None:
    code, _, err = cli("average", *[a.format(run=smoke.run) for a in args])
    assert_one_error_line(code, err, *names)


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

    assert repeats(translate_lines(tr, lines, beam=2, alpha=0.6)) > 0
    assert repeats(translate_lines(tr, lines, beam=2, alpha=0.6, no_repeat_ngram=2)) == 0
    assert repeats(translate_lines(tr, lines, beam=1, alpha=0.6, no_repeat_ngram=2)) == 0


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


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_bf16_and_int8_weights_translate_like_float32(smoke: SmokeRun, precision: str) -> None:
    import torch
    from torch import nn
    from torch.ao.nn.quantized.dynamic import Linear as QLinear

    from nmt.data import read_lines
    from nmt.translate import load_translator, translate_lines

    fp32, low = (
        load_translator(smoke.run / "best.pt", "cpu", "fp32"),
        load_translator(smoke.run / "best.pt", "cpu", precision),
    )
    assert (fp32.precision, low.precision) == ("fp32", precision)
    assert all(p.dtype == torch.float32 for p in fp32.model.parameters())
    if precision == "bf16":
        assert all(p.dtype == torch.bfloat16 for p in low.model.parameters())
        # decoding pads rows for oneDNN's kernels
        assert (low.model.row_multiple, fp32.model.row_multiple) == (64, 1)
    else:
        n_linear = sum(isinstance(m, nn.Linear) for m in fp32.model.modules())
        assert n_linear > 0 and sum(isinstance(m, QLinear) for m in low.model.modules()) == n_linear
        assert not any(type(m) is nn.Linear for m in low.model.modules())
    src = read_lines(smoke.prepared / "valid.src.txt")[:100]
    for beam in (1, 2):
        a = [h[0].tokens for h in translate_lines(fp32, src, beam, 0.6)]
        b = [h[0].tokens for h in translate_lines(low, src, beam, 0.6)]
        # most outputs are identical: rounding flips close calls of this tiny model, while wrong
        # weights would leave almost none the same
        assert sum(x == y for x, y in zip(a, b)) >= 50


def test_evaluate_keeps_the_results_of_each_precision_apart(
    cli, smoke: SmokeRun, tmp_path: Path
) -> None:
    import torch

    from nmt.precision import decode_precision

    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes((smoke.run / "best.pt").read_bytes())
    # bf16 on a CPU with bf16 instructions, else fp32
    default = decode_precision(torch.device("cpu"), "auto")
    for precision in ("auto", "fp32", "bf16", "int8"):
        code, out, err = cli(
            "evaluate",
            "--checkpoint",
            run / "best.pt",
            "--split",
            "valid",
            "--beam",
            "1",
            "--alpha",
            "0.6",
            "--device",
            "cpu",
            "--precision",
            precision,
            "--json",
        )
        assert code in (0, None), err
        assert json.loads(out)["precision"] == (default if precision == "auto" else precision)
    other = "fp32" if default == "bf16" else "bf16"  # the default is not named; the others are
    assert sorted(p.name for p in run.glob("valid.*.json")) == sorted(
        [
            "valid.best.beam1.alpha0.6.json",
            f"valid.best.beam1.alpha0.6.{other}.json",
            "valid.best.beam1.alpha0.6.int8.json",
        ]
    )


def test_unknown_precision_is_one_error_line(cli, smoke: SmokeRun) -> None:
    code, _, err = cli(
        "translate", "--checkpoint", smoke.run / "best.pt", "--precision", "fp8", stdin=b"a\n"
    )
    assert code == 2
    assert_one_error_line(code, err, "--precision fp8", "auto, fp32, bf16, int8")


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


def test_weighted_corpora_through_the_cli(cli, make_corpus, tmp_path: Path) -> None:
    """Two corpora, the second of weight 0.5: prepare counts each, training says what an epoch
    holds, a resume with another weight is refused, bad corpora are one error line."""
    main = make_corpus("main")
    extra = make_corpus("extra", splits={"bt": toy_pairs(40, seed=9)})
    out, run = tmp_path / "out", tmp_path / "run"

    def sets(weight: object) -> list[str]:
        train = f"data.train=[train, {{stem: bt, source: {extra}, weight: {weight}}}]"
        pairs = [train, "data.corpus=files", f"data.source={main}", f"data.prepared_dir={out}"]
        pairs += ["data.vocab_size=60", "train.max_steps=4", "train.valid_bleu=false"]
        return [x for s in pairs for x in ("--set", s)]

    code, _, err = cli("prepare", "--config", SMOKE, *sets(0.5))
    assert code in (0, None), err
    assert "train: 160 pairs read, 160 kept" in err
    assert f"  {extra}/bt: 40 pairs read, 40 kept" in err
    code, _, err = cli("train", "--config", SMOKE, "--run-dir", run, *sets(0.5))
    assert code in (0, None), err
    assert f"an epoch: 140 (train 120 x 1, {extra}/bt 40 x 0.5)" in err
    code, _, err = cli("train", "--config", SMOKE, "--run-dir", run, "--resume", *sets(1))
    assert_one_error_line(code, err, run / "last.pt", "data.train")
    code, _, err = cli("prepare", "--config", SMOKE, *sets(0))
    assert_one_error_line(code, err, "data.train[1].weight", "must be > 0")
    (extra / "bt.de").unlink()
    code, _, err = cli("prepare", "--config", SMOKE, *sets(0.5))
    assert_one_error_line(code, err, extra / "bt.de")


# --- usage errors, outputs checked before the work, OS errors on the way out ---


@pytest.mark.parametrize(
    "args, names",
    [
        (["translate", "--checkpoint", "x", "--beam", "0"], ["'--beam'", "1"]),
        (["translate", "--checkpoint", "x", "--alpha", "-1"], ["'--alpha'", "0"]),
        (["translate", "--checkpoint", "x", "--workers", "0"], ["'--workers'", "1"]),
        (["translate", "--checkpoint", "x", "--buffer", "0"], ["--buffer 0", "1 or more"]),
        (["translate", "--checkpoint", "x", "--beam", "two"], ["'--beam'", "integer"]),
        (["translate", "--checkpoint", "x", "--topk", "3"], ["--topk", "--sample"]),
        (["translate", "--checkpoint", "x", "--bogus"], ["--bogus"]),
        (["train"], ["--config"]),
        (["frobnicate"], ["frobnicate"]),
        (["prepare", "--config", SMOKE, "--set", "data.src_lang=[en"], ["--set", "[en", "YAML"]),
        (["evaluate", "--hyp", "h", "--ref", "r", "--lang", "xx"], ["--lang xx", "de"]),
    ],
)
def test_usage_errors_are_one_line_with_exit_status_2(cli, args: list, names: list) -> None:
    code, _, err = cli(*args)
    assert code == 2
    assert_one_error_line(code, err, *names)


@pytest.mark.parametrize("command", ["prepare", "train", "translate", "evaluate", "sweep"])
def test_help_fits_an_80_column_terminal(command: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "nmt", command, "--help"],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "80"}, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in proc.stdout
    assert all(flag in proc.stdout for flag in ("--config" if command in ("prepare", "train")
               else "--checkpoint",))  # fmt: skip


def test_outputs_are_checked_before_any_work(cli, tmp_path: Path, monkeypatch) -> None:
    """The checkpoint does not even exist: the output is refused first."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    real_access = os.access  # root may write anywhere: the folder reads as read-only for all

    def access(path, mode, *args, **kwargs):
        return False if Path(path) == locked else real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    try:
        for output, names in (
            (locked / "out.txt", [locked, "permission denied"]),
            (tmp_path, [tmp_path, "folder"]),
            (fifo, [fifo, "FIFO"]),
            ("/dev/full", ["/dev/full", "device"]),
            (tmp_path / "file.txt" / "below", [tmp_path / "file.txt", "not a folder"]),
        ):
            (tmp_path / "file.txt").write_text("x")
            for args in (
                ["translate", "--checkpoint", tmp_path / "none.pt", "-o", output],
                ["sweep", "--checkpoint", tmp_path / "none.pt", "-o", output],
                ["average", tmp_path / "none.pt", "-o", output],
                ["plot", tmp_path / "no_run", "-o", output],
            ):
                code, _, err = cli(*args, stdin=b"a\n")
                assert_one_error_line(code, err, *names)
        assert stat.S_ISFIFO(fifo.stat().st_mode)  # still a FIFO
    finally:
        locked.chmod(0o700)


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


def test_a_full_disk_behind_stdout_is_one_error_line(smoke: SmokeRun, tmp_path: Path) -> None:
    for args in (
        ["translate", "--checkpoint", smoke.run / "best.pt"],
        ["evaluate", "--hyp", smoke.prepared / "valid.tgt.txt", "--ref",
         smoke.prepared / "valid.tgt.txt", "--json"],
    ):  # fmt: skip
        with open("/dev/full", "w") as full:
            proc = subprocess.run(
                [sys.executable, "-m", "nmt", *map(str, args)], input=(SHORT + "\n") * 50,
                stdout=full, stderr=subprocess.PIPE, text=True, cwd=tmp_path, timeout=300,
            )  # fmt: skip
        assert_one_error_line(proc.returncode, proc.stderr, "stdout", "No space left on device")


def test_a_reader_that_goes_away_is_one_error_line(smoke: SmokeRun, tmp_path: Path) -> None:
    """`nmt translate ... | head -c 100`: the output was cut, so the exit status says so."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "nmt", "translate", "--checkpoint", smoke.run / "best.pt",
         "--buffer", "20", "--beam", "1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    proc.stdin.write(((SHORT + "\n") * 2000).encode())
    proc.stdin.close()
    assert len(proc.stdout.read(100)) == 100
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=300)
    assert_one_error_line(proc.returncode, err, "stdout", "pipe")


def test_a_full_disk_under_an_output_file_keeps_the_old_file(
    cli, smoke: SmokeRun, tmp_path: Path, fail_fsync
) -> None:
    out = tmp_path / "out.txt"
    out.write_text("old\n")
    fail_fsync()
    code, _, err = cli("translate", "--checkpoint", smoke.run / "best.pt", "-o", out, stdin=b"a\n")
    assert_one_error_line(code, err, out, "No space left on device")
    assert out.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_dev_stdout_goes_to_stdout_and_dev_null_nowhere(cli, smoke: SmokeRun) -> None:
    ckpt = smoke.run / "best.pt"
    code, out, err = cli("translate", "--checkpoint", ckpt, "-o", "/dev/stdout", stdin=b"A dog.\n")
    assert code == 0 and len(out.splitlines()) == 1, err
    code, out, err = cli("sweep", "--checkpoint", ckpt, "--beam", "1", "--alpha", "0.6", "-o",
                         "/dev/null")  # fmt: skip
    assert code == 0 and "best on valid" in out and '"best"' not in out, err


def test_average_refuses_a_symlink_onto_training_files(
    cli, smoke: SmokeRun, run_copy: Path, tmp_path: Path
) -> None:
    link = tmp_path / "avg.pt"
    link.symlink_to(run_copy / "last.pt")
    before = (run_copy / "last.pt").read_bytes()
    code, _, err = cli("average", run_copy / "best.pt", run_copy / "last.pt", "-o", link)
    assert_one_error_line(code, err, link, "last.pt belongs to training")
    assert (run_copy / "last.pt").read_bytes() == before


def test_resume_from_a_checkpoint_written_before_newer_data_keys(
    cli, smoke: SmokeRun, run_copy: Path
) -> None:
    """A checkpoint whose config lacks keys added since (they count as their defaults) resumes."""
    from nmt.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(run_copy / "last.pt")
    for key in ("spm_sample", "workers", "tokenizer"):
        del ckpt["config"]["data"][key]
    for name in ("last.pt", "best.pt"):
        save_checkpoint(run_copy / name, {k: v for k, v in ckpt.items() if k not in ("path",
                        "format", "version")})  # fmt: skip
    step = ckpt["train_state"]["step"]
    code, _, err = cli(
        "train", "--config", SMOKE, "--run-dir", run_copy, "--resume", *smoke.sets,
        "--set", f"train.max_steps={step + 2}", "--set", "train.threads=1",
    )  # fmt: skip
    assert code == 0, err
    assert load_checkpoint(run_copy / "last.pt")["train_state"]["step"] == step + 2
