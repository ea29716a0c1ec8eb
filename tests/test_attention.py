"""Attention for plotting: what the decoder actually used,
for the hypothesis actually returned; and the heatmaps."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from nmt.models.rnn import RNNSeq2Seq
from nmt.models.transformer import Transformer
from nmt.search import SearchSettings, decode_corpus
from nmt.tokenizer import BOS, EOS, PAD

KW = SearchSettings(max_tokens=1000, alpha=0.6, max_len_a=1.5, max_len_b=5, max_len=63)

CPU = torch.device("cpu")


def transformer() -> Transformer:
    torch.manual_seed(3)
    return Transformer(
        30, 30, layers=2, d_model=32, heads=4, ffn=64, dropout=0.0, max_positions=64
    ).eval()


def rnn() -> RNNSeq2Seq:
    torch.manual_seed(4)
    return RNNSeq2Seq(
        30, 30, cell="gru", layers=2, emb=16, hidden=32, attention="additive", dropout=0.0
    ).eval()


def sources(n: int = 9, seed: int = 5) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)  # lengths 1..12: batches hold padding
    return [
        torch.randint(4, 30, (int(torch.randint(1, 13, (1,), generator=g)),), generator=g).tolist()
        for _ in range(n)
    ]


def teacher_forced(model, src: list[int], tokens: list[int]) -> dict[str, np.ndarray]:
    """The weights of one sentence and one given output,
    recomputed in a single teacher-forced pass."""
    s = torch.tensor([src + [EOS]])
    tgt_in = torch.tensor([[BOS] + tokens])
    with torch.no_grad():
        if isinstance(model, RNNSeq2Seq):
            state, rows = model.start(s, s == PAD), []
            for t in range(tgt_in.size(1)):
                _, state, w = model._step(tgt_in[:, t], state)
                rows.append(w[0])
            return {"cross": torch.stack(rows)[None, None].numpy()}
        enc: list = []
        dec: dict = {"self": [], "cross": []}
        model.decode(tgt_in, model.encode(s, s == PAD, enc), s == PAD, dec)
    return {
        "encoder": torch.stack(enc, 1)[0].numpy(),
        **{k: torch.stack(v, 1)[0].numpy() for k, v in dec.items()},
    }


@pytest.mark.parametrize("make", [transformer, rnn], ids=["transformer", "rnn"])
@pytest.mark.parametrize("beam", [1, 4])
def test_recorded_attention_is_what_produced_the_returned_hypothesis(make, beam: int) -> None:
    """Batched search with padding, beams reordered and finished sentences
    dropped; the weights a hypothesis carries equal a fresh teacher-forced
    pass over its own tokens, and recording changes no result."""
    model, src = make(), sources()
    plain = decode_corpus(model, src, replace(KW, beam=beam), CPU)
    recorded = decode_corpus(model, src, replace(KW, beam=beam), CPU, record=True)
    assert [h[0].tokens for h in plain] == [h[0].tokens for h in recorded]
    assert [h[0].score for h in plain] == pytest.approx([h[0].score for h in recorded], abs=1e-5)
    assert any(len(h[0].tokens) > 2 for h in recorded)
    for s, hyps in zip(src, recorded):
        hyp = hyps[0]
        expected = teacher_forced(model, s, hyp.tokens)
        assert hyp.attention.keys() == expected.keys()
        for name, w in expected.items():
            assert hyp.attention[name].shape == w.shape, name
            np.testing.assert_allclose(hyp.attention[name], w, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("beam", [1, 4])
def test_recording_changes_no_output_of_a_bf16_model_on_the_cpu(beam: int) -> None:
    """bf16 weights on a CPU attend through scaled_dot_product_attention, which returns no weights:
    they are computed beside it when recorded, and the hypotheses and scores are those of decoding
    without recording, bit for bit."""
    model, src = transformer().to(torch.bfloat16), sources()
    plain = decode_corpus(model, src, replace(KW, beam=beam), CPU)
    recorded = decode_corpus(model, src, replace(KW, beam=beam), CPU, record=True)
    assert [h[0].tokens for h in plain] == [h[0].tokens for h in recorded]
    assert [h[0].score for h in plain] == [h[0].score for h in recorded]
    for hyps in recorded:
        w = hyps[0].attention["self"]
        np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("make", [transformer, rnn], ids=["transformer", "rnn"])
def test_rows_are_distributions_over_real_positions_and_self_attention_is_masked(make) -> None:
    model, src = make(), sources(12, seed=8)
    for hyps in decode_corpus(model, src, replace(KW, beam=3), CPU, record=True):
        att = hyps[0].attention
        steps = len(hyps[0].tokens) + 1  # one row per output token and EOS
        assert att["cross"].shape[2] == steps
        for name, w in att.items():
            # the source axes were cut to the real positions:
            # their rows still sum to 1, so padding had none
            np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5, err_msg=name)
            assert (w >= 0).all()
        if "self" in att:
            assert att["self"].shape[-2:] == (steps, steps)
            # nothing above the diagonal: no step saw the future
            assert not np.triu(att["self"], k=1).any()
            assert np.tril(att["self"], k=-1).any()


def test_a_model_without_attention_records_nothing() -> None:
    torch.manual_seed(0)
    plain = RNNSeq2Seq(30, 30, cell="gru", layers=1, emb=16, hidden=32, attention="none").eval()
    with pytest.raises(ValueError, match="no attention"):
        decode_corpus(plain, sources(2), replace(KW, beam=2), CPU, record=True)


# --- the heatmaps ---


def test_heatmap_pixel_sizes_follow_the_matrix() -> None:
    pytest.importorskip("matplotlib")
    import io

    from PIL import Image

    from nmt.attention import heatmaps

    rng = np.random.default_rng(0)
    # 2 layers, 3 heads, 4 x 5
    w = {"cross": rng.dirichlet(np.ones(5), size=(2, 3, 4)).astype(np.float32)}
    files = heatmaps(w, list("abcde"), list("wxyz"), list("<wxy"), layer=2)
    assert sorted(files) == ["cross.layer1.png", "cross.layer2.heads.png", "cross.layer2.png"]
    one = (110 + 5 * 28 + 70, 110 + 4 * 28 + 50)  # margins + 28 pixels per cell
    for name, size in [("cross.layer1.png", one), ("cross.layer2.heads.png", (3 * one[0], one[1]))]:
        with Image.open(io.BytesIO(files[name])) as image:
            assert image.format == "PNG" and image.size == size, name
