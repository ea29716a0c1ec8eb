"""Properties of the Transformer a person can check:
causality, padding invariance, cache = recompute."""

import pytest
import torch

from nmt.models.transformer import Attention, Transformer
from nmt.tokenizer import BOS, PAD

V = 40


def tiny(**kw) -> Transformer:
    torch.manual_seed(0)
    args = dict(layers=2, d_model=32, heads=4, ffn=64, dropout=0.0, max_positions=64)
    args.update(kw)
    return Transformer(V, V, **args).eval()


def batch(b=3, s=7, t=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, V, (b, s), generator=g)
    src[1, 5:] = PAD  # a shorter sentence
    tgt = torch.randint(4, V, (b, t), generator=g)
    tgt[:, 0] = BOS
    return src, src == PAD, tgt


VARIANTS = [
    dict(pre_norm=True),
    dict(pre_norm=False),
    dict(learned_positions=True),
    dict(share_embeddings=False, tie_output=False),
]


@pytest.mark.parametrize("kw", VARIANTS)
def test_output_shape(kw):
    src, mask, tgt = batch()
    assert tiny(**kw)(src, mask, tgt).shape == (3, 6, V)


@pytest.mark.parametrize("kw", VARIANTS)
def test_decoder_is_causal(kw):
    """Changing target token k leaves the logits of
    positions < k unchanged, and changes position k."""
    model = tiny(**kw)
    src, mask, tgt = batch()
    before = model(src, mask, tgt)
    changed = tgt.clone()
    changed[:, 3] = (changed[:, 3] + 1 - 4) % (V - 4) + 4
    after = model(src, mask, changed)
    torch.testing.assert_close(before[:, :3], after[:, :3])
    assert not torch.allclose(before[:, 3], after[:, 3])


@pytest.mark.parametrize("kw", VARIANTS)
def test_extra_source_padding_changes_nothing(kw):
    model = tiny(**kw)
    src, mask, tgt = batch()
    padded = torch.cat([src, torch.full((3, 4), PAD)], dim=1)
    torch.testing.assert_close(
        model(src, mask, tgt), model(padded, padded == PAD, tgt), atol=1e-5, rtol=1e-5
    )


def test_padding_is_what_is_masked():
    """Sanity check of the test above: changing a *real* source token does change the output."""
    model = tiny()
    src, mask, tgt = batch()
    other = src.clone()
    other[0, 0] = (other[0, 0] + 1 - 4) % (V - 4) + 4
    assert not torch.allclose(model(src, mask, tgt)[0], model(other, mask, tgt)[0])
    # other rows unaffected
    torch.testing.assert_close(model(src, mask, tgt)[2], model(other, mask, tgt)[2])


def test_shared_and_tied_embeddings_are_one_tensor():
    model = tiny(share_embeddings=True, tie_output=True)
    assert model.src_embed.weight is model.tgt_embed.weight is model.output.weight
    untied = tiny(share_embeddings=False, tie_output=False)
    assert untied.src_embed.weight is not untied.tgt_embed.weight
    assert untied.output.weight is not untied.tgt_embed.weight


def test_dropout_only_in_training_mode():
    model = tiny(dropout=0.5)
    src, mask, tgt = batch()
    torch.testing.assert_close(model(src, mask, tgt), model(src, mask, tgt))
    model.train()
    assert not torch.allclose(model(src, mask, tgt), model(src, mask, tgt))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_dropout_drops_the_asked_share_and_keeps_the_mean(dtype):
    from nmt.models.dropout import Dropout

    torch.manual_seed(0)
    drop = Dropout(0.3).train()
    # an element count that is not a multiple of 4 (four draws per 64 bits)
    x = torch.ones(999, 1001, dtype=dtype)
    y = drop(x)
    assert y.dtype == dtype
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.3) < 0.003  # 1M draws: the standard error is 0.0005
    # kept values are scaled up: the mean is unchanged
    assert abs(y.float().mean().item() - 1.0) < 0.005
    rows, cols = (y == 0).float().mean(1), (y == 0).float().mean(0)
    # no row or column pattern: each ~1000 draws, sd 0.0145
    assert rows.std() < 0.03 and cols.std() < 0.03
    assert not torch.equal(y, drop(x))  # a new mask each call
    assert torch.equal(drop.eval()(x), x)
    x.requires_grad_()
    drop.train()(x).sum().backward()
    values = x.grad.float().unique().tolist()
    assert (
        len(values) == 2
        and values[0] == 0.0
        and values[1] == pytest.approx(1 / 0.7, rel=1e-2 if dtype == torch.bfloat16 else 1e-4)
    )


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("autocast", [False, True])
def test_training_on_a_cpu_attends_as_sdpa_does(monkeypatch, causal, autocast):
    """Training on a CPU writes attention out (scores, softmax, weighted sum) where SDPA's CPU
    kernels are the slower: in bf16 always, in fp32 with dropout. Its output and gradients are
    SDPA's, with or without autocast."""

    torch.manual_seed(0)
    attn = Attention(32, 4, dropout=0.0).train()
    x = torch.randn(3, 6, 32)
    k, v = (torch.randn(3, 4, 6, 8) for _ in range(2))
    mask = (
        None
        if causal
        else torch.tensor([[True] * 6, [True] * 4 + [False] * 2, [True] * 6])[:, None, None, :]
    )

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        q = attn._split(attn.q(x))
        assert attn._explicit(q) == autocast  # fp32 without dropout: SDPA; bf16: written out
        with torch.no_grad():
            assert not attn._explicit(q)  # decoding and validation: SDPA

    def run(explicit: bool):
        monkeypatch.setattr(Attention, "_explicit", lambda self, q: explicit)
        attn.zero_grad(set_to_none=True)
        xs, ks, vs = (t.clone().requires_grad_() for t in (x, k, v))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = attn(xs, ks, vs, mask=mask, causal=causal)
        (y.float() * torch.linspace(-1, 1, 32)).sum().backward()
        return [y.float(), xs.grad, ks.grad, vs.grad, attn.q.weight.grad.clone()]

    fast, sdpa = run(True), run(False)
    tol = dict(atol=2e-2, rtol=2e-2) if autocast else dict(atol=1e-5, rtol=1e-5)
    for a, b in zip(fast, sdpa):
        torch.testing.assert_close(a, b, **tol)


