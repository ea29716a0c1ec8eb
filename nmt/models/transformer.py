"""Encoder-decoder Transformer (Vaswani et al. 2017) on torch's scaled_dot_product_attention.

Two ways in:
- training: `forward(src, src_pad_mask, tgt_in) -> logits (B, T, V)`,
  which is `decode(tgt_in, encode(...))`;
- decoding: `start(src, src_pad_mask) -> state`, then
  `step(prev_tokens (B,), state) -> (logits (B, V), state)`. The state is a plain dict of
  batch-first tensors (cross-attention keys/values computed once, growing self-attention
  keys/values), so search can reorder it with `index_select` on dim 0. `start(..., record=True)`
  also keeps the attention weights every step used (see search.attention_of).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt.precision import padded_rows


def choose_attention_kernels(device: torch.device) -> None:
    """On a GPU, leave cuDNN's attention out of what scaled_dot_product_attention may pick (it keeps
    flash, memory-efficient and math). Recent torch puts cuDNN first on Hopper and Blackwell GPUs,
    and cuDNN builds an execution graph for every new problem, keyed by batch size and lengths
    (torch's cudnn/MHA.cpp); bucketed batches bring a new shape at almost every step of the first
    epoch, which made those steps slow (docs/speed.md). A process-wide setting of torch's
    (torch.backends.cuda.enable_cudnn_sdp), set when a model is put on a GPU."""
    if device.type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(False)


def sinusoid_table(n: int, d: int) -> Tensor:
    """(n, d) fixed sinusoidal position table: sin on even dims, cos on odd dims."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    table = torch.zeros(n, d)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table


class Dropout(nn.Module):
    """nn.Dropout, but on the CPU the mask comes from uniform 15-bit integers compared
    with a threshold and is applied by a multiplication: several times faster than the
    bernoulli kernel torch uses there, which made dropout a large share of a CPU
    training step. The 15-bit draws are cut from 64-bit ones (a quarter of the
    generator calls). p is rounded to a multiple of 1/32768 and the scale uses the
    rounded value, so the expectation is exact. On CUDA: torch's fused kernel."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.threshold = round(p * 32768)
        self.scale = 32768 / (32768 - self.threshold) if p < 1 else 0.0

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, True)
        n = x.numel()
        # 0 .. 2**63 - 1: four 16-bit pieces each
        draws = torch.empty((n + 3) // 4, dtype=torch.int64).random_()
        bits = draws.view(torch.int16)[:n].view(x.shape).bitwise_and_(0x7FFF)  # uniform 0..32767
        # backward: grad x the same mask
        return x * (bits >= self.threshold).to(x.dtype).mul_(self.scale)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Attention(nn.Module):
    """Multi-head attention; keys/values are projected separately so they can be cached.

    Training on a CPU computes it as written (scores, softmax in fp32, dropout, weighted sum) rather
    than with scaled_dot_product_attention where SDPA's CPU kernels are the slower: in bf16, and
    with attention dropout (scripts/attention_bench.py measures both; docs/speed.md). In fp32
    without dropout they are even, so that keeps SDPA, as do decoding and GPUs."""

    def __init__(self, d_model: int, heads: int, dropout: float):
        super().__init__()
        # the written-out path's dropout; its p also SDPA's
        self.heads, self.drop = heads, Dropout(dropout)
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def _split(self, x: Tensor) -> Tensor:  # (B, T, D) -> (B, H, T, D/H)
        b, t, d = x.shape
        return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)

    def project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values (B, H, S, D/H) for the positions in x (B, S, D)."""
        k, v = self.kv(x).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def forward(
        self,
        x: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Optional[Tensor] = None,
        causal: bool = False,
        weights: Optional[list] = None,
    ) -> Tensor:
        """x (B, T, D) attends to k, v (B, H, S, D/H); mask (B, 1, 1, S) is True where allowed;
        `causal`: query i sees key i and those before it. `weights`: a list to append the weights
        (B, H, T, S) the output was made of to."""
        q = self._split(self.q(x))
        explicit = self._explicit(q)
        if not explicit:
            p = self.drop.p if self.training else 0.0
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal
            )
        if explicit or weights is not None:  # SDPA's computation, with the weights at hand
            # scaling the queries is cheaper than the scores
            a = (q * q.size(-1) ** -0.5) @ k.transpose(-1, -2)
            if mask is not None:
                a.masked_fill_(~mask, -float("inf"))
            if causal:
                t, s = a.shape[-2:]
                a.masked_fill_(
                    torch.ones(t, s, dtype=torch.bool, device=a.device).triu(1), -float("inf")
                )
            # in fp32 also for bf16 weights, as SDPA does: rows sum to 1
            w = a.softmax(dim=-1, dtype=torch.float32)
            # else the weights are only recorded: the output
            # is SDPA's, the same with or without them
            if explicit:
                y = self.drop(w).to(v.dtype) @ v
            if weights is not None:
                weights.append(w)
        b, h, t, dh = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, h * dh))

    def _explicit(self, q: Tensor) -> bool:
        """Whether training on a CPU, where the written-out
        attention is the faster (see the class)."""
        dropout = self.training and self.drop.p > 0
        return (
            q.device.type == "cpu"
            and torch.is_grad_enabled()
            and (dropout or q.dtype != torch.float32)
        )

    def step(
        self,
        x: Tensor,
        rows: int,
        k: Tensor,
        v: Tensor,
        bias: Optional[Tensor] = None,
        weights: Optional[list] = None,
    ) -> Tensor:
        """Decoding: one new position per row. x (R, D), of which the first `rows` are real (the
        rest pad the row count for the matrix kernels, see Transformer.step); they attend to k, v
        (B, H, S, D/H), whose row b serves the f = rows / B consecutive rows of x from b * f (the
        beams of a sentence: their queries attend together, as f queries of one row); `bias` (B, H,
        1, S) is added to the scores (-inf: masked). Returns (R, D), pad rows zero before the output
        projection. `weights`: a list to append the weights (rows, H, S) to.

        bf16 keys on a CPU go through scaled_dot_product_attention: its CPU kernel reads bf16 keys
        and values (half the bytes of fp32 ones, and decoding's attention is bound by reading them),
        computes the scores and the softmax in fp32, and builds nothing per shape (torch's bf16 bmm
        would go to oneDNN, which builds a kernel for every new shape: the keys grow at every step);
        the weights, when asked for, are computed beside it, so recording them changes no output.
        Otherwise (fp32, a GPU) the products run in the keys' dtype, the softmax in fp32."""
        q = self.q(x)[:rows]
        dtype = q.dtype  # what the layers compute in
        b, h, s, dh = k.shape
        f = rows // b
        sdpa = k.device.type == "cpu" and q.dtype == k.dtype == torch.bfloat16
        if sdpa:
            # (B, H, f, D/H)
            y = F.scaled_dot_product_attention(
                q.view(b, f, h, dh).transpose(1, 2), k, v, attn_mask=bias
            )
        if not sdpa or weights is not None:
            # a 1-dim tensor: the product takes its dtype
            scale = torch.full((1,), dh**-0.5, dtype=k.dtype, device=k.device)
            q = (q.view(b, f, h, dh).transpose(1, 2) * scale).reshape(b * h, f, dh)
            kt = k.reshape(b * h, s, dh).transpose(1, 2)
            a = (
                torch.bmm(q, kt)
                if bias is None
                else torch.baddbmm(bias.reshape(b * h, 1, s), q, kt)
            )
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
        return self.out(out)


