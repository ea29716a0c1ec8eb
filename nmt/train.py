"""Stage 2: the training loop, its state, the learning-rate schedule, the loss, validation, checkpoints.

One optimizer step = `accum_steps` token-budget batches; the loss is summed over real target
tokens and divided by their total, so accumulation gives the same gradient as one big batch.
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import sacrebleu
import sentencepiece
import torch
import torch.nn.functional as F
import yaml
from tqdm import tqdm

from nmt.checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from nmt.config import Config
from nmt.data import (
    Batch,
    Split,
    bucket_batches,
    load_split,
    read_lines,
    read_manifest,
    split_batch,
)
from nmt.errors import NmtError
from nmt.interrupt import GracefulStop
from nmt.metrics import bleu_score
from nmt.models import build_model, count_parameters
from nmt.search import decode_corpus
from nmt.tokenizer import BOS, EOS, PAD, Tokenizer

MAX_NONFINITE_IN_ROW = 10


@dataclass
class TrainState:
    step: int = 0  # optimizer steps taken
    epoch: int = 0
    batch_in_epoch: int = 0  # index of the next batch of this epoch
    best_bleu: float = -1.0
    best_loss: float = float("inf")  # valid loss at the best step: breaks BLEU ties
    best_step: int = 0
    bad_evals: int = 0  # validations since the best one (early stopping)
    skipped_steps: int = 0  # updates skipped for a non-finite loss or gradient
    nonfinite_in_row: int = 0  # consecutive skipped updates; MAX_NONFINITE_IN_ROW stops the run
    train_tokens: int = 0
    train_seconds: float = 0.0


def lr_at(step: int, peak: float, warmup: int) -> float:
    """Linear warmup to `peak` over `warmup` steps, then inverse-square-root decay (constant if warmup=0)."""
    if warmup == 0:
        return peak
    step = max(step, 1)
    return peak * min(step / warmup, math.sqrt(warmup / step))


def loss_fn(logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Label-smoothed cross-entropy and plain NLL, both summed over non-pad targets.

    logits (B, T, V), target (B, T). Smoothing spreads `smoothing` uniformly over the vocabulary.
    """
    lp = F.log_softmax(logits.float(), dim=-1).view(-1, logits.size(-1))
    target = target.reshape(-1)
    real = target != PAD
    nll = -lp.gather(1, target[:, None]).squeeze(1)
    uniform = -lp.mean(dim=-1)
    loss = (1.0 - smoothing) * nll + smoothing * uniform
    return loss[real].sum(), nll[real].sum()


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise NmtError("train.device: cuda requested but no CUDA device is available")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def autocast_for(device: torch.device, precision: str):
    """bf16 autocast on CUDA (precision auto/bf16); fp32 everywhere else."""
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


