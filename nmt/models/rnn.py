"""RNN encoder-decoder (Sutskever et al. 2014; Cho et al. 2014), with or without attention (Luong et
al. 2015: dot and general scores; Bahdanau et al. 2015: the additive score).

- Encoder: embeddings -> stacked LSTM/GRU, optionally bidirectional (each direction hidden/2 wide,
  so the encoder states are `hidden` wide); padding is skipped with packed sequences.
- Bridge: the encoder's final state (directions concatenated) -> tanh(linear) -> the decoder's
  initial state.
- Decoder step: [embedding of the previous token; previous attentional vector] (input feeding) ->
  stacked RNN -> h. Without attention h is the output: the decoder knows the source only through the
  bridged initial state, the one vector the classic seq2seq squeezes the sentence into. With
  attention, scores of h against every encoder state -> softmax over real positions -> context c ->
  attentional vector tanh(W [c; h]) -> output.

Same interface as the Transformer: `forward` for training, `start`/`step` for search (see
search.py), with an `RNNState` between steps.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nmt.models.dropout import Dropout
from nmt.models.recording import Recording

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


class GlobalAttention(nn.Module):
    """Scores of a query h (B, H) against keys (B, S, H); returns (context (B, H), weights (B, S)).
    Keys, memory and mask may have B / f rows, each shared by f consecutive queries (the beams of a
    sentence in search).

    dot: h . s;  general: h . W s;  additive: v . tanh(W_q h + W_k s). Keys depending only on the
    source (W s, W_k s) are computed once per sentence by `keys`, not at every step.
    """

    def __init__(self, kind: str, hidden: int):
        super().__init__()
        self.kind = kind
        if kind == "general":
            self.w = nn.Linear(hidden, hidden, bias=False)
        elif kind == "additive":
            self.w_k = nn.Linear(hidden, hidden, bias=False)
            self.w_q = nn.Linear(hidden, hidden)
            self.v = nn.Linear(hidden, 1, bias=False)

    def keys(self, memory: Tensor) -> Tensor:
        if self.kind == "general":
            return self.w(memory)
        if self.kind == "additive":
            return self.w_k(memory)
        return memory

    def forward(
        self, h: Tensor, keys: Tensor, memory: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """mask (B, S) is True at real source positions."""
        # (B / f, f, H): the queries that share a row of keys
        q = h.view(keys.size(0), -1, h.size(-1))
        if self.kind == "additive":
            scores = self.v(torch.tanh(keys[:, None] + self.w_q(q)[:, :, None])).squeeze(-1)
        else:
            scores = torch.bmm(q, keys.transpose(1, 2))
        weights = scores.masked_fill(~mask[:, None], -float("inf")).softmax(dim=-1)  # (B / f, f, S)
        return torch.bmm(weights, memory).view_as(h), weights.view(h.size(0), -1)


@dataclass(frozen=True)
class RNNState:
    """What the RNN decoder carries between steps (search.DecoderState). The encoder's outputs
    (attentional models only) are kept one row per sentence, shared by its beams."""

    hidden: Tensor  # (rows, layers, H), for an LSTM (rows, layers, H, 2): h and c
    feed: Optional[Tensor]  # (rows, H) the previous attentional vector (input feeding)
    memory: Optional[Tensor]  # (B, S, H) the encoder states
    keys: Optional[Tensor]  # (B, S, H) what the attention scores them by (GlobalAttention.keys)
    mem_mask: Optional[Tensor]  # (B, S) True at real source positions
    recording: Optional[Recording] = None

    def reorder(self, beams: Tensor, sentences: Optional[Tensor]) -> RNNState:
        """See search.DecoderState: the encoder's outputs move only when sentences leave."""
        memory, keys, mem_mask = self.memory, self.keys, self.mem_mask
        if sentences is not None and memory is not None:
            memory, keys, mem_mask = (
                t.index_select(0, sentences) for t in (memory, keys, mem_mask)
            )
        return RNNState(
            self.hidden.index_select(0, beams),
            None if self.feed is None else self.feed.index_select(0, beams),
            memory, keys, mem_mask,
            None if self.recording is None else self.recording.reorder(beams, sentences),
        )  # fmt: skip