def extend(past: Tensor, new: Tensor, parents: Optional[Tensor]) -> Tensor:
    """past (B', H, t, X) rows picked by `parents` (all, in order, when
    None), then new (B, H, X) appended as position t: one copy of the
    cache per decoding step (an index_select and a cat would make two)."""
    t = past.size(2)
    out = past.new_empty(new.size(0), new.size(1), t + 1, new.size(2))
    if parents is None:
        out[:, :, :t] = past
    else:
        torch.index_select(past, 0, parents, out=out[:, :, :t])
    out[:, :, t] = new
    return out


class FeedForward(nn.Sequential):
    def __init__(self, d_model: int, ffn: int, dropout: float):
        super().__init__(
            nn.Linear(d_model, ffn), nn.ReLU(), Dropout(dropout), nn.Linear(ffn, d_model)
        )


class EncoderLayer(nn.Module):
    def __init__(
        self,
        d_model: int,
        heads: int,
        ffn: int,
        dropout: float,
        attn_dropout: float,
        pre_norm: bool,
    ):
        super().__init__()
        self.pre_norm = pre_norm
        self.attn = Attention(d_model, heads, attn_dropout)
        self.ffn = FeedForward(d_model, ffn, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor, weights: Optional[list] = None) -> Tensor:
        """`weights`: a list to append this layer's self-attention weights (B, H, S, S) to."""
        h = self.norm1(x) if self.pre_norm else x
        y = self.attn(h, *self.attn.project_kv(h), mask=mask, weights=weights)
        x = x + self.drop(y)
        if not self.pre_norm:
            x = self.norm1(x)
        h = self.norm2(x) if self.pre_norm else x
        x = x + self.drop(self.ffn(h))
        return x if self.pre_norm else self.norm2(x)


