#!/usr/bin/env python3
r"""Speed of `nmt` on this machine: training throughput
and MFU, decoding speed and BLEU; peers side by side.

    python scripts/benchmark.py --config configs/multi30k_en_de.yaml --checkpoint runs/x/best.pt \
        [--train-steps 20] [--threads 2] [--ct2] [--json bench.json]

- Training: `--train-steps` timed optimizer steps (after `--warmup` untimed ones) on the real
  bucketed batches of the config's prepared data (`nmt prepare` first), on the config's device and
  precision. Reports source/target tokens per second (padding excluded), the share of padding, time
  per step, peak memory, and model FLOPs utilisation: useful FLOPs (no padding; 6 x weights touched
  per token plus attention) per second over the peak of a large matmul measured in the same run.
- Decoding (with `--checkpoint`): test split of the checkpoint's prepared dir, greedy and beam 5
  (under both stopping rules: nmt's default and CTranslate2's, a sentence ends with 5 finished
  hypotheses, and early exit, OpenNMT-py's, it ends once its best continuation ends it), batched by
  length; sentences/s, generated target tokens/s, cased sacreBLEU. `--ct2` converts the same weights
  to CTranslate2 (`nmt export`, needs `pip install ctranslate2`) and decodes under the
  same length rule and nmt's default stopping rule, its only one (on a CPU in two thread layouts:
  one batch at a time, and batches side by side as nmt's workers decode them), printing nmt's speed
  as a multiple of the faster layout's. `--onmt`: OpenNMT-py's translator too (its beam search
  always exits early). `--repeat N`: N rounds of every engine in turn; each reports its fastest
  round (every round's time is in the JSON), the figure least disturbed by the rest of a shared
  machine.

Prints one table and, with --json, writes every
figure. Timings are wall clock; CUDA is synchronised.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nmt.config import load_config  # noqa: E402
from nmt.data import bucket_batches, read_lines, split_batch  # noqa: E402
from nmt.metrics import bleu_score  # noqa: E402
from nmt.precision import autocast_dtype, describe  # noqa: E402
from nmt.tokenizer import Tokenizer  # noqa: E402
from nmt.train import RunData, Trainer, pick_device  # noqa: E402
from nmt.translate import load_translator, translate_lines  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_matmul_flops(device: torch.device, dtype: torch.dtype) -> float:
    """Best FLOP/s of a large square matmul: the practical peak the MFU is measured against."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = (
        torch.randn(n, n, device=device, dtype=dtype),
        torch.randn(n, n, device=device, dtype=dtype),
    )
    best = float("inf")
    for _ in range(10 if device.type == "cuda" else 4):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def linear_weights(module: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))


def useful_flops(model, batch) -> float:
    """Training FLOPs (forward + backward = 3 x forward) of one batch, counting real tokens only."""
    src_len = (~batch.src_pad_mask).sum(1).double()
    tgt_len = (batch.tgt_out != 0).sum(1).double()
    d = model.d_model
    enc_w = sum(linear_weights(layer) for layer in model.encoder)
    dec_w = sum(linear_weights(layer) for layer in model.decoder) + model.output.weight.numel()
    fwd = 2 * (enc_w * src_len.sum() + dec_w * tgt_len.sum())
    # attention scores and weighted sums: 2 matmuls of 2*len_q*len_k*d per layer
    fwd += (
        4
        * d
        * (
            len(model.encoder) * (src_len**2).sum()
            + len(model.decoder) * (tgt_len**2 + tgt_len * src_len).sum()
        )
    )
    return 3 * float(fwd)


def step_groups(split, t, n: int) -> tuple[list, int]:
    """The first n optimizer steps' batch groups in training's order, epoch after epoch; and the
    steps in an epoch."""
    groups: list = []
    epoch, per_epoch = 0, 0
    while len(groups) < n:
        order = bucket_batches(split.src_lens, split.tgt_lens, t.max_tokens, t.seed, epoch)
        epoch_groups = [order[i : i + t.accum_steps] for i in range(0, len(order), t.accum_steps)]
        if not epoch_groups:
            raise SystemExit("no training batches in the prepared data")
        per_epoch = per_epoch or len(epoch_groups)
        groups += epoch_groups
        epoch += 1
    return groups[:n], per_epoch


