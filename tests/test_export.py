"""`nmt export --format ctranslate2`: every Transformer variant nmt trains converts, and CTranslate2
then scores and translates as nmt does: the same log-probabilities for given translations, the same
greedy tokens, and, on the trained smoke model, the same beam-5 tokens under the same length limit
and stopping rule. RNNs, ensembles and a missing ctranslate2 are one error line each."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import ctranslate2
import pytest
import torch
from cli_helpers import assert_one_error_line
from conftest import SmokeRun

from nmt.checkpoint import load_checkpoint, save_checkpoint
from nmt.config import config_from_dict
from nmt.data import read_lines
from nmt.models import build_model
from nmt.search import decode_corpus
from nmt.tokenizer import BOS, EOS, PAD, Tokenizer
from nmt.translate import Translator, encode_lines, load_translator

VARIANTS = {
    "pre-norm, sinusoidal, shared": {},
    "post-norm": {"norm": "post"},
    "learned positions, 3+1 layers": {"positions": "learned", "layers": 3, "dec_layers": 1},
    "separate vocabularies and embeddings": {"share_embeddings": False, "tie_output": False},
}


def variant(smoke: SmokeRun, other_prepared: Path, folder: Path, model: dict) -> Path:
    """A checkpoint of the smoke run's format with another model section and random weights; with
    separate embeddings, also separate vocabularies (the smoke model's and another's)."""
    ckpt = load_checkpoint(smoke.run / "best.pt")
    cfg = dict(ckpt["config"])
    cfg["model"] = {**cfg["model"], **model}
    tok = Tokenizer.from_state(ckpt["tokenizer"], what="smoke")
    if model.get("share_embeddings") is False:
        other = (other_prepared / "spm.model").read_bytes()
        tok = Tokenizer(tok.to_state()["src"], other, what="separate")
        cfg["data"] = {**cfg["data"], "joint_vocab": False}
    config = config_from_dict(cfg, origin="variant")
    torch.manual_seed(len(folder.name))
    net = build_model(config.model, tok.src_vocab_size, tok.tgt_vocab_size)
    for p in net.parameters():  # weights well away from init, so that a swapped one shows
        p.data.add_(torch.randn_like(p) * 0.05)
    path = folder / "model.pt"
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        path, {**ckpt, "config": cfg, "model": net.state_dict(), "tokenizer": tok.to_state()}
    )
    return path


def export(cli, checkpoint: Path, out: Path, *extra: str) -> ctranslate2.Translator:
    code, stdout, stderr = cli("export", "--checkpoint", checkpoint, "--output", out, *extra)
    assert code == 0, stderr
    assert str(out) in stdout
    return ctranslate2.Translator(str(out), device="cpu", compute_type="float32")


def sources(tr: Translator, smoke: SmokeRun, n: int) -> list[list[int]]:
    return encode_lines(tr, read_lines(smoke.prepared / "valid.src.txt")[:n])


# what nmt's search does by its nature, asked of CTranslate2: never emit BOS or PAD, rank by
# log-probability (alpha 0; CTranslate2's length penalty is not GNMT's), let EOS come first
SAME_AS_NMT = dict(
    suppress_sequences=[["<s>"], ["<pad>"]], length_penalty=0.0, min_decoding_length=0
)


def ct2_tokens(ct2: ctranslate2.Translator, tr: Translator, src: list[list[int]], beam: int):
    """CTranslate2's best output per sentence, as nmt's pieces, under nmt's length limit: nmt's
    limit counts the EOS it ends with, CTranslate2's the tokens before it."""
    d, out = tr.cfg.decode, []
    for ids in src:
        pieces = tr.tok.src_pieces(ids) + ["</s>"]  # nmt appends EOS to every source
        limit = min(int(len(pieces) * d.max_len_a) + d.max_len_b, tr.cfg.model.max_positions - 1)
        r = ct2.translate_batch(
            [pieces], beam_size=beam, max_decoding_length=limit - 1, **SAME_AS_NMT
        )
        out.append(r[0].hypotheses[0])
    return out


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_scores_and_decodes_greedily_as_nmt_does(
    cli, smoke: SmokeRun, other_prepared: Path, tmp_path: Path, name: str
) -> None:
    checkpoint = variant(smoke, other_prepared, tmp_path / "ckpt", VARIANTS[name])
    ct2 = export(cli, checkpoint, tmp_path / "ct2")
    tr = load_translator(checkpoint, "cpu", "fp32", workers=1)
    src = sources(tr, smoke, 20)
    # the log-probability of every token of a given translation
    tgt = [ids[:6] for ids in tr.tok.encode_tgt(read_lines(smoke.prepared / "valid.tgt.txt")[:20])]
    scored = ct2.score_batch(
        [tr.tok.src_pieces(s) + ["</s>"] for s in src], [tr.tok.tgt_pieces(t) for t in tgt]
    )
    for s, t, result in zip(src, tgt, scored):
        x = torch.tensor([[*s, EOS]])  # as nmt batches a source
        with torch.no_grad():
            lp = tr.model(x, x == PAD, torch.tensor([[BOS, *t]])).log_softmax(-1)[0]
        ours = lp[torch.arange(len(t) + 1), torch.tensor([*t, EOS])].tolist()
        assert result.log_probs == pytest.approx(ours, abs=2e-4)
    greedy = decode_corpus(tr.model, src, replace(tr.settings(), beam=1), tr.device)
    assert ct2_tokens(ct2, tr, src, 1) == [tr.tok.tgt_pieces(h[0].tokens) for h in greedy]