def test_attention_dropout_on_a_cpu_drops_weights_in_training_only():

    torch.manual_seed(0)
    attn = Attention(32, 4, dropout=0.5)
    plain = Attention(32, 4, dropout=0.0)  # the same weights, no dropout: in training mode
    plain.load_state_dict(attn.state_dict())
    x, k, v = torch.randn(2, 5, 32), torch.randn(2, 4, 5, 8), torch.randn(2, 4, 5, 8)
    torch.testing.assert_close(attn.eval()(x, k, v), plain.train()(x, k, v))
    attn.train()
    assert attn._explicit(attn._split(attn.q(x))) and not torch.allclose(
        attn(x, k, v), attn(x, k, v)
    )
    torch.manual_seed(1)
    first = attn(x, k, v)
    torch.manual_seed(1)
    # the masks come from torch's generator: seeded runs repeat
    torch.testing.assert_close(attn(x, k, v), first)


def test_encoder_keys_and_values_are_kept_contiguous_so_a_step_reads_them_without_a_copy():
    """The cross-attention keys/values come out of one projection split in two, a strided view; a
    step reads them as (B * H, S, D/H), which of a strided view is a copy per layer and step.
    start() keeps them contiguous, in every dtype (fp32 weights keep their dtype, so nothing else
    would copy them), and the step reads them in place."""
    for dtype in (torch.float32, torch.bfloat16):
        model = tiny().to(dtype)
        src, mask, tgt = batch()
        state = model.start(src, mask)
        for k, v in state.cross:
            b, h, s, dh = k.shape
            assert k.is_contiguous() and v.is_contiguous()
            assert k.reshape(b * h, s, dh).data_ptr() == k.data_ptr()  # a view, not a copy
        logits, _ = model.step(tgt[:, 0], state)
        assert torch.isfinite(logits).all()


def test_a_bf16_model_decodes_on_the_cpu_with_bf16_attention_caches_and_matches_teacher_forcing():
    """bf16 weights: the keys/values decoding keeps are bf16 on a CPU too (read by
    scaled_dot_product_attention's CPU kernel, half the bytes of fp32 caches); each step's logits
    are still those of the teacher-forced bf16 pass, within bf16 rounding."""
    model = tiny().to(torch.bfloat16)
    src, mask, tgt = batch()
    full = model(src, mask, tgt).float()
    state = model.start(src, mask)
    assert all(t.dtype == torch.bfloat16 for kv in state.cross for t in kv)
    for t in range(tgt.size(1)):
        logits, state = model.step(tgt[:, t], state)
        assert (
            all(c.dtype == torch.bfloat16 for kv in state.past for c in kv)
            and logits.dtype == torch.bfloat16
        )
        torch.testing.assert_close(logits.float(), full[:, t], atol=0.1, rtol=0.05)
    # the tolerance is meaningful: another target prefix gives logits well outside it
    other = model(src, mask, tgt.roll(1, dims=1)).float()
    assert (other[:, -1] - logits.float()).abs().max() > 0.5


def test_under_autocast_decoding_keeps_the_caches_in_the_layers_dtype():
    """Validation during CPU training decodes under bf16 autocast: the
    caches stay in the dtype the projections make them in (bf16, as with
    bf16 weights), and greedy steps still match teacher forcing."""
    model = tiny()
    src, mask, tgt = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full = model(src, mask, tgt).float()
        state = model.start(src, mask)
        assert all(t.dtype == torch.bfloat16 for kv in state.cross for t in kv)
        for t in range(tgt.size(1)):
            logits, state = model.step(tgt[:, t], state)
            torch.testing.assert_close(logits.float(), full[:, t], atol=0.1, rtol=0.05)
        assert all(c.dtype == torch.bfloat16 for kv in state.past for c in kv)
