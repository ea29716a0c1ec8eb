"""Incremental decoding of the Transformer: one new position per step, with caches, instead of
running `Transformer.decode` over the whole prefix again at every step (the plain version, which
tests/test_transformer.py checks this against, step by step).

What a step reuses: the cross-attention keys and values of every decoder layer, computed once from
the encoder's memory (`start`); and each layer's self-attention keys and values of the earlier
positions, to which the step appends its own (causality for free: there is no future to mask).
Beam search reorders the rows of the self-attention caches lazily, in the copy that extends them
(`extend`), and keeps the cross-attention caches one row per sentence, shared by its beams (a step
reads row b for the f = rows / B consecutive rows of its beams).

Speed for bf16 on a CPU: the rows are padded (precision.padded_rows) so that oneDNN, which builds a
kernel for every new shape, sees few row counts; and attention reads bf16 caches through
scaled_dot_product_attention's CPU kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from nmt.models.recording import Recording
from nmt.precision import decode_row_multiple, padded_rows

if TYPE_CHECKING:
    from nmt.models.transformer import Attention, DecoderLayer, Transformer

KV = tuple[Tensor, Tensor]  # keys, values (rows, H, positions, D/H)


@dataclass(frozen=True)
class TransformerState:
    """What the Transformer carries between decoding steps (search.DecoderState)."""

    cross: tuple[KV, ...]  # per decoder layer, (B, H, S, D/H): one row per sentence
    mem_bias: Tensor  # (B, H, 1, S): 0 at source positions, -inf at padding; added to the scores
    past: tuple[KV, ...]  # per decoder layer, the self-attention keys/values so far (R', H, t, D/H)
    parents: Optional[Tensor]  # (rows,): row r continues row parents[r] of `past` (None: in order)
    pos: int  # the position the next step decodes
    row_multiple: int  # rows are padded for the matrix kernels (precision.padded_rows)
    recording: Optional[Recording] = None

    def reorder(self, beams: Tensor, sentences: Optional[Tensor]) -> TransformerState:
        """See search.DecoderState: the per-sentence caches move only when sentences leave."""
        cross, mem_bias = self.cross, self.mem_bias
        if sentences is not None:  # index_select: whole rows copied, 4x faster than k[sentences]
            cross = tuple(
                (k.index_select(0, sentences), v.index_select(0, sentences)) for k, v in cross
            )
            mem_bias = mem_bias.index_select(0, sentences)
        parents = beams if self.parents is None else self.parents.index_select(0, beams)
        rec = None if self.recording is None else self.recording.reorder(beams, sentences)
        return replace(self, cross=cross, mem_bias=mem_bias, parents=parents, recording=rec)


def start(model: Transformer, src: Tensor, src_pad_mask: Tensor, record: bool) -> TransformerState:
    """Encode once and compute every layer's cross-attention keys/values. With `record`, the state
    also keeps the attention weights: the encoder's ("encoder", (B, layers, H, S, S)) and, per
    step, the decoder's ("cross" (rows, layers, H, S) and "self" (rows, layers, H, t + 1))."""
    enc_weights: Optional[list] = [] if record else None
    memory = model.encode(src, src_pad_mask, enc_weights)
    # contiguous: every step views them as (B * H, S, D/H), which the projection's strided split
    # would make a copy each time
    cross = tuple(
        tuple(t.contiguous() for t in layer.cross_attn.project_kv(memory))
        for layer in model.decoder
    )
    k = cross[0][0]  # (B, H, S, D/H), in the dtype the products will run in
    mem_bias = torch.zeros(k.shape[:2] + (1, k.size(2)), dtype=k.dtype, device=k.device)
    mem_bias.masked_fill_(src_pad_mask[:, None, None, :], -float("inf"))
    empty = k[:, :, :0]
    recording = None
    if record:
        encoder = torch.stack(enc_weights, dim=1)
        recording = Recording({"encoder": encoder}, {"cross": (), "self": ()})
    # bf16 weights on a CPU: padded rows (see decode_row_multiple)
    bf16 = model.tgt_embed.weight.dtype == torch.bfloat16
    multiple = decode_row_multiple(k.device, "bf16" if bf16 else "fp32")
    past = tuple((empty, empty) for _ in model.decoder)
    return TransformerState(cross, mem_bias, past, None, 0, multiple, recording)  # type: ignore


def step(
    model: Transformer, prev: Tensor, state: TransformerState
) -> tuple[Tensor, TransformerState]:
    """prev (rows,) last tokens -> logits (rows, V) of the next token, and the new state. The rows
    are padded once, here, and stay padded through every layer; attention reads only real rows."""
    pos = min(state.pos, model.max_positions - 1)
    x = model.embed(model.tgt_embed, prev[:, None], offset=pos)[:, 0]
    rows = x.size(0)
    pad = padded_rows(rows, state.row_multiple) - rows
    if pad:
        x = F.pad(x, (0, 0, 0, pad))
    weights: Optional[dict[str, list]] = (
        None if state.recording is None else {"self": [], "cross": []}
    )
    past = []
    for i, layer in enumerate(model.decoder):
        x, kv = layer_step(layer, x, rows, state, i, weights)
        past.append(kv)
    logits = model.output(model.dec_norm(x))[:rows]
    recording = state.recording
    if recording is not None:  # this step's weights, (rows, layers, H, keys)
        recording = recording.add_step({k: torch.stack(w, dim=1) for k, w in weights.items()})
    new = replace(state, past=tuple(past), parents=None, pos=state.pos + 1, recording=recording)
    return logits, new


