"""Stage 2: the training loop, its state, the
learning-rate schedule, the loss, validation, checkpoints.

One optimizer step = `accum_steps` token-budget batches; the loss is summed over real target
tokens and divided by their total, so accumulation gives the same gradient as one big batch.
"""

from __future__ import annotations

import json
import math
import platform
import random
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import sacrebleu
import sentencepiece
import torch
import yaml
from tqdm import tqdm

from nmt.checkpoint import (
    atomic_write_text,
    load_checkpoint,
    remove_stale_temp_files,
    save_checkpoint,
)
from nmt.config import Config
from nmt.data import (
    Batch,
    Split,
    bucket_batches,
    corpus_sizes,
    cut_to,
    epoch_batches,
    load_split,
    read_lines,
    read_manifest,
    split_batch,
)
from nmt.distributed import Dist, my_share
from nmt.errors import NmtError
from nmt.interrupt import GracefulStop
from nmt.lock import hold
from nmt.loss import Objective
from nmt.metrics import bleu_score
from nmt.models import build_model, count_parameters
from nmt.models.transformer import choose_attention_kernels
from nmt.precision import autocast_for, describe
from nmt.retention import STEP_DIR, Retention, has_checkpoint, load_for_resume
from nmt.search import decode_corpus
from nmt.tokenizer import BOS, EOS, Tokenizer

MAX_NONFINITE_IN_ROW = 10
MAX_OOM_IN_ROW = 5
FP16_INIT_SCALE = 2.0**7  # fairseq's starting loss scale: few overflows while the scale settles


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
    oom_skipped: int = 0  # batches skipped for running out of GPU memory (no step taken)
    oom_in_row: int = 0  # consecutive ones; MAX_OOM_IN_ROW stops the run
    train_tokens: int = 0
    train_seconds: float = 0.0


def lr_at(step: int, peak: float, warmup: int) -> float:
    """Linear warmup to `peak` over `warmup` steps, then
    inverse-square-root decay (constant if warmup=0)."""
    if warmup == 0:
        return peak
    step = max(step, 1)
    return peak * min(step / warmup, math.sqrt(warmup / step))


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise NmtError("train.device: cuda requested but no CUDA device is available")
    return torch.device(
        "cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu"
    )