class RNNSeq2Seq(nn.Module):
    """Encoder, bridge, decoder and (optionally) attention, as the module docstring lays out."""

    returns_log_probs = False  # step returns logits (search.Decodable)

    def __init__(
        self,
        src_vocab: int,
        tgt_vocab: int,
        cell: str = "lstm",
        layers: int = 2,
        emb: int = 256,
        hidden: int = 512,
        bidirectional: bool = True,
        attention: str = "dot",
        input_feeding: bool = True,
        dropout: float = 0.3,
        share_embeddings: bool = False,
        tie_output: bool = False,
        pad_id: int = 0,
    ):
        super().__init__()
        self.cell, self.layers, self.hidden, self.pad_id = cell, layers, hidden, pad_id
        self.attention_kind = attention
        self.input_feeding = input_feeding and attention != "none"
        self.src_embed = nn.Embedding(src_vocab, emb, padding_idx=pad_id)
        self.tgt_embed = (
            self.src_embed if share_embeddings else nn.Embedding(tgt_vocab, emb, padding_idx=pad_id)
        )
        rnn = CELLS[cell]
        dirs = 2 if bidirectional else 1
        self.encoder = rnn(
            emb,
            hidden // dirs,
            layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.bridge_h = nn.Linear(hidden, hidden)
        self.bridge_c = nn.Linear(hidden, hidden) if cell == "lstm" else None
        self.decoder = rnn(
            emb + (hidden if self.input_feeding else 0),
            hidden,
            layers,
            batch_first=True,
            dropout=dropout if layers > 1 else 0.0,
        )
        if attention != "none":
            self.attention = GlobalAttention(attention, hidden)
            self.combine = nn.Linear(2 * hidden, hidden, bias=False)
        self.drop = Dropout(dropout)
        self.output = nn.Linear(hidden, tgt_vocab, bias=False)
        if tie_output:
            # needs emb == hidden (checked by the config)
            self.output.weight = self.tgt_embed.weight

    # --- encoder and bridge ---
    def _bridge(self, final: Tensor, linear: nn.Linear) -> Tensor:
        """(layers * dirs, B, H/dirs) final states -> (B, layers, H) decoder initial states."""
        b = final.size(1)
        final = (
            final.view(self.layers, -1, b, final.size(-1))
            .permute(2, 0, 1, 3)
            .reshape(b, self.layers, -1)
        )
        return torch.tanh(linear(final))

    def encode(self, src: Tensor, src_pad_mask: Tensor) -> tuple[Tensor, Tensor]:
        """src (B, S) -> memory (B, S, H), initial decoder
        state (B, layers, H[, 2 for LSTM h and c])."""
        lengths = (~src_pad_mask).sum(1).cpu()
        packed = pack_padded_sequence(
            self.drop(self.src_embed(src)), lengths, batch_first=True, enforce_sorted=False
        )
        out, final = self.encoder(packed)
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=src.size(1))
        if self.cell == "lstm":
            state = torch.stack(
                [self._bridge(final[0], self.bridge_h), self._bridge(final[1], self.bridge_c)],
                dim=-1,
            )
        else:
            state = self._bridge(final, self.bridge_h)
        return memory, state

    # --- one decoder step (shared by training and search) ---
    def _rnn_state(self, state: Tensor):
        """Batch-first state (B, layers, H[, 2]) -> what
        torch's RNN takes: (layers, B, H) (a pair for LSTM)."""
        if self.cell == "lstm":
            return state[..., 0].transpose(0, 1).contiguous(), state[..., 1].transpose(
                0, 1
            ).contiguous()
        return state.transpose(0, 1).contiguous()

    def _batch_first(self, rnn_state) -> Tensor:
        if self.cell == "lstm":
            return torch.stack([rnn_state[0].transpose(0, 1), rnn_state[1].transpose(0, 1)], dim=-1)
        return rnn_state.transpose(0, 1)

    def _step(self, prev: Tensor, st: RNNState) -> tuple[Tensor, RNNState, Optional[Tensor]]:
        """prev (B,) -> (output vector (B, H) before the
        vocabulary projection, new state, attention (B, S))."""
        x = self.drop(self.tgt_embed(prev))
        if self.input_feeding:
            x = torch.cat([x, st.feed], dim=-1)
        out, rnn_state = self.decoder(x[:, None], self._rnn_state(st.hidden))
        h = out[:, 0]
        new = replace(st, hidden=self._batch_first(rnn_state))
        if self.attention_kind == "none":
            return self.drop(h), new, None
        context, weights = self.attention(h, st.keys, st.memory, st.mem_mask)
        attn_h = torch.tanh(self.combine(torch.cat([context, h], dim=-1)))
        if self.input_feeding:
            new = replace(new, feed=attn_h)
        return self.drop(attn_h), new, weights

    # --- the model interface ---
    def start(self, src: Tensor, src_pad_mask: Tensor, record: bool = False) -> RNNState:
        """With `record` (attentional models only), the state also keeps each step's attention
        weights: "cross", (rows, 1, 1, S) per step (one layer, one head), as the Transformer's (see
        models/recording.py)."""
        if record and self.attention_kind == "none":
            raise ValueError("a seq2seq model without attention has no attention weights to record")
        memory, hidden = self.encode(src, src_pad_mask)
        feed = memory.new_zeros(src.size(0), self.hidden) if self.input_feeding else None
        recording = Recording({}, {"cross": ()}) if record else None
        if self.attention_kind == "none":
            return RNNState(hidden, feed, None, None, None, recording)
        keys = self.attention.keys(memory)
        return RNNState(hidden, feed, memory, keys, ~src_pad_mask, recording)

    def step(self, prev: Tensor, state: RNNState) -> tuple[Tensor, RNNState]:
        out, state, weights = self._step(prev, state)
        if state.recording is not None:
            recording = state.recording.add_step({"cross": weights[:, None, None, :]})
            state = replace(state, recording=recording)
        return self.output(out), state

    def features(self, src: Tensor, src_pad_mask: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher forcing: (B, T) -> output vectors (B, T, H) before the vocabulary projection, one
        decoder step per position."""
        state = self.start(src, src_pad_mask)
        outs = []
        for t in range(tgt_in.size(1)):
            out, state, _ = self._step(tgt_in[:, t], state)
            outs.append(out)
        return torch.stack(outs, dim=1)

    def forward(self, src: Tensor, src_pad_mask: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher forcing: (B, T) -> logits (B, T, V)."""
        return self.output(self.features(src, src_pad_mask, tgt_in))