def bench_train(cfg, steps: int, warmup: int, cudnn_attention: bool = False) -> dict:
    """Training steps as training takes them, epoch after epoch: on a GPU a warm-up of at least an
    epoch lets the timed steps meet batch shapes already seen, as nearly all of a run's steps do (a
    shape's first step can cost more: see choose_attention_kernels)."""
    device = pick_device(cfg.train.device)
    tok = Tokenizer.load(cfg.prepared_dir)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp), device, tok, RunData.load(cfg))
        # the A/B of choose_attention_kernels: torch's own choice, cuDNN first where it prefers it
        if cudnn_attention:
            torch.backends.cuda.enable_cudnn_sdp(True)
        split, t = trainer.train_split, cfg.train
        groups, per_epoch = step_groups(split, t, warmup + steps)
        pin = device.type == "cuda"
        times, warm, src_tok, tgt_tok, cells, real, flops = [], [], 0, 0, 0, 0, 0.0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for i, group in enumerate(groups):
            batches = [split_batch(split, ix, pin) for ix in group]
            sync(device)
            start = time.perf_counter()
            out = trainer.train_step(batches, sum(b.n_tgt for b in batches))
            sync(device)
            if out is None:
                raise SystemExit("out of memory: lower train.max_tokens")
            if i < warmup:  # kept: a slow start (allocator, kernel choice per new shape) shows here
                warm.append(time.perf_counter() - start)
            else:
                times.append(time.perf_counter() - start)
                for b in batches:
                    src_tok += b.n_src
                    tgt_tok += b.n_tgt
                    cells += b.src.numel() + b.tgt_out.numel()
                    flops += (
                        useful_flops(trainer.model, b)
                        if cfg.model.arch == "transformer"
                        else float("nan")
                    )
                real = src_tok + tgt_tok
        total = sum(times)
        peak = (
            torch.cuda.max_memory_allocated()
            if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        )
        # the peak of the format the matmuls run in
        dtype = autocast_dtype(device, cfg.train.precision) or torch.float32
        peak_flops = peak_matmul_flops(device, dtype)
        return {
            "device": str(device),
            "precision": describe(device, cfg.train.precision),
            "steps": steps,
            "max_tokens": t.max_tokens,
            "src_tokens_per_s": src_tok / total,
            "tgt_tokens_per_s": tgt_tok / total,
            "padding_share": 1 - real / cells,
            "step_seconds_mean": total / steps,
            "step_seconds_median": statistics.median(times),
            "peak_memory_mb": peak / 2**20,
            "model_tflops_per_s": flops / total / 1e12,
            "peak_matmul_tflops": peak_flops / 1e12,
            "peak_matmul_dtype": str(dtype).replace("torch.", ""),
            "mfu": flops / total / peak_flops,
            "warmup_steps": warmup,
            "warmup_seconds": sum(warm),
            "warmup_step_seconds": [round(x, 4) for x in warm],
            "steps_per_epoch": per_epoch,
            "cudnn_attention": torch.backends.cuda.cudnn_sdp_enabled()
            if device.type == "cuda"
            else None,
        }


def timed(
    entry: dict, seconds: float, sentences: int, tokens: int, out: list[str], refs: list[str]
) -> dict:
    """A decoding result: `entry` (engine, beam, ...) with its time, speeds, BLEU and output."""
    return {
        **entry,
        "seconds": seconds,
        "sentences": sentences,
        "tgt_tokens": tokens,
        "sentences_per_s": sentences / seconds,
        "tgt_tokens_per_s": tokens / seconds,
        "bleu": bleu_score(out, refs),
        "output": out,
    }


def nmt_decoder(
    checkpoint: str,
    device: str | None,
    beams: list[int],
    limit: int,
    precision: str = "auto",
    workers: int | None = None,
    cudnn_attention: bool = False,
) -> tuple[Callable[[], dict], object, list[str], list[str]]:
    """A function that decodes the test split once per setting (greedy, beam 5 under both stopping
    rules) and returns the results by name; and the translator, sources and references it uses."""
    tr = load_translator(checkpoint, device, precision, workers)
    if cudnn_attention:  # see --cudnn-attention
        torch.backends.cuda.enable_cudnn_sdp(True)
    pdir = tr.cfg.prepared_dir
    src, refs = read_lines(pdir / "test.src.txt")[:limit], read_lines(pdir / "test.tgt.txt")[:limit]
    translate_lines(tr, src[:64], replace(tr.settings(), beam=1))  # warm-up: allocator, kernels

    def run() -> dict:
        results = {}
        for beam, early in runs(beams):
            sync(tr.device)
            start = time.perf_counter()
            hyps = translate_lines(tr, src, replace(tr.settings(), beam=beam, early_exit=early))
            sync(tr.device)
            seconds = time.perf_counter() - start
            out = tr.tok.decode_tgt([h[0].tokens for h in hyps])
            n_tok = sum(len(h[0].tokens) for h in hyps)  # EOS excluded, as in CTranslate2's count
            entry = {
                "engine": "nmt",
                "precision": tr.precision,
                "workers": tr.workers,
                "beam": beam,
                "early_exit": early,
            }
            results[f"nmt_beam{beam}" + ("_early" if early else "")] = timed(
                entry, seconds, len(src), n_tok, out, refs
            )
        return results

    return run, tr, src, refs


