"""`nmt export`: a trained Transformer as a CTranslate2 model folder, for fast CPU and GPU inference
outside nmt (as OpenNMT-py and fairseq models convert to it).

The weights map one to one: nmt's `q` and `kv` projections of self-attention become CTranslate2's
fused q/k/v projection, cross-attention keeps `q` and `kv` apart (as CTranslate2 does), the
embeddings are scaled by sqrt(d_model) and the position table (sinusoidal or learned) is added, as
in nmt. Pre-norm and post-norm stacks, any layer counts, shared or separate vocabularies and tied or
separate output matrices all convert. The folder also holds the SentencePiece model(s), so it is
self-contained: see docs/usage.md for translating with CTranslate2's own Python API.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
from torch import Tensor, nn

from nmt.checkpoint import load_checkpoint
from nmt.config import config_from_dict
from nmt.errors import NmtError, UsageError
from nmt.files import atomic_folder, atomic_write_text
from nmt.lock import hold
from nmt.models import build_model
from nmt.models.transformer import Transformer
from nmt.tokenizer import Tokenizer

FORMATS = ("ctranslate2",)
# what CTranslate2's converters accept for --quantization (None: the weights stay float32)
QUANTIZATIONS = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "float16", "bfloat16")


def ctranslate2_module() -> Any:
    """The ctranslate2 package, or one error line saying how to install it."""
    try:
        import ctranslate2
        from ctranslate2.specs import transformer_spec  # noqa: F401 - the converters' API
    except ImportError:
        raise NmtError(
            "nmt export --format ctranslate2 needs CTranslate2: pip install 'nmt[ctranslate2]' "
            "(or pip install ctranslate2)"
        ) from None
    return ctranslate2


def export(
    checkpoints: list[str], fmt: str, output: str, quantization: Optional[str] = None
) -> Path:
    """Convert the one checkpoint in `checkpoints` to `fmt` in the folder `output` (replaced whole,
    atomically); returns the folder."""
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    if quantization is not None and quantization not in QUANTIZATIONS:
        choices = ", ".join(QUANTIZATIONS)
        raise UsageError(f"--quantization {quantization}: expected one of {choices}")
    if len(checkpoints) != 1:
        raise UsageError(
            "nmt export converts one model: give one --checkpoint (an ensemble's members would "
            "each convert on their own; CTranslate2 has no ensemble)"
        )
    ckpt = load_checkpoint(checkpoints[0])
    cfg = config_from_dict(ckpt["config"], origin=f"{ckpt['path']} (config)")
    if cfg.model.arch != "transformer":
        raise NmtError(
            f"{ckpt['path']}: an RNN (model.arch: {cfg.model.arch}) does not export: CTranslate2 "
            "runs Transformers; translate it with nmt translate"
        )
    ct2 = ctranslate2_module()
    tok = Tokenizer.from_state(ckpt["tokenizer"], what=ckpt["path"])
    model = build_model(cfg.model, tok.src_vocab_size, tok.tgt_vocab_size)
    model.load_state_dict(ckpt["model"])
    spec = ctranslate2_spec(model.eval(), tok)
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise NmtError(f"--output {output}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "nmt_export.json").exists():
        # the folder is replaced whole: only an earlier export may be
        raise NmtError(f"--output {output}: a folder that holds other files; give a new one")
    spec.optimize(quantization=quantization)  # None: the weights stay float32
    with hold(out, "nmt export"), atomic_folder(out) as new:
        spec.save(str(new))
        files = tok.save(new)
        about = {
            "exported_from": ckpt["path"],
            "step": ckpt["train_state"]["step"],
            "ctranslate2": ct2.__version__,
            "quantization": quantization,
            "tokenizer": files,
            "source_eos": True,
            "decode": cfg.to_dict()["decode"],
            "languages": [cfg.data.src_lang, cfg.data.tgt_lang],
            # positions the model has: max_decoding_length (and the source) must stay below
            "max_positions": cfg.model.max_positions,
        }
        atomic_write_text(new / "nmt_export.json", json.dumps(about, indent=2) + "\n")
    return out


def ctranslate2_spec(m: Transformer, tok: Tokenizer) -> Any:
    """The CTranslate2 TransformerSpec holding `m`'s weights (float32)."""
    from ctranslate2.specs import common_spec, transformer_spec

    pre_norm = isinstance(m.enc_norm, nn.LayerNorm)
    spec = transformer_spec.TransformerSpec.from_config(
        (len(m.encoder), len(m.decoder)),
        m.encoder[0].attn.heads,
        pre_norm=pre_norm,
        activation=common_spec.Activation.RELU,
    )
    spec.config.layer_norm_epsilon = m.encoder[0].norm1.eps
    spec.config.decoder_start_token = "<s>"
    positions = array(m.positions)
    for side, emb in ((spec.encoder, m.src_embed), (spec.decoder, m.tgt_embed)):
        embeddings = side.embeddings[0] if isinstance(side.embeddings, list) else side.embeddings
        embeddings.weight = array(emb.weight)
        side.scale_embeddings = True  # nmt multiplies embeddings by sqrt(d_model)
        side.position_encodings.encodings = positions
    if pre_norm:  # post-norm layers end in their own norm: no final one
        norm(spec.encoder.layer_norm, m.enc_norm)
        norm(spec.decoder.layer_norm, m.dec_norm)
    for s, layer in zip(spec.encoder.layer, m.encoder):
        fused(s.self_attention.linear[0], [layer.attn.q, layer.attn.kv])
        linear(s.self_attention.linear[1], layer.attn.out)
        norm(s.self_attention.layer_norm, layer.norm1)
        feed_forward(s.ffn, layer.ffn, layer.norm2)
    for s, layer in zip(spec.decoder.layer, m.decoder):
        fused(s.self_attention.linear[0], [layer.self_attn.q, layer.self_attn.kv])
        linear(s.self_attention.linear[1], layer.self_attn.out)
        norm(s.self_attention.layer_norm, layer.norm1)
        linear(s.attention.linear[0], layer.cross_attn.q)
        linear(s.attention.linear[1], layer.cross_attn.kv)
        linear(s.attention.linear[2], layer.cross_attn.out)
        norm(s.attention.layer_norm, layer.norm2)
        feed_forward(s.ffn, layer.ffn, layer.norm3)
    spec.decoder.projection.weight = array(m.output.weight)
    spec.register_source_vocabulary(tok.src_pieces(list(range(tok.src_vocab_size))))
    spec.register_target_vocabulary(tok.tgt_pieces(list(range(tok.tgt_vocab_size))))
    spec.validate()
    return spec


def array(t: Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def linear(spec: Any, lin: nn.Linear) -> None:
    spec.weight = array(lin.weight)
    if lin.bias is not None:
        spec.bias = array(lin.bias)


def fused(spec: Any, lins: list[nn.Linear]) -> None:
    """One projection from several stacked by rows: [q; k; v]."""
    spec.weight = np.concatenate([array(lin.weight) for lin in lins])
    spec.bias = np.concatenate([array(lin.bias) for lin in lins])


def norm(spec: Any, ln: nn.Module) -> None:
    spec.gamma, spec.beta = array(ln.weight), array(ln.bias)


def feed_forward(spec: Any, ffn: nn.Sequential, ln: nn.LayerNorm) -> None:
    """FeedForward: Linear, ReLU, Dropout, Linear; CTranslate2 keeps the block's norm with it."""
    linear(spec.linear_0, ffn[0])
    linear(spec.linear_1, ffn[3])
    norm(spec.layer_norm, ln)
