"""Stage 2: the training loop, the learning-rate schedule, validation and the checkpoint cadence
(what a checkpoint holds is nmt/resume.py, one optimizer step nmt/update.py, the run folder's
bookkeeping nmt/rundir.py). A little over 350 lines: the Trainer and `train()`, which sets a run up
(device, lock, fresh, resumed or fine-tuned), read best side by side.
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from nmt.checkpoint import load_checkpoint, save_checkpoint
from nmt.config import Config
from nmt.data import (
    Batch,
    Split,
    corpus_sizes,
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
from nmt.models import build_model, count_parameters
from nmt.precision import choose_attention_kernels, describe
from nmt.progress import Progress
from nmt.resume import TrainState, init_from, payload, restore, world_change
from nmt.retention import Retention, load_for_resume
from nmt.rundir import METRICS, prepare_run_dir, record_start, rng_state
from nmt.tensorboard import check_installed
from nmt.tokenizer import Tokenizer
from nmt.update import Updater
from nmt.validation import Validation


def lr_at(step: int, peak: float, warmup: int) -> float:
    """Linear warmup to `peak` over `warmup` steps, then
    inverse-square-root decay (constant if warmup=0)."""
    if warmup == 0:
        return peak
    step = max(step, 1)
    return peak * min(step / warmup, math.sqrt(warmup / step))


def pick_device(name: str) -> torch.device:
    """The device `train.device` names ("auto": CUDA when there is one)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise NmtError("train.device: cuda requested but no CUDA device is available")
    return torch.device(
        "cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu"
    )


@dataclass(frozen=True)
class RunData:
    """What a run reads from its prepared folder."""

    train: Split
    valid: Split
    valid_refs: list[str]  # the raw valid references, what valid BLEU is scored against
    corpus_sizes: list[int]  # pairs of each corpus of data.train, in the order `train` holds them

    @staticmethod
    def load(cfg: Config, corpus_sizes: Optional[list[int]] = None) -> RunData:
        train = load_split(cfg.prepared_dir, "train")
        valid = load_split(cfg.prepared_dir, "valid")
        refs = read_lines(cfg.prepared_dir / "valid.tgt.txt")
        return RunData(train, valid, refs, corpus_sizes or [len(train)])