def rng_state() -> dict:
    """Every random number generator training could touch: python, numpy, torch CPU and CUDA."""
    np_state = np.random.get_state(legacy=False)
    np_state["state"]["key"] = np_state["state"]["key"].tolist()
    rng = {"python": random.getstate(), "numpy": np_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def set_rng_state(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    if "python" in rng:
        version, state, gauss = rng["python"]
        random.setstate((version, tuple(state), gauss))
    if "numpy" in rng:
        np_state = dict(rng["numpy"], state=dict(rng["numpy"]["state"]))
        np_state["state"]["key"] = np.array(np_state["state"]["key"], dtype=np.uint32)
        np.random.set_state(np_state)


def environment() -> dict:
    """Versions, git commit and command line: recorded in the run directory for reproducibility."""
    try:
        here = Path(__file__).resolve().parent
        r = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        commit = r.stdout.strip() if r.returncode == 0 else ""
        r = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
        dirty = bool(r.stdout.strip()) if commit and r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sentencepiece": sentencepiece.__version__,
        "sacrebleu": sacrebleu.__version__,
        "git_commit": commit or None,
        # uncommitted changes to tracked files: the commit alone does not describe the code
        "git_dirty": dirty,
        "command": sys.argv,
        "machine": platform.machine(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


class DeviceCounters:
    """Per-step bookkeeping kept on the device, so that a
    step never waits for the GPU; read on logging steps."""

    def __init__(self, device: torch.device, skipped: int, in_row: int):
        def scalar(v: float) -> torch.Tensor:
            return torch.tensor(float(v), device=device)

        self.loss, self.skipped, self.in_row, self.max_in_row = (
            scalar(0),
            scalar(skipped),
            scalar(in_row),
            scalar(in_row),
        )

    def add(self, loss_sum: torch.Tensor, skipped: torch.Tensor) -> None:
        """`skipped` is 1.0 when this step's update was skipped (non-finite gradient), else 0.0."""
        self.loss += loss_sum
        self.skipped += skipped
        self.in_row.add_(skipped).mul_(skipped)  # consecutive skipped updates
        torch.maximum(self.max_in_row, self.in_row, out=self.max_in_row)

    def read(self) -> tuple[float, int, int, int]:
        """(loss summed since the last reset, skipped updates,
        in a row now, most in a row since the last read)."""
        loss, skipped, in_row, max_in_row = torch.stack(
            [self.loss, self.skipped, self.in_row, self.max_in_row]
        ).tolist()
        self.max_in_row.copy_(self.in_row)
        return loss, int(skipped), int(in_row), int(max_in_row)


class Trainer:
    """Holds what one run needs; `run()` is the loop. Created only through `train()`."""

    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        device: torch.device,
        tok: Tokenizer,
        train_split: Split,
        valid_split: Split,
        valid_refs: list[str],
        dist: Optional[Dist] = None,
        corpus_sizes: Optional[list[int]] = None,
    ):
        self.cfg, self.run_dir, self.device, self.tok = cfg, run_dir, device, tok
        self.train_split, self.valid_split, self.valid_refs = train_split, valid_split, valid_refs
        # valid is never filtered: pairs longer than the model's positions are cut for the loss
        # and the translations (BLEU is still scored against the whole references)
        limit = cfg.model.max_positions - 1  # + EOS (source), + BOS or EOS (target)
        self.valid_split, cut = cut_to(valid_split, limit, limit)
        if cut and (dist is None or dist.main):
            tqdm.write(
                f"warning: {cut} valid pair(s) longer than the model's {limit} subwords are cut "
                "for validation (model.max_positions)",
                file=sys.stderr,
            )
        # pairs of each corpus of data.train, in the order the split holds them
        self.corpus_sizes = corpus_sizes or [len(train_split)]
        self.dist = dist or Dist()
        torch.manual_seed(cfg.train.seed)
        self.model = build_model(cfg.model, tok.src_vocab_size, tok.tgt_vocab_size).to(device)
        choose_attention_kernels(device)
        # DDP and the compiled module wrap model + loss and share the parameters; checkpoints and
        # decoding use the plain model
        self.objective = Objective(self.model, cfg.train.label_smoothing)
        self.ddp = self.dist.wrap(self.objective, device)
        self.forward = torch.compile(self.ddp, dynamic=True) if cfg.train.compile else self.ddp
        t = cfg.train
        # fused: one kernel for all parameters (CPU and CUDA),
        # and it can skip an update without a host sync
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=t.lr,
            betas=t.betas,
            eps=t.adam_eps,
            weight_decay=t.weight_decay,
            fused=True,
        )
        # loss scaling only for fp16 (bf16 has fp32's range);
        # disabled, the scaler passes everything through
        self.scaler = torch.amp.GradScaler(
            device.type, init_scale=FP16_INIT_SCALE, enabled=t.precision == "fp16"
        )
        self.state = TrainState()
        self.metrics_path = run_dir / "metrics.jsonl"
        self.kept = Retention(run_dir, t.keep_last, t.keep_best)

    # --- checkpoints ---
    def payload(self, rngs: list) -> dict:
        """Everything a resumed run needs; `rngs`: the
        random states of every rank, in rank order."""
        return {
            "config": self.cfg.to_dict(),
            "tokenizer": self.tok.to_state(),
            "tokenizer_sha256": self.tok.sha256,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "train_state": asdict(self.state),
            "rng": rngs[0],
            "rng_ranks": rngs,
            "world_size": self.dist.world,
        }

    def check_compatible(self, ckpt: dict, what: str, sections: tuple[str, ...]) -> None:
        """Refuse a checkpoint trained with another tokenizer or other settings in `sections`."""
        if ckpt["tokenizer_sha256"] != self.tok.sha256:
            raise NmtError(
                f"{ckpt['path']}: trained with a different tokenizer (sha256 "
                f"{ckpt['tokenizer_sha256'][:12]}) than the one in "
                f"{self.cfg.prepared_dir} ({self.tok.sha256[:12]}); refusing to {what}"
            )
        for section in sections:
            if ckpt["config"][section] != self.cfg.to_dict()[section]:
                changed = sorted(
                    k
                    for k, v in self.cfg.to_dict()[section].items()
                    if ckpt["config"][section].get(k) != v
                )
                raise NmtError(
                    f"{ckpt['path']}: cannot {what} with a changed {section} config "
                    f"({', '.join(f'{section}.{k}' for k in changed)})"
                )

    def init_from(self, ckpt: dict) -> None:
        """Fine-tuning: start from a checkpoint's weights,
        with a fresh optimizer, schedule and state."""
        self.check_compatible(ckpt, "fine-tune from it", ("model",))
        self.model.load_state_dict(ckpt["model"])

    def restore(self, ckpt: dict) -> None:
        self.check_compatible(ckpt, "resume", ("model", "data"))
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt["scaler"])
        self.state = TrainState(**ckpt["train_state"])
        rngs = ckpt.get("rng_ranks") or [ckpt["rng"]]
        was = ckpt.get("world_size", 1)
        if was != self.dist.world:
            self.note(
                f"note: {ckpt['path']} was trained by {was} process(es), this run has "
                f"{self.dist.world}: weights, optimizer and "
                f"data position carry over; a step now takes {self.cfg.train.accum_steps} x "
                f"{self.dist.world} batches instead of "
                f"{self.cfg.train.accum_steps} x {was}, and the random streams differ from an "
                "uninterrupted run"
            )
        set_rng_state(rngs[self.dist.rank] if self.dist.rank < len(rngs) else rngs[0])

    def save(
        self, scores: Optional[dict] = None, best: bool = False, step_file: bool = True
    ) -> None:
        """Write last.pt; keep it as checkpoints/step-N.pt (and best.pt); prune what falls out of
        keep_last/keep_best. `step_file=False` (a stop by signal, off the save grid) writes last.pt
        only, so that the step files, which `nmt average --last N` takes, stay on the grid of
        valid_every/save_every and keep_last keeps them all. Every rank calls it (their random
        states go into the checkpoint); rank 0 writes."""
        self.sync_counters()
        rngs = self.dist.gather(rng_state())
        if not self.dist.main:
            return
        try:
            save_checkpoint(self.run_dir / "last.pt", self.payload(rngs))
            if step_file:
                self.kept.record(self.state.step, scores, best)
        except OSError as e:  # a full disk, a folder gone read-only: the files written stay whole
            raise NmtError(
                f"{e.filename or self.run_dir}: cannot save step {self.state.step}: "
                f"{e.strerror or e}; the checkpoints saved before are intact: make room, then "
                f"continue with: nmt train --config <config> --run-dir {self.run_dir} --resume"
            ) from None

    def note(self, message: str) -> None:
        """A line on stderr, from rank 0 only."""
        if self.dist.main:
            tqdm.write(message, file=sys.stderr)

    # --- one step ---
    def train_step(
        self, batches: list[Batch], n_tgt: int
    ) -> Optional[tuple[torch.Tensor, int, torch.Tensor]]:
        """Forward/backward over the micro-batches, then one update. Returns (summed loss, target
        tokens, 1.0 if the update was skipped for a non-finite gradient else 0.0) with the tensors
        left on the device; or None when the device ran out of memory (the gradients are dropped and
        memory freed). `batches` are this rank's, `n_tgt` the target tokens of the whole step over
        all ranks. With more than one process an OOM stops the run: the other ranks would wait for
        this one's gradients."""
        self.model.train()
        if self.dist.enabled:
            return self._train_step(batches, n_tgt)
        try:
            return self._train_step(batches, n_tgt)
        except torch.cuda.OutOfMemoryError:
            pass  # free outside the except block: the traceback holds the activations
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return None

    def _train_step(
        self, batches: list[Batch], n_tgt: int
    ) -> tuple[torch.Tensor, int, torch.Tensor]:
        total = torch.zeros((), device=self.device)
        # DDP averages the ranks' gradients: this makes it a sum over all tokens / n_tgt
        scale = self.dist.world / n_tgt
        for i, b in enumerate(batches):
            b = b.to(self.device)
            # accumulation: gradients are exchanged between ranks only on the last micro-batch
            sync = (
                nullcontext()
                if i == len(batches) - 1 or not self.dist.enabled
                else self.ddp.no_sync()
            )
            with sync:
                with autocast_for(self.device, self.cfg.train.precision):
                    loss, _ = self.forward(b.src, b.src_pad_mask, b.tgt_in, b.tgt_out)
                self.scaler.scale(loss * scale).backward()
            total += loss.detach()
        lr = lr_at(self.state.step + 1, self.cfg.train.lr, self.cfg.train.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.scaler.unscale_(self.optimizer)
        clip = self.cfg.train.clip_norm if self.cfg.train.clip_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        skipped = (~torch.isfinite(norm)).float()
        if self.scaler.is_enabled():  # fp16: the scaler skips on overflow and halves the scale
            self.scaler.step(self.optimizer)
            self.scaler.update()
        # the fused optimizer skips the update itself when found_inf is 1, without a host sync
        else:
            self.optimizer.grad_scale, self.optimizer.found_inf = None, skipped
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.grad_scale, self.optimizer.found_inf
        self.optimizer.zero_grad(set_to_none=True)
        return total, n_tgt, skipped

    # --- validation ---
    @torch.no_grad()
    def validate(self) -> dict:
        """Valid loss/perplexity (teacher forced, no smoothing)
        and greedy sacreBLEU against the raw references."""
        self.model.eval()
        nll_sum, n = 0.0, 0
        for index in bucket_batches(
            self.valid_split.src_lens, self.valid_split.tgt_lens, self.cfg.train.max_tokens
        ):
            b = split_batch(self.valid_split, index).to(self.device)
            with autocast_for(self.device, self.cfg.train.precision):
                # plain NLL, no smoothing
                nll_sum += float(self.objective(b.src, b.src_pad_mask, b.tgt_in, b.tgt_out)[1])
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
                self.model,
                src_ids,
                self.device,
                d.max_tokens,
                beam,
                d.alpha,
                d.max_len_a,
                d.max_len_b,
                m.max_positions,
                BOS,
                EOS,
            )
        return self.tok.decode_tgt([h[0].tokens for h in hyps])

    def log(self, record: dict) -> None:
        if not self.dist.main:
            return
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
        self.save({"valid_bleu": bleu, "valid_loss": loss}, best=improved)
        return t.patience > 0 and s.bad_evals >= t.patience

    def run(self) -> Optional[str]:
        """Train until a stopping rule fires; return the
        signal name if a SIGINT/SIGTERM stopped it."""
        s, t = self.state, self.cfg.train
        bar = tqdm(
            total=t.max_steps,
            initial=s.step,
            disable=not (t.progress and self.dist.main),
            unit="step",
            dynamic_ncols=True,
            file=sys.stderr,
        )
        # target tokens and start time of the tokens/s window
        self.window = [0, time.perf_counter()]
        self.counters = DeviceCounters(self.device, s.skipped_steps, s.nonfinite_in_row)
        self.loss_tokens = 0  # target tokens behind counters.loss
        self.last_valid_step = s.step if s.step > 0 else -1
        stop = self.stop_reason()  # a resumed run may already be finished: take no extra step
        with GracefulStop() as self.signal:
            while stop is None:
                stop = self.run_epoch(bar)
        bar.close()
        if self.signal.requested:
            return self.signal.requested
        self.note(
            f"stopped: {stop}; best valid BLEU {s.best_bleu:.2f} at step {s.best_step}; "
            f"checkpoints in {self.run_dir}"
        )
        return None

    def run_epoch(self, bar) -> Optional[str]:
        """Train from the current position to the end of the
        epoch; return why training stops, if it does."""
        s, t = self.state, self.cfg.train
        weights = [c.weight for c in self.cfg.data.corpora]
        batches = epoch_batches(
            self.train_split, self.corpus_sizes, weights, t.max_tokens, t.seed, s.epoch
        )
        pin = self.device.type == "cuda"
        per_step = t.accum_steps * self.dist.world
        # with several ranks, a last group too small to give each rank a batch is left out: equal
        # steps on every rank
        while len(batches) - s.batch_in_epoch >= self.dist.world:
            indices = batches[s.batch_in_epoch : s.batch_in_epoch + per_step]
            group = [split_batch(self.train_split, ix, pin) for ix in my_share(indices, self.dist)]
            # + EOS per sentence
            n_tgt = sum(int(self.train_split.tgt_lens[ix].sum()) + len(ix) for ix in indices)
            start = time.perf_counter()
            result = self.train_step(group, n_tgt)
            s.batch_in_epoch += len(indices)
            if result is None:
                self.check_oom(group)
            else:
                self.count_step(*result, time.perf_counter() - start, bar)
            signalled, out_of_time = self.dist.any(
                self.signal.requested is not None, self.out_of_time()
            )
            if signalled:
                # a rank that heard nothing itself stops the same way, as interrupted
                self.signal.requested = self.signal.requested or "a signal to another rank"
                # where we are, for --resume; validation and best.pt wait for it
                self.save(step_file=False)
                return f"{self.signal.requested} at step {s.step}"
            if result is None:
                continue
            stop = self.stop_reason(out_of_time)
            if s.step % t.valid_every == 0 or stop:
                stop = self.validate_and_save(bar) or stop
            elif t.save_every and s.step % t.save_every == 0:
                self.save()
            if stop:
                return stop
        s.epoch, s.batch_in_epoch = s.epoch + 1, 0
        if t.max_epochs and s.epoch >= t.max_epochs:
            if self.last_valid_step != s.step:
                self.validate_and_save(bar)
            return f"reached train.max_epochs={t.max_epochs}"
        return None

    def count_step(
        self, loss_sum: torch.Tensor, n_tgt: int, skipped: torch.Tensor, seconds: float, bar
    ) -> None:
        s = self.state
        s.step += 1
        s.oom_in_row = 0
        self.counters.add(loss_sum, skipped)
        self.loss_tokens += n_tgt
        s.train_tokens += n_tgt
        s.train_seconds += seconds
        self.window[0] += n_tgt
        bar.update(1)
        if s.step % self.cfg.train.log_every == 0 or s.step == 1:
            self.log_progress(bar)

    def check_oom(self, group: list[Batch]) -> None:
        """Log a batch skipped for lack of memory; stop
        when it keeps happening (the budget is too big)."""
        s, t = self.state, self.cfg.train
        s.oom_skipped += 1
        s.oom_in_row += 1
        shapes = ", ".join(
            f"{b.src.shape[0]} sentences x "
            f"{b.src.shape[1]} source / {b.tgt_in.shape[1]} target tokens"
            for b in group
        )
        tqdm.write(
            f"warning: out of memory after step {s.step} on a batch of {shapes}; batch skipped "
            f"({s.oom_skipped} so far)",
            file=sys.stderr,
        )
        self.log(
            {
                "step": s.step,
                "epoch": s.epoch,
                "oom_skipped": s.oom_skipped,
                "batch_shapes": [[*b.src.shape, b.tgt_in.shape[1]] for b in group],
            }
        )
        if s.oom_in_row >= MAX_OOM_IN_ROW:
            raise NmtError(
                f"out of memory on {s.oom_in_row} batches in a row (after step {s.step}): lower "
                "train.max_tokens "
                f"(now {t.max_tokens}) and raise train.accum_steps (now {t.accum_steps}) to keep "
                "the same batch size"
            )

    def log_progress(self, bar) -> None:
        """Log the mean training loss per target token since the last log, the lr and tokens/s."""
        s = self.state
        # n_tgt counts every rank
        loss_sum, tokens = self.dist.sum([self.sync_counters(), self.loss_tokens / self.dist.world])
        loss = loss_sum / max(tokens, 1)
        self.counters.loss.zero_()
        self.loss_tokens = 0
        tps = self.window[0] / max(time.perf_counter() - self.window[1], 1e-9)
        lr = self.optimizer.param_groups[0]["lr"]
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
        self.log(
            {
                "step": s.step,
                "epoch": s.epoch,
                "train_loss": loss,
                "lr": lr,
                "tgt_tokens_per_s": tps,
                "time": s.train_seconds,
            }
        )
        self.window = [0, time.perf_counter()]

    def sync_counters(self) -> float:
        """Bring the device counters into the train state (one sync); warn about skipped updates,
        and stop the run when too many came in a row (something is wrong, not noise). Returns the
        loss sum of the window."""
        s, t = self.state, self.cfg.train
        loss, skipped, in_row, max_in_row = self.counters.read()
        if skipped > s.skipped_steps:
            self.note(
                f"warning: {skipped - s.skipped_steps} update(s) skipped for a non-finite loss or "
                "gradient by step "
                f"{s.step} ({skipped} so far)"
            )
        s.skipped_steps, s.nonfinite_in_row = skipped, in_row
        if max_in_row >= MAX_NONFINITE_IN_ROW:
            raise NmtError(
                f"{max_in_row} updates in a row had a non-finite loss or gradient (by step "
                f"{s.step}): the learning "
                f"rate is likely too high (train.lr={t.lr:g}) or the precision too low "
                f"(train.precision={t.precision}); "
                "lower train.lr, raise train.warmup_steps or set train.precision=fp32"
            )
        return loss

    def out_of_time(self) -> bool:
        t = self.cfg.train
        return bool(t.max_minutes) and self.state.train_seconds >= 60 * t.max_minutes

    def stop_reason(self, out_of_time: Optional[bool] = None) -> Optional[str]:
        """Why training stops now, if it does; `out_of_time`
        as agreed by all ranks (default: this one's clock)."""
        s, t = self.state, self.cfg.train
        if s.step >= t.max_steps:
            return f"reached train.max_steps={t.max_steps}"
        if self.out_of_time() if out_of_time is None else out_of_time:
            return f"reached train.max_minutes={t.max_minutes:g}"
        return None

    def checked_validation(self) -> dict:
        """validate(), or {"error": why} if it fails: training must not lose its steps to it."""
        try:
            return self.validate()
        except Exception as e:  # noqa: BLE001 - whatever it is, the steps are saved first
            return {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}

    def validate_and_save(self, bar) -> Optional[str]:
        start = time.perf_counter()
        # rank 0 validates, every rank decides
        metrics = self.dist.share(self.checked_validation() if self.dist.main else None)
        if "error" in metrics:
            self.save(step_file=False)
            raise NmtError(
                f"validation failed at step {self.state.step} ({metrics['error'][:300]}); "
                f"{self.run_dir / 'last.pt'} saved; continue with: nmt train --config <config> "
                f"--run-dir {self.run_dir} --resume"
            )
        stop = self.after_validation(metrics)
        record = {
            "step": self.state.step,
            "epoch": self.state.epoch,
            "time": self.state.train_seconds,
            **metrics,
            "valid_seconds": time.perf_counter() - start,
            "skipped_steps": self.state.skipped_steps,
        }
        self.log(record)
        self.last_valid_step = self.state.step
        self.window = [0, time.perf_counter()]  # tokens/s excludes validation
        shown = " ".join(
            f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
        )
        self.note(f"valid: {shown}")
        bar.refresh()
        if stop:
            return f"no improvement in {self.cfg.train.patience} validations (train.patience)"
        return None