def layer_step(
    layer: DecoderLayer,
    x: Tensor,
    rows: int,
    state: TransformerState,
    i: int,
    weights: Optional[dict[str, list]],
) -> tuple[Tensor, KV]:
    """DecoderLayer.forward for one new position per row: x (R, D), the first `rows` real; layer
    `i` of the state. Returns the output (R, D) and the keys/values (rows, H, t + 1, D/H).
    `weights`: {"self": [], "cross": []} to append the weights (rows, H, keys) to."""
    own, cross = (weights["self"], weights["cross"]) if weights is not None else (None, None)
    h = layer.norm1(x) if layer.pre_norm else x
    heads = layer.self_attn.heads
    k, v = layer.self_attn.kv(h)[:rows].view(rows, 2, heads, -1).unbind(1)  # (rows, H, D/H) each
    past_k, past_v = state.past[i]
    k, v = extend(past_k, k, state.parents), extend(past_v, v, state.parents)
    x = layer.residual(x, attend(layer.self_attn, h, rows, (k, v), None, own), layer.norm1)
    h = layer.norm2(x) if layer.pre_norm else x
    y = attend(layer.cross_attn, h, rows, state.cross[i], state.mem_bias, cross)
    x = layer.residual(x, y, layer.norm2)
    out = layer.residual(x, layer.ffn(layer.norm3(x) if layer.pre_norm else x), layer.norm3)
    return out, (k, v)


def extend(past: Tensor, new: Tensor, parents: Optional[Tensor]) -> Tensor:
    """past (B', H, t, X) rows picked by `parents` (all, in order, when None), then new (B, H, X)
    appended as position t: one copy of the cache per decoding step (an index_select and a cat
    would make two)."""
    t = past.size(2)
    out = past.new_empty(new.size(0), new.size(1), t + 1, new.size(2))
    if parents is None:
        out[:, :, :t] = past
    else:
        torch.index_select(past, 0, parents, out=out[:, :, :t])
    out[:, :, t] = new
    return out


def attend(
    att: Attention,
    x: Tensor,
    rows: int,
    kv: KV,
    bias: Optional[Tensor] = None,
    weights: Optional[list] = None,
) -> Tensor:
    """Attention.forward for one new position per row: x (R, D), of which the first `rows` are
    real (the rest pad the row count), attends to kv (B, H, S, D/H), whose row b serves the f =
    rows / B consecutive rows of x from b * f (the beams of a sentence: their queries attend
    together, as f queries of one row); `bias` (B, H, 1, S) is added to the scores (-inf: masked).
    Returns (R, D), pad rows zero before the output projection. `weights`: a list to append the
    weights (rows, H, S) to.

    bf16 keys on a CPU go through scaled_dot_product_attention: its CPU kernel reads bf16 keys and
    values (half the bytes of fp32 ones, and decoding's attention is bound by reading them),
    computes the scores and the softmax in fp32, and builds nothing per shape (torch's bf16 bmm
    would go to oneDNN, which builds a kernel for every new shape: the keys grow at every step); the
    weights, when asked for, are computed beside it, so recording them changes no output.
    Otherwise (fp32, a GPU) the products run in the keys' dtype, the softmax in fp32."""
    k, v = kv
    q = att.q(x)[:rows]
    dtype = q.dtype  # what the layers compute in
    b, h, s, dh = k.shape
    f = rows // b
    sdpa = k.device.type == "cpu" and q.dtype == k.dtype == torch.bfloat16
    if sdpa:  # (B, H, f, D/H)
        y = F.scaled_dot_product_attention(
            q.view(b, f, h, dh).transpose(1, 2), k, v, attn_mask=bias
        )
    if not sdpa or weights is not None:
        # a 1-dim tensor: the product takes its dtype
        scale = torch.full((1,), dh**-0.5, dtype=k.dtype, device=k.device)
        q = (q.view(b, f, h, dh).transpose(1, 2) * scale).reshape(b * h, f, dh)
        kt = k.reshape(b * h, s, dh).transpose(1, 2)
        a = torch.bmm(q, kt) if bias is None else torch.baddbmm(bias.reshape(b * h, 1, s), q, kt)
        w = a.softmax(dim=-1, dtype=torch.float32)
        if not sdpa:
            y = torch.bmm(w.to(v.dtype), v.reshape(b * h, s, dh)).view(b, h, f, dh)
        # with SDPA, computed beside it for the record: the output is the same with or without
        if weights is not None:
            weights.append(w.view(b, h, f, s).transpose(1, 2).reshape(rows, h, s))
    out = x.new_empty(x.size(0), h * dh, dtype=dtype)
    out[:rows].view(b, f, h, dh).copy_(y.transpose(1, 2))
    if x.size(0) > rows:
        out[rows:].zero_()
    return att.out(out)