def environment() -> dict:
    """Versions, git commit and command line: recorded in the run directory for reproducibility."""
    try:
        here = Path(__file__).resolve().parent
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        commit = r.stdout.strip() if r.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sentencepiece": sentencepiece.__version__,
        "sacrebleu": sacrebleu.__version__,
        "git_commit": commit or None,
        "command": sys.argv,
        "machine": platform.machine(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


class Trainer:
    """Holds what one run needs; `run()` is the loop. Created only through `train()`."""

    def __init__(self, cfg: Config, run_dir: Path, device: torch.device, tok: Tokenizer, train_split: Split, valid_split: Split, valid_refs: list[str]):
        self.cfg, self.run_dir, self.device, self.tok = cfg, run_dir, device, tok
        self.train_split, self.valid_split, self.valid_refs = train_split, valid_split, valid_refs
        torch.manual_seed(cfg.train.seed)
        self.model = build_model(cfg.model, tok.src_vocab_size, tok.tgt_vocab_size).to(device)
        t = cfg.train
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=t.lr, betas=t.betas, eps=t.adam_eps, weight_decay=t.weight_decay,
            fused=device.type == "cuda",
        )
        self.state = TrainState()
        self.metrics_path = run_dir / "metrics.jsonl"

    # --- checkpoints ---
    def payload(self) -> dict:
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "config": self.cfg.to_dict(),
            "tokenizer": self.tok.to_state(),
            "tokenizer_sha256": self.tok.sha256,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "train_state": asdict(self.state),
            "rng": rng,
        }

    def restore(self, ckpt: dict) -> None:
        if ckpt["tokenizer_sha256"] != self.tok.sha256:
            raise NmtError(f"{ckpt['path']}: trained with a different tokenizer than {self.cfg.prepared_dir}; refusing to resume")
        for section in ("model", "data"):
            if ckpt["config"][section] != self.cfg.to_dict()[section]:
                changed = sorted(k for k, v in self.cfg.to_dict()[section].items() if ckpt["config"][section].get(k) != v)
                raise NmtError(f"{ckpt['path']}: cannot resume with a changed {section} config ({', '.join(f'{section}.{k}' for k in changed)})")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.state = TrainState(**ckpt["train_state"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if "cuda" in ckpt["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])

    def save(self, name: str, payload: Optional[dict] = None) -> None:
        save_checkpoint(self.run_dir / name, payload or self.payload())

    # --- one step ---
    def train_step(self, batches: list[Batch]) -> tuple[float, int, bool]:
        """Forward/backward over the micro-batches, then one update. Returns (loss per token, tokens, updated)."""
        self.model.train()
        n_tgt = sum(b.n_tgt for b in batches)
        total = torch.zeros((), device=self.device)
        for b in batches:
            b = b.to(self.device)
            with autocast_for(self.device, self.cfg.train.precision):
                logits = self.model(b.src, b.src_pad_mask, b.tgt_in)
            loss, _ = loss_fn(logits, b.tgt_out, self.cfg.train.label_smoothing)
            (loss / n_tgt).backward()
            total += loss.detach()
        lr = lr_at(self.state.step + 1, self.cfg.train.lr, self.cfg.train.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        clip = self.cfg.train.clip_norm if self.cfg.train.clip_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        ok = bool(torch.isfinite(norm))
        if ok:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(total) / n_tgt, n_tgt, ok

    # --- validation ---
    @torch.no_grad()
    def validate(self) -> dict:
        """Valid loss/perplexity (teacher forced, no smoothing) and greedy sacreBLEU against the raw references."""
        self.model.eval()
        nll_sum, n = 0.0, 0
        for index in bucket_batches(self.valid_split.src_lens, self.valid_split.tgt_lens, self.cfg.train.max_tokens):
            b = split_batch(self.valid_split, index).to(self.device)
            with autocast_for(self.device, self.cfg.train.precision):
                logits = self.model(b.src, b.src_pad_mask, b.tgt_in)
            nll_sum += float(loss_fn(logits, b.tgt_out, 0.0)[1])
            n += b.n_tgt
        out = {"valid_loss": nll_sum / n, "valid_ppl": math.exp(min(nll_sum / n, 50.0))}
        if self.cfg.train.valid_bleu:
            hyps = self.translate_split(self.valid_split, beam=1)
            out["valid_bleu"] = bleu_score(hyps, self.valid_refs)
        return out

    def translate_split(self, split: Split, beam: int) -> list[str]:
        d, m = self.cfg.decode, self.cfg.model
        src_ids = [split.src(i).tolist() for i in range(len(split))]
        with autocast_for(self.device, self.cfg.train.precision):
            hyps = decode_corpus(
                self.model, src_ids, self.device, d.max_tokens, beam, d.alpha, d.max_len_a, d.max_len_b, m.max_positions, BOS, EOS
            )
        return self.tok.decode_tgt([h[0].tokens for h in hyps])

    def log(self, record: dict) -> None:
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def after_validation(self, metrics: dict) -> bool:
        """Update best/early-stopping state, write checkpoints; True when patience is exhausted."""
        s, t = self.state, self.cfg.train
        bleu, loss = metrics.get("valid_bleu", 0.0), metrics["valid_loss"]
        improved = bleu > s.best_bleu or (bleu == s.best_bleu and loss < s.best_loss)
        if improved:
            s.best_bleu, s.best_loss, s.best_step, s.bad_evals = bleu, loss, s.step, 0
        else:
            s.bad_evals += 1
        payload = self.payload()
        if improved:
            self.save("best.pt", payload)
        self.save("last.pt", payload)
        return t.patience > 0 and s.bad_evals >= t.patience

    def run(self) -> Optional[str]:
        """Train until a stopping rule fires; return the signal name if a SIGINT/SIGTERM stopped it."""
        s, t = self.state, self.cfg.train
        bar = tqdm(total=t.max_steps, initial=s.step, disable=not t.progress, unit="step", dynamic_ncols=True, file=sys.stderr)
        self.window = [0, time.perf_counter()]  # target tokens and start time of the tokens/s window
        self.last_valid_step = s.step if s.step > 0 else -1
        stop = self.stop_reason()  # a resumed run may already be finished: take no extra step
        with GracefulStop() as self.signal:
            while stop is None:
                stop = self.run_epoch(bar)
        bar.close()
        if self.signal.requested:
            return self.signal.requested
        tqdm.write(f"stopped: {stop}; best valid BLEU {s.best_bleu:.2f} at step {s.best_step}; checkpoints in {self.run_dir}", file=sys.stderr)
        return None

    def run_epoch(self, bar) -> Optional[str]:
        """Train from the current position to the end of the epoch; return why training stops, if it does."""
        s, t = self.state, self.cfg.train
        batches = bucket_batches(self.train_split.src_lens, self.train_split.tgt_lens, t.max_tokens, t.seed, s.epoch)
        pin = self.device.type == "cuda"
        while s.batch_in_epoch < len(batches):
            group = batches[s.batch_in_epoch : s.batch_in_epoch + t.accum_steps]
            start = time.perf_counter()
            loss, n_tgt, ok = self.train_step([split_batch(self.train_split, ix, pin) for ix in group])
            s.batch_in_epoch += len(group)
            s.step += 1
            s.skipped_steps += not ok
            s.nonfinite_in_row = 0 if ok else s.nonfinite_in_row + 1
            if not ok:
                self.check_nonfinite()
            s.train_tokens += n_tgt
            s.train_seconds += time.perf_counter() - start
            self.window[0] += n_tgt
            bar.update(1)
            if s.step % t.log_every == 0 or s.step == 1:
                self.log_progress(loss, bar)
            if self.signal.requested:
                self.save("last.pt")  # where we are; validation and best.pt wait for the resumed run
                return f"{self.signal.requested} at step {s.step}"
            stop = self.stop_reason()
            if s.step % t.valid_every == 0 or stop:
                stop = self.validate_and_save(bar) or stop
            if stop:
                return stop
        s.epoch, s.batch_in_epoch = s.epoch + 1, 0
        if t.max_epochs and s.epoch >= t.max_epochs:
            if self.last_valid_step != s.step:
                self.validate_and_save(bar)
            return f"reached train.max_epochs={t.max_epochs}"
        return None

    def log_progress(self, loss: float, bar) -> None:
        s = self.state
        tps = self.window[0] / max(time.perf_counter() - self.window[1], 1e-9)
        lr = self.optimizer.param_groups[0]["lr"]
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
        self.log({"step": s.step, "epoch": s.epoch, "train_loss": loss, "lr": lr, "tgt_tokens_per_s": tps, "time": s.train_seconds})
        self.window = [0, time.perf_counter()]

    def check_nonfinite(self) -> None:
        """Log a skipped update; stop the run when too many come in a row (something is wrong, not noise)."""
        s, t = self.state, self.cfg.train
        tqdm.write(f"warning: step {s.step}: non-finite loss or gradient, update skipped ({s.skipped_steps} so far)", file=sys.stderr)
        if s.nonfinite_in_row >= MAX_NONFINITE_IN_ROW:
            raise NmtError(
                f"{s.nonfinite_in_row} updates in a row had a non-finite loss or gradient (step {s.step}): the learning "
                f"rate is likely too high (train.lr={t.lr:g}) or the precision too low (train.precision={t.precision}); "
                "lower train.lr, raise train.warmup_steps or set train.precision=fp32"
            )

    def stop_reason(self) -> Optional[str]:
        s, t = self.state, self.cfg.train
        if s.step >= t.max_steps:
            return f"reached train.max_steps={t.max_steps}"
        if t.max_minutes and s.train_seconds >= 60 * t.max_minutes:
            return f"reached train.max_minutes={t.max_minutes:g}"
        return None

    def validate_and_save(self, bar) -> Optional[str]:
        start = time.perf_counter()
        metrics = self.validate()
        stop = self.after_validation(metrics)
        record = {"step": self.state.step, "epoch": self.state.epoch, "time": self.state.train_seconds, **metrics,
                  "valid_seconds": time.perf_counter() - start, "skipped_steps": self.state.skipped_steps}
        self.log(record)
        self.last_valid_step = self.state.step
        self.window = [0, time.perf_counter()]  # tokens/s excludes validation
        shown = " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
        tqdm.write(f"valid: {shown}", file=sys.stderr)
        bar.refresh()
        if stop:
            return f"no improvement in {self.cfg.train.patience} validations (train.patience)"
        return None


def prepare_run_dir(cfg: Config, run_dir: Path, resume: bool, tok: Tokenizer) -> None:
    if not resume and (run_dir / "last.pt").exists():
        raise NmtError(f"{run_dir} already holds a run (last.pt); pass --resume to continue it or --run-dir to start another")
    if resume and not (run_dir / "last.pt").exists():
        raise NmtError(f"{run_dir / 'last.pt'}: nothing to resume")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    atomic_write_text(run_dir / "env.json", json.dumps(environment(), indent=2) + "\n")
    tok.save(run_dir)


def train(cfg: Config, run_dir: Optional[Path] = None, resume: bool = False) -> Path:
    """Run stage 2 for `cfg`; return the run directory."""
    run_dir = Path(run_dir or f"runs/{cfg.name}")
    manifest = read_manifest(cfg.prepared_dir, cfg)
    tok = Tokenizer.load(cfg.prepared_dir)
    if tok.sha256 != manifest["tokenizer"]["sha256"]:
        raise NmtError(f"{cfg.prepared_dir}: tokenizer does not match its manifest; run `nmt prepare` again")
    device = pick_device(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    prepare_run_dir(cfg, run_dir, resume, tok)
    trainer = Trainer(
        cfg, run_dir, device, tok, load_split(cfg.prepared_dir, "train"), load_split(cfg.prepared_dir, "valid"),
        read_lines(cfg.prepared_dir / "valid.tgt.txt"),
    )
    if resume:
        trainer.restore(load_checkpoint(run_dir / "last.pt"))
        tqdm.write(f"resuming {run_dir} at step {trainer.state.step} (epoch {trainer.state.epoch}, batch {trainer.state.batch_in_epoch})", file=sys.stderr)
    n = count_parameters(trainer.model)
    tqdm.write(f"model: {cfg.model.arch}, {n / 1e6:.2f}M parameters; device {device}; {len(trainer.train_split)} training pairs", file=sys.stderr)
    interrupted = trainer.run()
    if interrupted:
        raise NmtError(f"{interrupted}: stopped at step {trainer.state.step}, {run_dir / 'last.pt'} saved; "
                       f"continue with: nmt train --config <config> --run-dir {run_dir} --resume")
    return run_dir