class DecoderLayer(nn.Module):
    def __init__(
        self,
        d_model: int,
        heads: int,
        ffn: int,
        dropout: float,
        attn_dropout: float,
        pre_norm: bool,
    ):
        super().__init__()
        self.pre_norm = pre_norm
        self.self_attn = Attention(d_model, heads, attn_dropout)
        self.cross_attn = Attention(d_model, heads, attn_dropout)
        self.ffn = FeedForward(d_model, ffn, dropout)
        self.norm1, self.norm2, self.norm3 = (
            nn.LayerNorm(d_model),
            nn.LayerNorm(d_model),
            nn.LayerNorm(d_model),
        )
        self.drop = Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        cross_kv: tuple[Tensor, Tensor],
        mem_mask: Tensor,
        weights: Optional[dict[str, list]] = None,
    ) -> Tensor:
        """Teacher forcing: x (B, T, D), position t sees positions up to t. `weights`: {"self":
        [...], "cross": [...]} lists to append this layer's weights (B, H, T, *) to."""
        own, cross = (weights["self"], weights["cross"]) if weights is not None else (None, None)
        h = self.norm1(x) if self.pre_norm else x
        y = self.self_attn(h, *self.self_attn.project_kv(h), causal=x.size(1) > 1, weights=own)
        x = self._residual(x, y, self.norm1)
        h = self.norm2(x) if self.pre_norm else x
        y = self.cross_attn(h, *cross_kv, mask=mem_mask, weights=cross)
        x = self._residual(x, y, self.norm2)
        return self._residual(x, self.ffn(self.norm3(x) if self.pre_norm else x), self.norm3)

    def _residual(self, x: Tensor, y: Tensor, norm: nn.LayerNorm) -> Tensor:
        x = x + self.drop(y)
        return x if self.pre_norm else norm(x)

    def step(
        self,
        x: Tensor,
        rows: int,
        cross_kv: tuple[Tensor, Tensor],
        mem_bias: Tensor,
        past: tuple[Tensor, Tensor],
        parents: Optional[Tensor],
        weights: Optional[dict[str, list]] = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Decoding: x (R, D) the new position of each row, the first `rows` real (see
        Attention.step); past (rows', H, t, D/H) this layer's self-attention keys and values so far;
        `parents` (rows,): row r continues past row parents[r] (beam search's reordering, done in
        the copy that appends). Returns the output (R, D) and the keys/values (rows, H, t + 1, D/H).
        `weights`: as in forward, (rows, H, keys) per layer."""
        h = self.norm1(x) if self.pre_norm else x
        heads = self.self_attn.heads
        k, v = self.self_attn.kv(h)[:rows].view(rows, 2, heads, -1).unbind(1)  # (rows, H, D/H) each
        k, v = extend(past[0], k, parents), extend(past[1], v, parents)
        y = self.self_attn.step(
            h, rows, k, v, weights=weights["self"] if weights is not None else None
        )
        x = self._residual(x, y, self.norm1)
        h = self.norm2(x) if self.pre_norm else x
        y = self.cross_attn.step(
            h, rows, *cross_kv, mem_bias, weights["cross"] if weights is not None else None
        )
        x = self._residual(x, y, self.norm2)
        return self._residual(x, self.ffn(self.norm3(x) if self.pre_norm else x), self.norm3), (
            k,
            v,
        )


class Transformer(nn.Module):
    returns_log_probs = False  # step returns logits (search.Decodable)

    def __init__(
        self,
        src_vocab: int,
        tgt_vocab: int,
        layers: int = 6,
        dec_layers: Optional[int] = None,
        d_model: int = 512,
        heads: int = 8,
        ffn: int = 2048,
        dropout: float = 0.1,
        attn_dropout: float = 0.0,
        pre_norm: bool = True,
        learned_positions: bool = False,
        max_positions: int = 512,
        share_embeddings: bool = True,
        tie_output: bool = True,
        pad_id: int = 0,
    ):
        super().__init__()
        if share_embeddings and src_vocab != tgt_vocab:
            raise ValueError("shared embeddings need one vocabulary")
        self.d_model, self.pad_id, self.max_positions = d_model, pad_id, max_positions
        self.row_multiple = 1  # decoding pads its rows by this (see step)
        self.src_embed = nn.Embedding(src_vocab, d_model, padding_idx=pad_id)
        self.tgt_embed = (
            self.src_embed
            if share_embeddings
            else nn.Embedding(tgt_vocab, d_model, padding_idx=pad_id)
        )
        if learned_positions:
            self.positions = nn.Parameter(torch.randn(max_positions, d_model) * d_model**-0.5)
        else:
            self.register_buffer(
                "positions", sinusoid_table(max_positions, d_model), persistent=False
            )
        args = (d_model, heads, ffn, dropout, attn_dropout, pre_norm)
        self.encoder = nn.ModuleList(EncoderLayer(*args) for _ in range(layers))
        self.decoder = nn.ModuleList(DecoderLayer(*args) for _ in range(dec_layers or layers))
        # pre-norm stacks need a final norm; post-norm layers already end in one
        self.enc_norm = nn.LayerNorm(d_model) if pre_norm else nn.Identity()
        self.dec_norm = nn.LayerNorm(d_model) if pre_norm else nn.Identity()
        self.drop = Dropout(dropout)
        self.output = nn.Linear(d_model, tgt_vocab, bias=False)
        self._init_weights()
        if tie_output:
            self.output.weight = self.tgt_embed.weight

    def _init_weights(self) -> None:
        for name, p in self.named_parameters():
            if p.dim() > 1 and "embed" not in name and name != "positions":
                nn.init.xavier_uniform_(p)
        for emb in {self.src_embed, self.tgt_embed}:
            nn.init.normal_(emb.weight, std=self.d_model**-0.5)
            nn.init.zeros_(emb.weight[self.pad_id])

    def _embed(self, emb: nn.Embedding, tokens: Tensor, offset: int = 0) -> Tensor:
        """(B, T) ids -> (B, T, D): scaled embeddings + positions offset..offset+T-1."""
        pos = self.positions[offset : offset + tokens.size(1)]
        return self.drop(emb(tokens) * math.sqrt(self.d_model) + pos)

    def encode(self, src: Tensor, src_pad_mask: Tensor, weights: Optional[list] = None) -> Tensor:
        """src (B, S) -> memory (B, S, D); `weights`: a list
        to append each layer's self-attention weights to."""
        x, mask = self._embed(self.src_embed, src), self._mem_mask(src_pad_mask)
        for layer in self.encoder:
            x = layer(x, mask, weights)
        return self.enc_norm(x)

    @staticmethod
    def _mem_mask(src_pad_mask: Tensor) -> Tensor:
        return ~src_pad_mask[:, None, None, :]  # (B, 1, 1, S), True where attention is allowed

    def decode(
        self,
        tgt_in: Tensor,
        memory: Tensor,
        src_pad_mask: Tensor,
        weights: Optional[dict[str, list]] = None,
    ) -> Tensor:
        """Teacher-forced decoding: tgt_in (B, T) -> logits (B, T, V); position t sees tgt_in[:,
        :t+1]. `weights`: {"self": [], "cross": []} to collect each layer's attention weights in."""
        return self.output(self._decoder_states(tgt_in, memory, src_pad_mask, weights))

    def _decoder_states(
        self,
        tgt_in: Tensor,
        memory: Tensor,
        src_pad_mask: Tensor,
        weights: Optional[dict[str, list]] = None,
    ) -> Tensor:
        """(B, T) -> the final decoder states (B, T, D) that the output matrix turns into logits."""
        x, mask = self._embed(self.tgt_embed, tgt_in), self._mem_mask(src_pad_mask)
        for layer in self.decoder:
            x = layer(x, layer.cross_attn.project_kv(memory), mask, weights=weights)
        return self.dec_norm(x)

    def features(self, src: Tensor, src_pad_mask: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher forcing up to the logits: (B, T, D) states, `forward` = output(features)
        (training's fused loss)."""
        return self._decoder_states(tgt_in, self.encode(src, src_pad_mask), src_pad_mask)

    def forward(self, src: Tensor, src_pad_mask: Tensor, tgt_in: Tensor) -> Tensor:
        return self.output(self.features(src, src_pad_mask, tgt_in))

    def start(self, src: Tensor, src_pad_mask: Tensor, record: bool = False) -> dict:
        """Encode once and precompute every layer's cross-attention keys/values for `step`. With
        `record`, the state also keeps the attention weights: the encoder's ("encoder", (B, layers,
        H, S, S)) and, per step, the decoder's ("cross" (B, layers, H, S) and "self" (B, layers, H,
        t + 1))."""
        enc_weights: Optional[list] = [] if record else None
        memory = self.encode(src, src_pad_mask, enc_weights)
        # contiguous: every step views them as (B * H, S, D/H), which the projection's strided split
        # would make a copy each time
        cross = [
            tuple(t.contiguous() for t in layer.cross_attn.project_kv(memory))
            for layer in self.decoder
        ]
        k = cross[0][0]  # (B, H, S, D/H), in the dtype the products will run in
        mem_bias = torch.zeros(k.shape[:2] + (1, k.size(2)), dtype=k.dtype, device=k.device)
        # (B, H, 1, S): added to the scores
        mem_bias.masked_fill_(src_pad_mask[:, None, None, :], -float("inf"))
        empty = k[:, :, :0]
        state = {
            "mem_bias": mem_bias,
            "cross": cross,
            "self": [(empty, empty) for _ in self.decoder],
            "pos": 0,
            # one row per sentence, shared by its beams (see search.py)
            "static": ("mem_bias", "cross"),
            # beam search reorders these lazily: `step` gathers them by "parents"
            "deferred": ("self",),
            "parents": None,
        }
        if record:
            state.update(
                attn_static={"encoder": torch.stack(enc_weights, dim=1)},
                attn_steps={"cross": [], "self": []},
                static=("mem_bias", "cross", "attn_static"),
            )
        return state

    def step(self, prev: Tensor, state: dict) -> tuple[Tensor, dict]:
        """One decoding step: prev (B,) last tokens -> logits (B, V) for the next token, new state.

        With `row_multiple` m > 1 (bf16 decoding on a CPU, set by nmt.translate), the rows are
        padded once, here, (precision.padded_rows: to a multiple of m/4, m/2 or m, by row count) and
        stay padded through every layer: torch hands bf16 products on a CPU to oneDNN, which builds
        a kernel for every new shape, and beam search changes the row count whenever a sentence
        ends. Attention reads only the real rows."""
        pos = state["pos"]
        x = self._embed(self.tgt_embed, prev[:, None], offset=min(pos, self.max_positions - 1))[
            :, 0
        ]
        rows = x.size(0)
        pad = padded_rows(rows, self.row_multiple) - rows
        if pad:
            x = F.pad(x, (0, 0, 0, pad))
        weights: Optional[dict[str, list]] = (
            {"self": [], "cross": []} if "attn_steps" in state else None
        )
        new_self = []
        for layer, cross, past in zip(self.decoder, state["cross"], state["self"]):
            x, kv = layer.step(x, rows, cross, state["mem_bias"], past, state["parents"], weights)
            new_self.append(kv)
        logits = self.output(self.dec_norm(x))[:rows]
        new = {**state, "self": new_self, "pos": pos + 1, "parents": None}
        # this step's weights, (B, layers, H, keys), after the earlier steps'
        if weights is not None:
            new["attn_steps"] = {
                k: [*steps, torch.stack(weights[k], dim=1)]
                for k, steps in state["attn_steps"].items()
            }
        return logits, new
