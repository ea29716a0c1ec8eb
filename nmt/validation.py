"""Validation during training: the valid split's loss and perplexity under teacher forcing (no label
smoothing), and the BLEU of its greedy translations against the raw references. Valid is never
filtered, so pairs longer than the model's positions are cut here, with a warning."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import torch

from nmt.config import Config
from nmt.data import Split, bucket_batches, cut_to, split_batch
from nmt.loss import Objective
from nmt.metrics import bleu_score
from nmt.precision import autocast_for
from nmt.search import SearchSettings, decode_corpus
from nmt.tokenizer import Tokenizer


class Validation:
    """Scores the model of `objective` on the valid split, as configured (train.valid_bleu)."""

    def __init__(
        self,
        cfg: Config,
        objective: Objective,
        tok: Tokenizer,
        split: Split,
        refs: list[str],
        device: torch.device,
        note: Callable[[str], None],
    ):
        self.cfg, self.model, self.objective, self.tok = cfg, objective.model, objective, tok
        self.refs, self.device = refs, device
        # BLEU is still scored against the whole references
        limit = cfg.model.max_positions - 1  # + EOS (source), + BOS or EOS (target)
        self.split, cut = cut_to(split, limit, limit)
        if cut:
            note(
                f"warning: {cut} valid pair(s) longer than the model's {limit} subwords are cut "
                "for validation (model.max_positions)"
            )

    @torch.no_grad()
    def run(self) -> dict:
        """valid_loss, valid_ppl and (with train.valid_bleu) valid_bleu."""
        self.model.eval()
        nll_sum, n = 0.0, 0
        split, t = self.split, self.cfg.train
        for index in bucket_batches(split.src_lens, split.tgt_lens, t.max_tokens):
            b = split_batch(split, index).to(self.device)
            with autocast_for(self.device, t.precision):
                nll_sum += float(self.objective(b.src, b.src_pad_mask, b.tgt_in, b.tgt_out)[1])
            n += b.n_tgt
        out = {"valid_loss": nll_sum / n, "valid_ppl": math.exp(min(nll_sum / n, 50.0))}
        if t.valid_bleu:
            out["valid_bleu"] = bleu_score(self.translate(beam=1), self.refs)
        return out

    def checked(self) -> dict:
        """run(), or {"error": why} if it fails: training must not lose its steps to it."""
        try:
            return self.run()
        except Exception as e:  # noqa: BLE001 - whatever it is, the steps are saved first
            return {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}

    def translate(self, beam: int) -> list[str]:
        """The valid split's translations (detokenized), with `beam` and the decode config."""
        d = replace(self.cfg.decode, beam=beam, nbest=1, no_repeat_ngram=0, early_exit=False)
        settings = SearchSettings.of(d, self.cfg.model.max_positions)
        src_ids = [self.split.src(i).tolist() for i in range(len(self.split))]
        with autocast_for(self.device, self.cfg.train.precision):
            hyps = decode_corpus(self.model, src_ids, settings, self.device)
        return self.tok.decode_tgt([h[0].tokens for h in hyps])
