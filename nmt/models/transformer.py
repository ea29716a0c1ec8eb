"""The encoder-decoder Transformer (Vaswani et al. 2017), as the paper and the Annotated
Transformer explain it: attention only, no recurrence.

- Embeddings scaled by sqrt(D) plus positions (`sinusoid_table`, or learned): attention itself has
  no notion of order.
- Scaled dot-product attention (`attention_weights`): softmax(q k^T / sqrt(D/H)) over the keys, the
  output a weighted sum of the values; multi-head (`Attention`): H heads of D/H dimensions each
  attend side by side, and their outputs are concatenated and projected.
- The encoder (`EncoderLayer`): self-attention over the source, then a feed-forward block, each
  wrapped in a residual connection and layer norm (pre-norm or post-norm).
- The decoder (`DecoderLayer`): masked self-attention (`causal`: position t sees positions up to t,
  never the future), cross-attention from each target position to the encoder's memory, then the
  feed-forward block.

Two ways in: training is `forward(src, src_pad_mask, tgt_in) -> logits (B, T, V)`, that is
`decode(tgt_in, encode(src, src_pad_mask))`; search decodes one position at a time with
`start`/`step`, in models/incremental.py (caches, the same outputs as `decode`).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt.models import incremental
from nmt.models.dropout import Dropout


def sinusoid_table(n: int, d: int) -> Tensor:
    """(n, d) fixed sinusoidal position table: sin on even dims, cos on odd dims."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    table = torch.zeros(n, d)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table


def attention_weights(q: Tensor, k: Tensor, mask: Optional[Tensor], causal: bool) -> Tensor:
    """softmax(q k^T / sqrt(d)): q (B, H, T, d) against k (B, H, S, d) -> (B, H, T, S) fp32 weights,
    each row a distribution over the keys. mask (B, 1, 1, S): False where a key is padding;
    `causal`: query t sees keys up to t."""
    a = (q * q.size(-1) ** -0.5) @ k.transpose(-1, -2)  # scaling q is cheaper than the scores
    if mask is not None:
        a.masked_fill_(~mask, -float("inf"))
    if causal:
        t, s = a.shape[-2:]
        future = torch.ones(t, s, dtype=torch.bool, device=a.device).triu(1)
        a.masked_fill_(future, -float("inf"))
    return a.softmax(dim=-1, dtype=torch.float32)  # in fp32 also for bf16, as SDPA does


class Attention(nn.Module):
    """Multi-head attention; keys/values are projected separately (`project_kv`) so that decoding
    can cache them.

    The product runs in torch's scaled_dot_product_attention (SDPA), except when training on a
    CPU in bf16 or with attention dropout, where SDPA's CPU kernels are the slower and the written-
    out `attention_weights` is used (scripts/attention_bench.py measures both; docs/speed.md).
    tests/test_transformer.py checks that both give the same outputs and gradients."""

    def __init__(self, d_model: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.drop = heads, Dropout(dropout)  # the attention weights' dropout
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
        q = self._split(self.q(x))  # (B, H, T, D/H)
        w = None
        if self._explicit(q):
            w = attention_weights(q, k, mask, causal)
            y = self.drop(w).to(v.dtype) @ v
        else:
            p = self.drop.p if self.training else 0.0
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal
            )
        if weights is not None:  # what SDPA computed inside: the output is the same without them
            weights.append(w if w is not None else attention_weights(q, k, mask, causal))
        b, h, t, dh = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, h * dh))  # heads side by side, projected

    def _explicit(self, q: Tensor) -> bool:
        """Whether training on a CPU, where the written-out attention is the faster."""
        dropout = self.training and self.drop.p > 0
        cpu_training = q.device.type == "cpu" and torch.is_grad_enabled()
        return cpu_training and (dropout or q.dtype != torch.float32)


class FeedForward(nn.Sequential):
    """The position-wise feed-forward block: Linear(D, ffn), ReLU, dropout, Linear(ffn, D)."""

    def __init__(self, d_model: int, ffn: int, dropout: float):
        super().__init__(
            nn.Linear(d_model, ffn), nn.ReLU(), Dropout(dropout), nn.Linear(ffn, d_model)
        )