def test_the_smoke_model_translates_the_same_with_ctranslate2_greedy_and_beam_5(
    cli, smoke: SmokeRun, tmp_path: Path
) -> None:
    """The trained smoke model, exported as it is: its greedy and beam-5 translations of the valid
    set are CTranslate2's token for token (beam search ranked by log-probability, alpha 0:
    CTranslate2's length penalty is not GNMT's; the stopping rule is the default of both)."""
    ct2 = export(cli, smoke.run / "best.pt", tmp_path / "ct2")
    tr = load_translator(smoke.run / "best.pt", "cpu", "fp32", workers=1)
    src = sources(tr, smoke, 100)
    for beam in (1, 5):
        settings = replace(tr.settings(), beam=beam, alpha=0.0, nbest=1, early_exit=False)
        ours = [
            tr.tok.tgt_pieces(h[0].tokens)
            for h in decode_corpus(tr.model, src, settings, tr.device)
        ]
        assert ct2_tokens(ct2, tr, src, beam) == ours
    about = json.loads((tmp_path / "ct2" / "nmt_export.json").read_text())
    assert about["source_eos"] and (tmp_path / "ct2" / about["tokenizer"][0]).exists()


def test_an_int8_export_is_smaller_and_translates(cli, smoke: SmokeRun, tmp_path: Path) -> None:
    export(cli, smoke.run / "best.pt", tmp_path / "fp32")
    export(cli, smoke.run / "best.pt", tmp_path / "fp32")  # an earlier export is replaced
    ct2 = export(cli, smoke.run / "best.pt", tmp_path / "int8", "--quantization", "int8")
    size = {q: (tmp_path / q / "model.bin").stat().st_size for q in ("fp32", "int8")}
    assert size["int8"] < 0.6 * size["fp32"]
    tr = load_translator(smoke.run / "best.pt", "cpu", "fp32", workers=1)
    out = ct2_tokens(ct2, tr, sources(tr, smoke, 10), 1)
    assert (
        all(out)
        and json.loads((tmp_path / "int8" / "nmt_export.json").read_text())["quantization"]
        == "int8"
    )


def test_what_does_not_export_is_one_error_line(
    cli, smoke: SmokeRun, tmp_path: Path, monkeypatch
) -> None:
    ckpt = str(smoke.run / "best.pt")
    code, _, err = cli("export", "--checkpoint", ckpt, "--checkpoint", ckpt, "-o", tmp_path / "e")
    assert_one_error_line(code, err, "one --checkpoint")
    code, _, err = cli("export", "--checkpoint", ckpt, "-o", tmp_path / "q", "--quantization", "x")
    assert_one_error_line(code, err, "--quantization x", "int8")
    code, _, err = cli("export", "--checkpoint", ckpt, "-o", tmp_path / "f", "--format", "onnx")
    assert_one_error_line(code, err, "--format onnx", "ctranslate2")
    rnn = load_checkpoint(ckpt)
    cfg = {**rnn["config"], "model": {**rnn["config"]["model"], "arch": "rnn", "hidden_size": 64}}
    tok = Tokenizer.from_state(rnn["tokenizer"], what="rnn")
    net = build_model(
        config_from_dict(cfg, origin="rnn").model, tok.src_vocab_size, tok.tgt_vocab_size
    )
    save_checkpoint(tmp_path / "rnn.pt", {**rnn, "config": cfg, "model": net.state_dict()})
    code, _, err = cli("export", "--checkpoint", tmp_path / "rnn.pt", "-o", tmp_path / "r")
    assert_one_error_line(code, err, "rnn.pt", "RNN")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    code, _, err = cli("export", "--checkpoint", ckpt, "-o", tmp_path / "mine")
    assert_one_error_line(code, err, "mine", "other files")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # as if it were not installed
    code, _, err = cli("export", "--checkpoint", ckpt, "-o", tmp_path / "m")
    assert_one_error_line(code, err, "pip install 'nmt[ctranslate2]'")
    assert not any((tmp_path / n).exists() for n in ("e", "q", "f", "r", "m"))
