"""Stage 2: the training loop, its state, the
learning-rate schedule, the loss, validation, checkpoints.

One optimizer step = `accum_steps` token-budget batches; the loss is summed over real target
tokens and divided by their total, so accumulation gives the same gradient as one big batch.
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
import yaml
from tqdm import tqdm

from nmt.checkpoint import load_checkpoint, save_checkpoint
from nmt.config import Config, config_from_dict
from nmt.data import (
    Batch,
    Split,
    corpus_sizes,
    data_settings,
    epoch_batches,
    load_split,
    read_lines,
    read_manifest,
    settings_diff,
    split_batch,
)
from nmt.distributed import Dist, my_share
from nmt.errors import NmtError
from nmt.files import atomic_write_text
from nmt.interrupt import GracefulStop
from nmt.lock import hold
from nmt.loss import Objective
from nmt.models import build_model, count_parameters
from nmt.models.transformer import choose_attention_kernels
from nmt.precision import autocast_for, describe
from nmt.progress import Progress
from nmt.retention import Retention, load_for_resume
from nmt.rundir import (
    prepare_run_dir,
    record_session,
    rng_state,
    set_rng_state,
    trim_log,
)
from nmt.tokenizer import Tokenizer
from nmt.validation import Validation

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
        self.train_split = train_split
        # pairs of each corpus of data.train, in the order the split holds them
        self.corpus_sizes = corpus_sizes or [len(train_split)]
        self.dist = dist or Dist()
        self.metrics_path = run_dir / "metrics.jsonl"
        self.progress = Progress(cfg, self.dist, device, self.metrics_path)
        torch.manual_seed(cfg.train.seed)
        self.model = build_model(cfg.model, tok.src_vocab_size, tok.tgt_vocab_size).to(device)
        choose_attention_kernels(device)
        # DDP and the compiled module wrap model + loss and share the parameters; checkpoints and
        # decoding use the plain model
        self.objective = Objective(self.model, cfg.train.label_smoothing)
        self.ddp = self.dist.wrap(self.objective, device)
        # the loss as training computes it: through DDP, compiled with train.compile
        self.loss_fn = torch.compile(self.ddp, dynamic=True) if cfg.train.compile else self.ddp
        self.validation = Validation(
            cfg, self.model, self.objective, tok, valid_split, valid_refs, device, self.note
        )
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
        self.kept = Retention(run_dir, t.keep_last, t.keep_best)
        # what the loop carries between steps (set again by run(), after a restore)
        self.last_valid_step = -1
        self.signal: Optional[GracefulStop] = None

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
            # a key added after the checkpoint was written counts as its default
            old = {**Config().to_dict()[section], **ckpt["config"][section]}
            new = self.cfg.to_dict()[section]
            changed = sorted(k for k in new if old.get(k) != new[k])
            if section == "data":  # what shapes the data; the tokenizer's hash was checked above
                was = config_from_dict(ckpt["config"], f"{ckpt['path']} (config)")
                changed = settings_diff(data_settings(was), data_settings(self.cfg))
                weights = [[c.weight for c in x.data.corpora] for x in (was, self.cfg)]
                if weights[0] != weights[1]:  # the epochs would differ
                    changed.append("train")
            if changed:
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
        self.progress.sync(self.state)
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
        self.progress.note(message)

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
                    loss, _ = self.loss_fn(b.src, b.src_pad_mask, b.tgt_in, b.tgt_out)
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
        self.progress.start(s)
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
                self.progress.oom(s, group)
            else:
                lr = self.optimizer.param_groups[0]["lr"]
                self.progress.step_done(s, *result, time.perf_counter() - start, bar, lr)
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

    def validate_and_save(self, bar) -> Optional[str]:
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
        self.progress.log(record)
        self.last_valid_step = self.state.step
        self.progress.restart_clock()  # tokens/s excludes validation
        shown = " ".join(
            f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
        )
        self.note(f"valid: {shown}")
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