class Sublayers(nn.Module):
    """What both layer kinds share: each sublayer's output joins the residual stream through
    dropout; post-norm layers normalise the sum (pre-norm ones normalised the sublayer's input)."""

    pre_norm: bool
    drop: Dropout

    def residual(self, x: Tensor, y: Tensor, norm: nn.LayerNorm) -> Tensor:
        x = x + self.drop(y)
        return x if self.pre_norm else norm(x)


class EncoderLayer(Sublayers):
    """Self-attention over the source, then the feed-forward block."""

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
        """x (B, S, D) -> (B, S, D); mask (B, 1, 1, S) False at padding. `weights`: a list to
        append the attention weights (B, H, S, S) to."""
        h = self.norm1(x) if self.pre_norm else x
        y = self.attn(h, *self.attn.project_kv(h), mask=mask, weights=weights)
        x = self.residual(x, y, self.norm1)
        return self.residual(x, self.ffn(self.norm2(x) if self.pre_norm else x), self.norm2)


class DecoderLayer(Sublayers):
    """Masked self-attention over the target so far, cross-attention to the source's memory, then
    the feed-forward block."""

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
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.drop = Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        cross_kv: tuple[Tensor, Tensor],
        mem_mask: Tensor,
        weights: Optional[dict[str, list]] = None,
    ) -> Tensor:
        """Teacher forcing: x (B, T, D), position t sees positions up to t; cross_kv the keys and
        values of the memory (B, H, S, D/H). `weights`: {"self": [...], "cross": [...]} lists to
        append this layer's weights (B, H, T, *) to."""
        own, cross = (weights["self"], weights["cross"]) if weights is not None else (None, None)
        h = self.norm1(x) if self.pre_norm else x
        y = self.self_attn(h, *self.self_attn.project_kv(h), causal=x.size(1) > 1, weights=own)
        x = self.residual(x, y, self.norm1)
        h = self.norm2(x) if self.pre_norm else x
        y = self.cross_attn(h, *cross_kv, mask=mem_mask, weights=cross)
        x = self.residual(x, y, self.norm2)
        return self.residual(x, self.ffn(self.norm3(x) if self.pre_norm else x), self.norm3)


class Transformer(nn.Module):
    """Embeddings, the encoder stack, the decoder stack and the output projection (tied to the
    target embeddings by default); see the module docstring."""

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

    def embed(self, emb: nn.Embedding, tokens: Tensor, offset: int = 0) -> Tensor:
        """(B, T) ids -> (B, T, D): scaled embeddings + positions offset..offset+T-1."""
        pos = self.positions[offset : offset + tokens.size(1)]
        return self.drop(emb(tokens) * math.sqrt(self.d_model) + pos)

    def encode(self, src: Tensor, src_pad_mask: Tensor, weights: Optional[list] = None) -> Tensor:
        """src (B, S) -> memory (B, S, D); `weights`: a list to append each layer's self-attention
        weights to."""
        x, mask = self.embed(self.src_embed, src), ~src_pad_mask[:, None, None, :]  # (B, 1, 1, S)
        for layer in self.encoder:
            x = layer(x, mask, weights)
        return self.enc_norm(x)

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
        x, mask = self.embed(self.tgt_embed, tgt_in), ~src_pad_mask[:, None, None, :]
        for layer in self.decoder:
            x = layer(x, layer.cross_attn.project_kv(memory), mask, weights=weights)
        return self.dec_norm(x)

    def features(self, src: Tensor, src_pad_mask: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher forcing up to the logits: (B, T, D) states, `forward` = output(features)
        (training's fused loss)."""
        return self._decoder_states(tgt_in, self.encode(src, src_pad_mask), src_pad_mask)

    def forward(self, src: Tensor, src_pad_mask: Tensor, tgt_in: Tensor) -> Tensor:
        return self.output(self.features(src, src_pad_mask, tgt_in))

    # search.Decodable: one position at a time, with caches (models/incremental.py)
    def start(
        self, src: Tensor, src_pad_mask: Tensor, record: bool = False
    ) -> incremental.TransformerState:
        return incremental.start(self, src, src_pad_mask, record)

    def step(
        self, prev: Tensor, state: incremental.TransformerState
    ) -> tuple[Tensor, incremental.TransformerState]:
        return incremental.step(self, prev, state)