class Trainer:
    """Holds what one run needs; `run()` is the loop. Created only through `train()`."""

    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        device: torch.device,
        tok: Tokenizer,
        data: RunData,
        dist: Optional[Dist] = None,
    ):
        self.cfg, self.run_dir, self.device, self.tok = cfg, run_dir, device, tok
        self.train_split, self.corpus_sizes = data.train, data.corpus_sizes
        self.dist = dist or Dist()
        self.progress = Progress(cfg, self.dist, device, run_dir / METRICS)
        torch.manual_seed(cfg.train.seed)
        self.model = build_model(cfg.model, tok.src_vocab_size, tok.tgt_vocab_size).to(device)
        choose_attention_kernels(device)
        # model + loss as one module: training differentiates it (through `updater`), validation
        # reads its NLL
        objective = Objective(self.model, cfg.train.label_smoothing)
        self.updater = Updater(self.model, objective, cfg.train, device, self.dist)
        self.validation = Validation(
            cfg, objective, tok, data.valid, data.valid_refs, device, self.progress.note
        )
        self.state = TrainState()
        self.retention = Retention(run_dir, cfg.train.keep_last, cfg.train.keep_best)
        # what the loop carries between steps (set again by run(), after a restore)
        self.last_valid_step = -1  # the step validated last; -1: none yet in this process
        self.stop_signal: Optional[GracefulStop] = None  # while run() runs: SIGINT/SIGTERM caught

    def resume_from(self, ckpt: dict) -> None:
        """Continue the run `ckpt` holds (see resume.restore)."""
        u = self.updater
        self.state = restore(
            ckpt, self.cfg, self.tok, self.model, u.optimizer, u.scaler, self.dist.rank
        )
        change = world_change(ckpt, self.cfg.train.accum_steps, self.dist.world)
        if change:
            self.progress.note(change)

    def save(
        self, scores: Optional[dict] = None, best: bool = False, step_file: bool = True
    ) -> None:
        """Write last.pt; keep it as checkpoints/step-N.pt (and best.pt); prune what falls out of
        keep_last/keep_best. `step_file=False` (a stop by signal, off the save grid) writes last.pt
        only, so that the step files, which `nmt average --last N` takes, stay on the grid of
        valid_every/save_every and keep_last keeps them all. Every rank calls it (their random
        states go into the checkpoint); rank 0 writes."""
        self.progress.sync(self.state)
        rngs = self.dist.gather(rng_state())
        if not self.dist.main:
            return
        u, s = self.updater, self.state
        try:
            save_checkpoint(
                self.run_dir / "last.pt",
                payload(self.cfg, self.tok, self.model, u.optimizer, u.scaler, s, rngs),
            )
            if step_file:
                self.retention.record(s.step, scores, best)
        except OSError as e:  # a full disk, a folder gone read-only: the files written stay whole
            raise NmtError(
                f"{e.filename or self.run_dir}: cannot save step {s.step}: "
                f"{e.strerror or e}; the checkpoints saved before are intact: make room, then "
                f"continue with: nmt train --config <config> --run-dir {self.run_dir} --resume"
            ) from None

    def train_step(
        self, batches: list[Batch], n_tgt: int
    ) -> Optional[tuple[torch.Tensor, int, torch.Tensor]]:
        """The next optimizer step at the schedule's learning rate (see Updater.step)."""
        t = self.cfg.train
        return self.updater.step(batches, n_tgt, lr_at(self.state.step + 1, t.lr, t.warmup_steps))

    def after_validation(self, metrics: dict) -> bool:
        """Update best/early-stopping state, write checkpoints; True when patience is exhausted."""
        s, patience = self.state, self.cfg.train.patience
        bleu, loss = metrics.get("valid_bleu", 0.0), metrics["valid_loss"]
        improved = s.count_validation(bleu, loss)
        self.save({"valid_bleu": bleu, "valid_loss": loss}, best=improved)
        return patience > 0 and s.bad_evals >= patience

    def run(self) -> Optional[str]:
        """Train until a stopping rule fires; return the signal's name if SIGINT/SIGTERM did."""
        s = self.state
        bar = self.progress.open_bar(s)
        self.progress.start(s)
        self.last_valid_step = s.step if s.step > 0 else -1
        stop = self.stop_reason()  # a resumed run may already be finished: take no extra step
        try:
            with GracefulStop() as self.stop_signal:
                while stop is None:
                    stop = self.run_epoch(bar)
        finally:
            bar.close()
            self.progress.close()
        if self.stop_signal.requested:
            return self.stop_signal.requested
        self.progress.note(
            f"stopped: {stop}; best valid BLEU {s.best_bleu:.2f} at step {s.best_step}; "
            f"checkpoints in {self.run_dir}"
        )
        return None

    def run_epoch(self, bar: tqdm) -> Optional[str]:
        """Train on to the end of the epoch; return why training stops, if it does."""
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
                self.progress.oom(s, group)
            else:
                s.count_step(n_tgt, time.perf_counter() - start)
                self.progress.step_done(s, *result, bar, self.updater.lr)
            heard = self.stop_signal
            signalled, out_of_time = self.dist.any(heard.requested is not None, self.out_of_time())
            if signalled:
                # a rank that heard nothing itself stops the same way, as interrupted
                heard.requested = heard.requested or "a signal to another rank"
                # where we are, for --resume; validation and best.pt wait for it
                self.save(step_file=False)
                return f"{heard.requested} at step {s.step}"
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

    def out_of_time(self) -> bool:
        """Has this rank trained for train.max_minutes (validation not counted)?"""
        t = self.cfg.train
        return bool(t.max_minutes) and self.state.train_seconds >= 60 * t.max_minutes

    def stop_reason(self, out_of_time: Optional[bool] = None) -> Optional[str]:
        """Why training stops now, if it does; `out_of_time`: all ranks' verdict (default: ours)."""
        s, t = self.state, self.cfg.train
        if s.step >= t.max_steps:
            return f"reached train.max_steps={t.max_steps}"
        if self.out_of_time() if out_of_time is None else out_of_time:
            return f"reached train.max_minutes={t.max_minutes:g}"
        return None

    def validate_and_save(self, bar: tqdm) -> Optional[str]:
        """Validate (rank 0), log and save; return why training stops, if patience ran out."""
        start = time.perf_counter()
        # rank 0 validates, every rank decides
        metrics = self.dist.share(self.validation.checked() if self.dist.main else None)
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
        self.progress.validated(record)
        self.last_valid_step = self.state.step
        bar.refresh()
        if stop:
            return f"no improvement in {self.cfg.train.patience} validations (train.patience)"
        return None


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
    if cfg.train.tensorboard:
        check_installed()
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
            return _train(cfg, run_dir, Start(resume, init), tok, sizes, device, dist)
    finally:
        dist.close()


def weighted_epoch(cfg: Config, sizes: list[int]) -> str:
    """What an epoch holds when the corpora are weighted ('' when they are not)."""
    corpora = cfg.data.corpora
    if all(c.weight == 1.0 for c in corpora):
        return ""
    shares = ", ".join(f"{c.name} {n} x {c.weight:g}" for c, n in zip(corpora, sizes))
    return f"; an epoch: {sum(c.weight * n for c, n in zip(corpora, sizes)):.0f} ({shares})"


@dataclass(frozen=True)
class Start:
    """How a run starts: fresh, resumed (`resume`), or from checkpoint `init`'s weights."""

    resume: bool = False
    init: Optional[str] = None


def _train(
    cfg: Config,
    run_dir: Path,
    start: Start,
    tok: Tokenizer,
    sizes: list[int],
    device: torch.device,
    dist: Dist,
) -> Path:
    """`train` with the run folder held: build the Trainer, start it and run it."""
    resume, init = start.resume, start.init
    main = dist.main
    say = (lambda m: tqdm.write(m, file=sys.stderr)) if main else (lambda m: None)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    init_ckpt = dist.share(load_checkpoint(init) if init and main else None)
    resume = dist.share(prepare_run_dir(run_dir, resume) if main else None)
    trainer = Trainer(cfg, run_dir, device, tok, RunData.load(cfg, sizes), dist)
    if resume:
        trainer.resume_from(dist.share(load_for_resume(run_dir, warn=say) if main else None))
        say(
            f"resuming {run_dir} at step {trainer.state.step} (epoch {trainer.state.epoch}, batch "
            f"{trainer.state.batch_in_epoch})"
        )
    elif init_ckpt:
        init_from(init_ckpt, cfg, tok, trainer.model)
        say(f"fine-tuning from {init_ckpt['path']} (its step {init_ckpt['train_state']['step']})")
    if main:  # only now, with the checkpoint accepted, does anything in the run directory change
        init_path = init_ckpt["path"] if init_ckpt else None
        record_start(run_dir, cfg, tok, trainer.state.step, init_path, dist.world)
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
