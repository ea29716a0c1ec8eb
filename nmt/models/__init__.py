"""Model construction: an `if` on `cfg.arch` is the whole plug-in system."""

from __future__ import annotations

from torch import nn

from nmt.config import ModelConfig
from nmt.models.rnn import RNNSeq2Seq
from nmt.models.transformer import Transformer
from nmt.tokenizer import PAD


def build_model(cfg: ModelConfig, src_vocab: int, tgt_vocab: int) -> nn.Module:
    """Build the model named by `cfg.arch` for the given vocabulary sizes."""
    if cfg.arch == "transformer":
        return Transformer(
            src_vocab,
            tgt_vocab,
            layers=cfg.layers,
            dec_layers=cfg.dec_layers,
            d_model=cfg.d_model,
            heads=cfg.heads,
            ffn=cfg.ffn,
            dropout=cfg.dropout,
            attn_dropout=cfg.attn_dropout,
            pre_norm=cfg.norm == "pre",
            learned_positions=cfg.positions == "learned",
            max_positions=cfg.max_positions,
            share_embeddings=cfg.share_embeddings,
            tie_output=cfg.tie_output,
            pad_id=PAD,
        )
    if cfg.arch == "rnn":
        return RNNSeq2Seq(
            src_vocab,
            tgt_vocab,
            cell=cfg.cell,
            layers=cfg.layers,
            emb=cfg.d_model,
            hidden=cfg.hidden_size,
            bidirectional=cfg.bidirectional,
            attention=cfg.attention,
            input_feeding=cfg.input_feeding,
            dropout=cfg.dropout,
            share_embeddings=cfg.share_embeddings,
            tie_output=cfg.tie_output,
            pad_id=PAD,
        )
    raise ValueError(f"unknown model.arch {cfg.arch!r}")  # config validation makes this a bug


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