def prepare_run_dir(run_dir: Path, resume: bool) -> bool:
    """Check the run directory and clear what a killed
    run left half-written; return whether to resume."""
    if run_dir.exists() and not run_dir.is_dir():
        raise NmtError(f"{run_dir}: exists and is not a folder (--run-dir)")
    if not resume and has_checkpoint(run_dir):
        raise NmtError(
            f"{run_dir} already holds a run (last.pt); pass --resume to continue it or --run-dir "
            "to start another"
        )
    if resume and not has_checkpoint(run_dir):
        if not (run_dir / "config.yaml").exists():
            raise NmtError(f"{run_dir / 'last.pt'}: nothing to resume")
        tqdm.write(
            f"warning: {run_dir} stopped before its first checkpoint; "
            "starting it again from step 0",
            file=sys.stderr,
        )
        resume = False
    run_dir.mkdir(parents=True, exist_ok=True)
    stale = remove_stale_temp_files(run_dir) + remove_stale_temp_files(run_dir / STEP_DIR)
    if stale:
        tqdm.write(
            f"removed {len(stale)} partly written file(s) a killed run left in {run_dir}",
            file=sys.stderr,
        )
    return resume


def record_session(run_dir: Path, step: int, init: Optional[str], world: int = 1) -> None:
    """Append this invocation (versions, git commit, command line, starting step) to env.json."""
    path = run_dir / "env.json"
    try:
        sessions = json.loads(path.read_text(encoding="utf-8"))["sessions"] if step > 0 else []
    except (OSError, ValueError, KeyError, TypeError):
        sessions = []
    session = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "start_step": step,
        "processes": world,
        **environment(),
    }
    if init:
        session["init_from"] = init
    atomic_write_text(path, json.dumps({"sessions": [*sessions, session]}, indent=2) + "\n")