def runs(beams: list[int]) -> list[tuple[int, bool]]:
    """(beam, early exit) pairs to decode with: beam search under both stopping rules (nmt's
    default, fairseq's and CTranslate2's: a sentence ends with `beam` finished hypotheses; and early
    exit, OpenNMT-py's: it ends once its best continuation ends it), greedy once."""
    return [(beam, early) for beam in beams for early in ((False, True) if beam > 1 else (False,))]


def ct2_compute_types(device: str, asked: Optional[list[str]] = None) -> list[str]:
    """The CTranslate2 compute types to time: `asked`, or every one it supports on the device
    (float32 and the int8 variants on a CPU, and bfloat16/float16 on a GPU), so that nmt is compared
    with CTranslate2's fastest mode on this machine, found by trying them."""
    import ctranslate2

    supported = ctranslate2.get_supported_compute_types(device)
    order = ["float32", "int8", "int8_float32", "bfloat16", "int8_bfloat16", "float16"]
    wanted = asked or [c for c in order if c in supported]
    unknown = [c for c in wanted if c not in supported]
    if unknown:
        raise SystemExit(f"--ct2-compute-types: {unknown[0]} is not supported on {device} here")
    return wanted


def ct2_decoder(
    tr,
    src: list[str],
    refs: list[str],
    beams: list[int],
    threads: int,
    stack: ExitStack,
    compute_types: Optional[list[str]] = None,
) -> Callable[[], dict]:
    """A function that decodes with CTranslate2 on the same weights (converted once, into a folder
    `stack` removes), batches and length rule, and returns the results by name. It runs every
    compute type (ct2_compute_types) in every layout: on a CPU with all threads on one batch at a
    time, and with batches side by side as nmt decodes them (inter_threads = nmt's workers, each
    with its share of the threads); the fastest is what nmt is compared with. Its beam search (4.x)
    has one stopping rule, nmt's default: a sentence ends with beam_size x patience (1) finished
    hypotheses."""
    import ctranslate2

    from nmt.export import export

    dev = "cuda" if tr.device.type == "cuda" else "cpu"
    layouts = (
        [(1, threads)]
        if dev == "cuda" or tr.workers == 1
        else [(1, threads), (tr.workers, max(threads // tr.workers, 1))]
    )
    types = ct2_compute_types(dev, compute_types)
    pieces = [tr.tok.src_pieces(ids) + ["</s>"] for ids in tr.tok.encode_src(src)]
    d = tr.cfg.decode
    tmp = stack.enter_context(tempfile.TemporaryDirectory())
    export([tr.path], "ctranslate2", tmp)

    def run() -> dict:
        results = {}
        for compute_type, (inter, intra) in itertools.product(types, layouts):
            model = ctranslate2.Translator(
                tmp,
                device=dev,
                compute_type=compute_type,
                inter_threads=inter,
                intra_threads=intra if dev == "cpu" else 0,
            )
            cap = tr.cfg.model.max_positions - 1  # CTranslate2 has no positions beyond
            model.translate_batch(pieces[:64], beam_size=1, max_decoding_length=cap)  # warm-up
            for beam in beams:
                start = time.perf_counter()
                # the same length rule as nmt (a * source length + b), per length-sorted batch
                order = sorted(range(len(pieces)), key=lambda i: len(pieces[i]))
                batch_sents = max(d.max_tokens // beam // max(len(pieces[order[-1]]), 1), 1)
                batches = [order[k : k + batch_sents] for k in range(0, len(order), batch_sents)]
                pending = []
                # with inter_threads > 1, batches are queued and decoded side by side
                for idx in batches:
                    limit = int(d.max_len_a * max(len(pieces[i]) for i in idx)) + d.max_len_b
                    limit = min(limit, cap)  # as nmt caps it
                    pending.append(
                        model.translate_batch(
                            [pieces[i] for i in idx],
                            beam_size=beam,
                            max_decoding_length=limit,
                            length_penalty=d.alpha,
                            max_batch_size=0,
                            asynchronous=inter > 1,
                        )
                    )
                texts = [""] * len(pieces)
                for idx, res in zip(batches, pending):
                    for i, r in zip(idx, res):
                        texts[i] = (r.result() if inter > 1 else r).hypotheses[0]
                seconds = time.perf_counter() - start
                out = [
                    " ".join(
                        tr.tok.tgt.decode_pieces(
                            [t for t in toks if t not in ("</s>", "<s>")]
                        ).split()
                    )
                    for toks in texts
                ]
                n_tok = sum(len([t for t in toks if t not in ("</s>", "<s>")]) for toks in texts)
                name = f"ct2_{compute_type}_beam{beam}" + (f"_inter{inter}" if inter > 1 else "")
                # its beam search ends a sentence with beam_size x patience (1) finished hypotheses
                entry = {
                    "engine": f"ctranslate2 {ctranslate2.__version__}",
                    "precision": compute_type,
                    "inter_threads": inter,
                    "intra_threads": intra,
                    "beam": beam,
                    "early_exit": False,
                }
                results[name] = timed(entry, seconds, len(src), n_tok, out, refs)
            del model
        # CTranslate2 sets the process's OpenMP thread count to its intra_threads
        torch.set_num_threads(threads)
        return results

    return run


ONMT_CONFIG = """
src_vocab: {d}/vocab.txt
tgt_vocab: {d}/vocab.txt
share_vocab: true
data:
  corpus_1: {{path_src: {d}/train.src, path_tgt: {d}/train.tgt}}
save_model: {d}/model
save_checkpoint_steps: 100000
train_steps: {steps}
report_every: {report}
seed: 1
encoder_type: transformer
decoder_type: transformer
enc_layers: {enc}
dec_layers: {dec}
hidden_size: {d_model}
word_vec_size: {d_model}
heads: {heads}
transformer_ff: {ffn}
dropout: [{dropout}]
attention_dropout: [{attn_dropout}]
position_encoding: true
self_attn_type: scaled-dot
share_embeddings: true
share_decoder_embeddings: true
label_smoothing: {smoothing}
batch_type: tokens
batch_size: {max_tokens}
normalization: tokens
optim: adam
adam_beta1: 0.9
adam_beta2: 0.98
learning_rate: 2.0
decay_method: noam
warmup_steps: 1000
max_grad_norm: 1.0
param_init: 0
param_init_glorot: true
num_workers: 0
world_size: 1
gpu_ranks: []
"""


def bench_onmt_train(cfg, steps: int, warmup: int, threads: int) -> dict:
    """OpenNMT-py (`onmt_train` on PATH) on the same pieces,
    model size, batch size and threads (CPU only)."""
    import os
    import re
    import subprocess

    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(cfg.prepared_dir / "spm.model"))
    report = 5
    with tempfile.TemporaryDirectory() as d:
        for side in ("src", "tgt"):
            lines = read_lines(cfg.prepared_dir / f"train.{side}.txt")
            Path(d, f"train.{side}").write_text(
                "".join(" ".join(p) + "\n" for p in sp.encode(lines, out_type=str)),
                encoding="utf-8",
            )
        # counts that fall with the id: OpenNMT-py's frequency order is then nmt's id order
        Path(d, "vocab.txt").write_text(
            "".join(f"{sp.id_to_piece(i)}\t{10**7 - i}\n" for i in range(4, sp.get_piece_size())),
            encoding="utf-8",
        )
        m = cfg.model
        Path(d, "train.yaml").write_text(
            ONMT_CONFIG.format(
                d=d,
                steps=warmup + steps,
                report=report,
                enc=m.layers,
                dec=m.dec_layers or m.layers,
                d_model=m.d_model,
                heads=m.heads,
                ffn=m.ffn,
                dropout=m.dropout,
                attn_dropout=m.attn_dropout,
                smoothing=cfg.train.label_smoothing,
                max_tokens=cfg.train.max_tokens,
            )
        )
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(threads),
            "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1",
        }
        proc = subprocess.run(
            ["onmt_train", "-config", f"{d}/train.yaml"], capture_output=True, text=True, env=env
        )
        rates = [
            (int(a), int(b))
            for a, b in re.findall(r"(\d+)/\s*(\d+) tok/s", proc.stdout + proc.stderr)
        ]
        if proc.returncode or not rates:
            raise SystemExit(f"onmt_train failed:\n{proc.stderr[-3000:]}")
        timed = rates[warmup // report :] or rates  # the first reports include start-up
        return {
            "engine": "OpenNMT-py",
            "src_tokens_per_s": statistics.mean(r[0] for r in timed),
            "tgt_tokens_per_s": statistics.mean(r[1] for r in timed),
            "reports": rates,
        }


def onmt_state(model, onmt_vocab: list[str], our_pieces: list[str]) -> tuple[dict, dict]:
    """nmt Transformer weights under OpenNMT-py 3.5 names (pre-norm, q/k/v and ffn biases).
    OpenNMT-py puts <unk> at 0 and its pad <blank> at 1, where nmt has <pad> 0 and <unk> 1: rows 0
    and 1 swap."""
    if onmt_vocab[4:] != our_pieces[4:]:
        raise SystemExit("OpenNMT-py built another vocabulary order; cannot transplant the weights")
    perm = torch.tensor([1, 0, *range(2, len(our_pieces))])
    d, out = model.d_model, {}

    def lin(name, layer, weight=None, bias=None):
        out[f"{name}.weight"] = layer.weight if weight is None else weight
        out[f"{name}.bias"] = layer.bias if bias is None else bias

    def attn(name, a):
        lin(f"{name}.linear_query", a.q)
        lin(f"{name}.linear_keys", a.kv, a.kv.weight[:d], a.kv.bias[:d])
        lin(f"{name}.linear_values", a.kv, a.kv.weight[d:], a.kv.bias[d:])
        lin(f"{name}.final_linear", a.out)

    def ffn(name, f, norm):
        lin(f"{name}.w_1", f[0])
        lin(f"{name}.w_2", f[3])
        lin(f"{name}.layer_norm", norm)

    for side, emb in (("encoder", model.src_embed), ("decoder", model.tgt_embed)):
        out[f"{side}.embeddings.make_embedding.emb_luts.0.weight"] = emb.weight[perm]
    for i, layer in enumerate(model.encoder):
        attn(f"encoder.transformer.{i}.self_attn", layer.attn)
        lin(f"encoder.transformer.{i}.layer_norm", layer.norm1)
        ffn(f"encoder.transformer.{i}.feed_forward", layer.ffn, layer.norm2)
    lin("encoder.layer_norm", model.enc_norm)
    for i, layer in enumerate(model.decoder):
        name = f"decoder.transformer_layers.{i}"
        attn(f"{name}.self_attn", layer.self_attn)
        lin(f"{name}.layer_norm_1", layer.norm1)
        attn(f"{name}.context_attn", layer.cross_attn)
        lin(f"{name}.layer_norm_2", layer.norm2)
        ffn(f"{name}.feed_forward", layer.ffn, layer.norm3)
    lin("decoder.layer_norm", model.dec_norm)
    generator = {"weight": model.output.weight[perm], "bias": torch.zeros(len(our_pieces))}
    return {k: v.detach().clone() for k, v in out.items()}, generator


def onmt_decoder(
    tr, src: list[str], refs: list[str], beams: list[int], threads: int, stack: ExitStack
) -> Callable[[], dict]:
    """A function that decodes with OpenNMT-py's translator on the
    same weights (transplanted once into a checkpoint it wrote itself,
    in a folder `stack` removes) and returns the results by name."""
    import os
    import re
    import subprocess

    cfg, m = tr.cfg, tr.cfg.model
    pieces = tr.tok.tgt_pieces(list(range(tr.tok.tgt_vocab_size)))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    d = stack.enter_context(tempfile.TemporaryDirectory())
    sources = [" ".join(tr.tok.src_pieces(ids) + ["</s>"]) for ids in tr.tok.encode_src(src)]
    for side in ("src", "tgt"):  # a one-step run only to get a checkpoint of the right shape
        Path(d, f"train.{side}").write_text("\n".join(sources[:64]) + "\n", encoding="utf-8")
    Path(d, "vocab.txt").write_text(
        "".join(f"{p}\t{10**7 - i}\n" for i, p in enumerate(pieces) if i >= 4), encoding="utf-8"
    )
    Path(d, "train.yaml").write_text(
        ONMT_CONFIG.format(
            d=d,
            steps=1,
            report=1,
            enc=m.layers,
            dec=m.dec_layers or m.layers,
            d_model=m.d_model,
            heads=m.heads,
            ffn=m.ffn,
            dropout=0.0,
            attn_dropout=0.0,
            smoothing=0.0,
            max_tokens=4096,
        )
        + "add_qkvbias: true\nadd_ffnbias: true\nnorm_eps: 1e-5\n"
        + "save_checkpoint_steps: 1\n"
    )
    proc = subprocess.run(
        ["onmt_train", "-config", f"{d}/train.yaml"], capture_output=True, text=True, env=env
    )
    if proc.returncode:
        raise SystemExit(f"onmt_train failed:\n{proc.stderr[-3000:]}")
    ckpt = torch.load(f"{d}/model_step_1.pt", weights_only=False)
    model_state, generator = onmt_state(tr.model.float(), ckpt["vocab"]["src"], pieces)
    missing = (
        set(ckpt["model"]) - set(model_state) - {k for k in ckpt["model"] if k.endswith(".pe.pe")}
    )
    if missing:
        raise SystemExit(f"OpenNMT-py weights not mapped: {sorted(missing)[:5]}")
    ckpt["model"].update(model_state)
    ckpt["generator"] = generator
    torch.save(ckpt, f"{d}/nmt.pt")
    Path(d, "test.src").write_text("\n".join(sources) + "\n", encoding="utf-8")

    def run() -> dict:
        results = {}
        for beam in beams:
            d_cfg = cfg.decode
            cmd = [
                "onmt_translate",
                "-model",
                f"{d}/nmt.pt",
                "-src",
                f"{d}/test.src",
                "-output",
                f"{d}/out.{beam}",
                "-beam_size",
                str(beam),
                "-batch_type",
                "tokens",
                "-batch_size",
                str(d_cfg.max_tokens // beam),
                "-length_penalty",
                "wu",
                "-alpha",
                str(d_cfg.alpha),
                "-max_length",
                str(int(d_cfg.max_len_a * 64) + d_cfg.max_len_b),
                "-report_time",
                "-gpu",
                "-1",
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            found = re.search(r"Total translation time \(s\): ([0-9.]+)", proc.stdout + proc.stderr)
            if proc.returncode or not found:
                raise SystemExit(f"onmt_translate failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
            seconds = float(found.group(1))
            outs = Path(d, f"out.{beam}").read_text(encoding="utf-8").split("\n")[: len(src)]
            toks = [[t for t in line.split() if t not in ("</s>", "<s>")] for line in outs]
            hyps = [" ".join(tr.tok.tgt.decode_pieces(t).split()) for t in toks]
            # its beam search always exits early
            entry = {"engine": "OpenNMT-py translator", "beam": beam, "early_exit": beam > 1}
            results[f"onmt_beam{beam}"] = timed(
                entry, seconds, len(src), sum(map(len, toks)), hyps, refs
            )
        return results

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument(
        "--set", action="append", default=[], dest="sets", help="config override section.key=value"
    )
    ap.add_argument("--checkpoint", help="trained checkpoint for the decoding benchmark")
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch (and CTranslate2) CPU threads; 0 = torch's default",
    )
    ap.add_argument(
        "--limit", type=int, default=100000, help="decode at most this many test sentences"
    )
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument(
        "--ct2", action="store_true", help="also decode with CTranslate2 (same weights, converted)"
    )
    ap.add_argument(
        "--ct2-compute-types",
        nargs="+",
        metavar="TYPE",
        help="CTranslate2 compute types to time (default: every one it supports on the device)",
    )
    ap.add_argument(
        "--onmt",
        action="store_true",
        help="also run OpenNMT-py (onmt_train/onmt_translate on PATH): training on the "
        "same data and model size; decoding with the checkpoint's weights transplanted (CPU)",
    )
    ap.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="nmt's decoding weights (nmt translate --precision)",
    )
    ap.add_argument(
        "--workers",
        type=int,
        help="nmt's batches decoded side by side (nmt translate --workers; default: its own)",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="decode this many rounds, every engine in turn, and report each "
        "engine's fastest round (all are in the JSON)",
    )
    ap.add_argument(
        "--cudnn-attention",
        action="store_true",
        help="on a GPU, let scaled_dot_product_attention pick "
        "cuDNN's kernels as torch would (nmt leaves them out: see "
        "nmt.precision.choose_attention_kernels)",
    )
    ap.add_argument("--json", help="write every figure here")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error(f"--repeat {args.repeat}: at least 1 round")
    if args.threads:
        torch.set_num_threads(args.threads)
    # every engine gets these (CTranslate2 changes torch's count: not read again)
    threads = torch.get_num_threads()
    cfg = load_config(args.config, args.sets)
    report = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_threads": threads,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch": torch.__version__,
        },
        "config": args.config,
        "sets": args.sets,
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(sys.argv),
    }
    if not args.no_train:
        report["train"] = bench_train(cfg, args.train_steps, args.warmup, args.cudnn_attention)
        if args.onmt:
            onmt = bench_onmt_train(cfg, args.train_steps, args.warmup, threads)
            onmt["nmt_speedup"] = report["train"]["tgt_tokens_per_s"] / onmt["tgt_tokens_per_s"]
            report["train_onmt"] = onmt
    if args.checkpoint:
        beams = [1, 5]
        with ExitStack() as stack:
            nmt_run, tr, src, refs = nmt_decoder(
                args.checkpoint,
                None,
                beams,
                args.limit,
                args.precision,
                args.workers,
                args.cudnn_attention,
            )
            engines = [nmt_run]
            if args.ct2:
                sys.path.insert(0, str(Path(__file__).resolve().parent))
                engines.append(
                    peer(
                        "CTranslate2",
                        report,
                        lambda: ct2_decoder(
                            tr, src, refs, beams, threads, stack, args.ct2_compute_types
                        ),
                    )
                )
            if args.onmt and tr.device.type == "cpu":
                # the transplant reads float32 weights
                fp32 = load_translator(args.checkpoint, None, "fp32")
                engines.append(
                    peer(
                        "OpenNMT-py",
                        report,
                        lambda: onmt_decoder(fp32, src, refs, beams, threads, stack),
                    )
                )
            decode: dict = {}
            outputs: dict = {}
            # rounds of every engine in turn: a slow spell of the host hits them alike
            for _ in range(args.repeat):
                for run in engines:
                    add_round(decode, outputs, run())
        add_ratios(decode)
        report["decode"] = decode
    print_table(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


def peer(name: str, report: dict, build: Callable[[], Callable[[], dict]]) -> Callable[[], dict]:
    """A peer's decoder that cannot stop the benchmark: if building or running it fails (a peer
    built for another CUDA, a converter that rejects the model), the error is printed and kept in
    the report under `peer_errors`, and nmt's own figures are still reported."""

    def failed(e: Exception) -> dict:
        message = f"{type(e).__name__}: {e}".strip().splitlines()[0]
        print(f"{name} failed, left out: {message}", file=sys.stderr)
        report.setdefault("peer_errors", {})[name] = message
        return {}

    try:
        run = build()
    except Exception as e:  # noqa: BLE001 - any failure of a peer is reported, not raised
        return lambda err=e: failed(err)  # bound now: `e` is unset after the except block

    def guarded() -> dict:
        try:
            return run()
        except Exception as e:  # noqa: BLE001
            return failed(e)

    return guarded


def add_round(decode: dict, outputs: dict, results: dict) -> None:
    """Merge one round of an engine's results into `decode`: every round's time is kept
    (`seconds_rounds`), and the fastest is the one reported (`seconds` and the speeds; the minimum
    is the least disturbed by the rest of the machine). Decoding is deterministic: a round whose
    output differs from the first round's (kept in `outputs`, by name) is an error."""
    for name, r in results.items():
        out = r.pop("output")
        if name not in decode:
            decode[name], outputs[name] = {**r, "seconds_rounds": [r["seconds"]]}, out
            continue
        kept = decode[name]
        if out != outputs[name]:
            raise SystemExit(
                f"{name}: round {len(kept['seconds_rounds']) + 1} "
                "translated differently from round 1"
            )
        kept["seconds_rounds"].append(r["seconds"])
        kept["seconds"] = min(kept["seconds_rounds"])
        kept["sentences_per_s"], kept["tgt_tokens_per_s"] = (
            kept["sentences"] / kept["seconds"],
            kept["tgt_tokens"] / kept["seconds"],
        )


def add_ratios(decode: dict) -> None:
    """nmt's speed as a multiple of each peer's, at the same beam: CTranslate2's fastest compute
    type and thread layout under the same stopping rule (speed_vs_ct2, fastest_ct2 names it), and
    OpenNMT-py, whose beam search always exits early (speed_vs_onmt)."""
    for r in (r for name, r in decode.items() if name.startswith("nmt_")):
        ct2 = [
            (c["seconds"], name)
            for name, c in decode.items()
            if name.startswith("ct2_")
            and (c["beam"], c["early_exit"]) == (r["beam"], r["early_exit"])
        ]
        if ct2:
            seconds, name = min(ct2)
            c = decode[name]
            r["speed_vs_ct2"] = seconds / r["seconds"]
            r["fastest_ct2"] = f"{c['precision']}, {c['inter_threads']} translator(s)"
        if f"onmt_beam{r['beam']}" in decode:
            r["speed_vs_onmt"] = decode[f"onmt_beam{r['beam']}"]["seconds"] / r["seconds"]


def print_table(report: dict) -> None:
    m = report["machine"]
    print(
        f"machine: {m['cuda'] or m['processor'] or m['platform']}, {m['cpu_threads']} CPU threads, "
        f"torch {m['torch']}"
    )
    if "train" in report:
        t = report["train"]
        attention = {True: ", cuDNN attention allowed", False: ", cuDNN attention left out"}.get(
            t.get("cudnn_attention"), ""
        )
        print(
            f"training ({t['device']}, {t['precision']}{attention}, max_tokens {t['max_tokens']}, "
            f"{t['steps']} steps):"
        )
        print(
            f"  target tokens/s {t['tgt_tokens_per_s']:,.0f}   source tokens/s "
            f"{t['src_tokens_per_s']:,.0f}   padding {t['padding_share']:.1%}"
        )
        print(
            f"  step {t['step_seconds_mean'] * 1000:.1f} ms mean, "
            f"{t['step_seconds_median'] * 1000:.1f} ms median   peak memory "
            f"{t['peak_memory_mb']:,.0f} MB"
        )
        if t.get("warmup_steps"):
            w = t["warmup_step_seconds"]
            print(
                f"  {t['warmup_steps']} untimed warm-up steps ({t['steps_per_epoch']} make an "
                f"epoch) took {t['warmup_seconds']:.2f} s "
                f"(first {w[0] * 1000:.0f} ms, last {w[-1] * 1000:.0f} ms; each in the JSON)"
            )
        if t["mfu"] == t["mfu"]:  # not NaN: FLOPs are counted for the Transformer only
            print(
                f"  model {t['model_tflops_per_s'] * 1000:.1f} GFLOP/s of a measured "
                f"{t['peak_matmul_tflops'] * 1000:.0f} GFLOP/s "
                f"{t['peak_matmul_dtype']} matmul peak: MFU {t['mfu']:.2%}"
            )
    if "train_onmt" in report:
        o = report["train_onmt"]
        print(
            "  OpenNMT-py, same data/model/batch/threads: target tokens/s "
            f"{o['tgt_tokens_per_s']:,.0f}, "
            f"source {o['src_tokens_per_s']:,.0f}: nmt is {o['nmt_speedup']:.2f}x faster"
        )
    for name, message in report.get("peer_errors", {}).items():
        print(f"{name}: failed, left out ({message})")
    for name, r in report.get("decode", {}).items():
        ratio = (
            f"   {r['speed_vs_ct2']:.2f}x CTranslate2's speed (its fastest: {r['fastest_ct2']}, "
            "same rule)"
            if "speed_vs_ct2" in r
            else ""
        )
        ratio += (
            f", {r['speed_vs_onmt']:.2f}x OpenNMT-py's (early exit)" if "speed_vs_onmt" in r else ""
        )
        name += f" {r['precision']}" if r.get("precision") else ""
        name += f" x{r['workers']}" if r.get("workers", 1) > 1 else ""
        name = name.replace("_early", "") + (
            " early" if r.get("early_exit") and r["beam"] > 1 else ""
        )
        rounds = r.get("seconds_rounds", [])
        ratio += (
            f"   (fastest of {' / '.join(f'{x:.2f}' for x in rounds)} s)" if len(rounds) > 1 else ""
        )
        print(
            f"decode {name:>21}: {r['seconds']:6.2f} s  {r['sentences_per_s']:7.1f} sent/s  "
            f"{r['tgt_tokens_per_s']:8,.0f} tok/s  BLEU {r['bleu']:.2f}{ratio}"
        )


if __name__ == "__main__":
    main()
