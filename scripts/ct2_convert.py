#!/usr/bin/env python3
"""Convert an `nmt` Transformer checkpoint to a
CTranslate2 model directory (same weights, no training).

    pip install ctranslate2
    python scripts/ct2_convert.py runs/x/best.pt ct2_model/

CTranslate2 then takes SentencePiece pieces with "</s>"
appended (the model was trained with a source EOS):

    tr = ctranslate2.Translator("ct2_model")
    tr.translate_batch([pieces + ["</s>"]], beam_size=5)

Only pre-norm models with sinusoidal or learned positions are supported (the nmt defaults).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nmt.checkpoint import load_checkpoint  # noqa: E402
from nmt.config import config_from_dict  # noqa: E402
from nmt.models import build_model  # noqa: E402
from nmt.tokenizer import Tokenizer  # noqa: E402


def convert(checkpoint: str, out_dir: str) -> None:
    import ctranslate2
    from ctranslate2.specs import common_spec, transformer_spec

    ckpt = load_checkpoint(checkpoint)
    cfg = config_from_dict(ckpt["config"], origin=f"{checkpoint} (config)")
    if cfg.model.norm != "pre":
        raise SystemExit(
            f"{checkpoint}: only pre-norm models convert (model.norm={cfg.model.norm})"
        )
    tok = Tokenizer.from_state(ckpt["tokenizer"], what=checkpoint)
    model = build_model(cfg.model, tok.src_vocab_size, tok.tgt_vocab_size)
    model.load_state_dict(ckpt["model"])
    m = model.eval()

    def np(t):
        return t.detach().float().numpy()

    def linear(spec, lin, weight=None, bias=None):
        spec.weight = np(lin.weight) if weight is None else weight
        b = lin.bias if bias is None else bias
        if b is not None:
            spec.bias = np(b) if hasattr(b, "detach") else b

    def norm(spec, ln):
        spec.gamma, spec.beta = np(ln.weight), np(ln.bias)

    def fused(spec, lins):
        import numpy

        spec.weight = numpy.concatenate([np(lin.weight) for lin in lins])
        spec.bias = numpy.concatenate([np(lin.bias) for lin in lins])

    spec = transformer_spec.TransformerSpec.from_config(
        (len(m.encoder), len(m.decoder)),
        cfg.model.heads,
        pre_norm=True,
        activation=common_spec.Activation.RELU,
    )
    spec.config.layer_norm_epsilon = 1e-5  # torch's LayerNorm default
    spec.config.decoder_start_token = "<s>"
    positions = np(m.positions)
    for side, emb in ((spec.encoder, m.src_embed), (spec.decoder, m.tgt_embed)):
        embeddings = side.embeddings[0] if isinstance(side.embeddings, list) else side.embeddings
        embeddings.weight = np(emb.weight)
        side.scale_embeddings = True  # nmt multiplies embeddings by sqrt(d_model)
        side.position_encodings.encodings = positions
    norm(spec.encoder.layer_norm, m.enc_norm)
    norm(spec.decoder.layer_norm, m.dec_norm)
    for s, layer in zip(spec.encoder.layer, m.encoder):
        # nmt: q and kv (k then v) projections; CTranslate2: one fused q,k,v projection
        fused(s.self_attention.linear[0], [layer.attn.q, layer.attn.kv])
        linear(s.self_attention.linear[1], layer.attn.out)
        norm(s.self_attention.layer_norm, layer.norm1)
        linear(s.ffn.linear_0, layer.ffn[0])
        linear(s.ffn.linear_1, layer.ffn[3])
        norm(s.ffn.layer_norm, layer.norm2)
    for s, layer in zip(spec.decoder.layer, m.decoder):
        fused(s.self_attention.linear[0], [layer.self_attn.q, layer.self_attn.kv])
        linear(s.self_attention.linear[1], layer.self_attn.out)
        norm(s.self_attention.layer_norm, layer.norm1)
        linear(s.attention.linear[0], layer.cross_attn.q)
        linear(s.attention.linear[1], layer.cross_attn.kv)
        linear(s.attention.linear[2], layer.cross_attn.out)
        norm(s.attention.layer_norm, layer.norm2)
        linear(s.ffn.linear_0, layer.ffn[0])
        linear(s.ffn.linear_1, layer.ffn[3])
        norm(s.ffn.layer_norm, layer.norm3)
    spec.decoder.projection.weight = np(m.output.weight)
    spec.register_source_vocabulary(tok.src_pieces(list(range(tok.src_vocab_size))))
    spec.register_target_vocabulary(tok.tgt_pieces(list(range(tok.tgt_vocab_size))))
    spec.validate()
    spec.optimize(quantization=None)
    spec.save(out_dir)
    print(f"wrote {out_dir} (CTranslate2 {ctranslate2.__version__})", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    convert(sys.argv[1], sys.argv[2])