def trim_log(path: Path, step: int) -> None:
    """Drop metrics recorded after `step`: a resumed run
    writes them again, so the curves have no repeats."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] > step:
                continue
        except (ValueError, KeyError, TypeError):  # a line half-written when the run was killed
            continue
        kept.append(line)
    if kept != lines:
        atomic_write_text(path, "".join(kept))


def train(
    cfg: Config, run_dir: Optional[Path] = None, resume: bool = False, init: Optional[str] = None
) -> Path:
    """Run stage 2 for `cfg` (from the weights of checkpoint `init` when
    given); return the run directory. Under torchrun, every rank runs
    this; rank 0 alone reads checkpoints and writes the run directory."""
    run_dir = Path(run_dir or f"runs/{cfg.name}")
    if init and resume:
        raise NmtError(
            "--init starts a new run from a checkpoint's weights; "
            "--resume continues a run: give one of them"
        )
    manifest = read_manifest(cfg.prepared_dir, cfg)
    tok = Tokenizer.load(cfg.prepared_dir)
    if tok.sha256 != manifest["tokenizer"]["sha256"]:
        raise NmtError(
            f"{cfg.prepared_dir}: tokenizer does not match its manifest; run `nmt prepare` again"
        )
    sizes = corpus_sizes(manifest, cfg)
    dist = Dist()
    device = dist.setup(pick_device(cfg.train.device))
    try:
        # one writer per run folder: rank 0 writes it
        with hold(run_dir, "nmt train") if dist.main else nullcontext():
            return _train(cfg, run_dir, resume, init, tok, sizes, device, dist)
    finally:
        dist.close()


def weighted_epoch(cfg: Config, sizes: list[int]) -> str:
    """What an epoch holds when the corpora are weighted ('' when they are not)."""
    corpora = cfg.data.corpora
    if all(c.weight == 1.0 for c in corpora):
        return ""
    shares = ", ".join(f"{c.name} {n} x {c.weight:g}" for c, n in zip(corpora, sizes))
    return f"; an epoch: {sum(c.weight * n for c, n in zip(corpora, sizes)):.0f} ({shares})"


def _train(
    cfg: Config,
    run_dir: Path,
    resume: bool,
    init: Optional[str],
    tok: Tokenizer,
    sizes: list[int],
    device: torch.device,
    dist: Dist,
) -> Path:
    main = dist.main
    say = (lambda m: tqdm.write(m, file=sys.stderr)) if main else (lambda m: None)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    init_ckpt = dist.share(load_checkpoint(init) if init and main else None)
    resume = dist.share(prepare_run_dir(run_dir, resume) if main else None)
    trainer = Trainer(
        cfg,
        run_dir,
        device,
        tok,
        load_split(cfg.prepared_dir, "train"),
        load_split(cfg.prepared_dir, "valid"),
        read_lines(cfg.prepared_dir / "valid.tgt.txt"),
        dist,
        sizes,
    )
    if resume:
        trainer.restore(dist.share(load_for_resume(run_dir, warn=say) if main else None))
        say(
            f"resuming {run_dir} at step {trainer.state.step} (epoch {trainer.state.epoch}, batch "
            f"{trainer.state.batch_in_epoch})"
        )
    elif init_ckpt:
        trainer.init_from(init_ckpt)
        say(f"fine-tuning from {init_ckpt['path']} (its step {init_ckpt['train_state']['step']})")
    if main:  # only now, with the checkpoint accepted, does anything in the run directory change
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        tok.save(run_dir)
        # a fresh start, too, drops what a dead attempt logged
        trim_log(trainer.metrics_path, trainer.state.step)
        record_session(
            run_dir, trainer.state.step, init_ckpt["path"] if init_ckpt else None, dist.world
        )
    n = count_parameters(trainer.model)
    ranks = f" x {dist.world} processes" if dist.enabled else ""
    say(
        f"model: {cfg.model.arch}, {n / 1e6:.2f}M parameters; device {device}{ranks}, "
        f"{describe(device, cfg.train.precision)}; "
        f"{len(trainer.train_split)} training pairs{weighted_epoch(cfg, sizes)}"
    )
    interrupted = trainer.run()
    if interrupted:
        raise NmtError(
            f"{interrupted}: stopped at step {trainer.state.step}, {run_dir / 'last.pt'} saved; "
            f"continue with: nmt train --config <config> --run-dir {run_dir} --resume"
        )
    return run_dir
