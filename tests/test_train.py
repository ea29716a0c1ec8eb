"""Training pieces: schedule, loss, accumulation, and a tiny model that must learn its data; and the
runs `nmt train` refuses before any step (a run folder that holds a run, data never prepared or
prepared by another format version)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cli_helpers import SMOKE, assert_one_error_line
from conftest import SmokeRun

from nmt.data import Split, split_batch
from nmt.loss import loss_fn, projected_loss
from nmt.models.transformer import Transformer
from nmt.search import greedy_search, max_lengths
from nmt.tokenizer import PAD
from nmt.train import lr_at


def test_lr_schedule_values():
    assert lr_at(0, 1e-3, 100) == pytest.approx(1e-5)  # step 0 is treated as step 1
    assert lr_at(50, 1e-3, 100) == pytest.approx(5e-4)  # linear warmup
    assert lr_at(100, 1e-3, 100) == pytest.approx(1e-3)  # peak at the end of warmup
    assert lr_at(400, 1e-3, 100) == pytest.approx(5e-4)  # inverse square root: 4x steps, half lr
    assert lr_at(7, 1e-3, 0) == 1e-3  # no warmup: constant


def test_loss_without_smoothing_is_cross_entropy_ignoring_pad():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    target = torch.randint(4, 11, (2, 5))
    target[1, 3:] = PAD
    loss, nll = loss_fn(logits, target, 0.0)
    expected = F.cross_entropy(
        logits.view(-1, 11), target.view(-1), ignore_index=PAD, reduction="sum"
    )
    assert torch.allclose(loss, expected) and torch.allclose(nll, expected)
    changed = logits.clone()
    changed[1, 3:] = 100.0  # logits at padded positions must not matter
    assert torch.allclose(loss_fn(changed, target, 0.1)[0], loss_fn(logits, target, 0.1)[0])


def test_smoothed_loss_of_uniform_prediction_is_log_vocab():
    loss, nll = loss_fn(torch.zeros(1, 3, 16), torch.tensor([[4, 5, 6]]), 0.1)
    assert loss.item() == pytest.approx(3 * math.log(16), rel=1e-5)
    assert nll.item() == pytest.approx(3 * math.log(16), rel=1e-5)


def reference_loss(logits, target, smoothing):
    """The textbook formula, differentiated by autograd: what the fused loss must equal."""
    lp = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1).view(
        -1, logits.size(-1)
    )
    target = target.reshape(-1)
    real = target != PAD
    nll = -lp.gather(1, target[:, None]).squeeze(1)
    loss = (1.0 - smoothing) * nll - smoothing * lp.mean(dim=-1)
    return loss[real].sum(), nll[real].sum()


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
# one chunk; chunks of 4 rows, the last one shorter
@pytest.mark.parametrize("chunk", [2**21, 50 * 4])
def test_fused_projected_loss_values_and_gradients_match_the_formula(smoothing, chunk, monkeypatch):
    import nmt.loss

    monkeypatch.setitem(nmt.loss.CHUNK_ELEMENTS, "cpu", chunk)
    torch.manual_seed(1)
    target = torch.randint(4, 50, (3, 7))
    target[0, 5:] = PAD
    target[2, 1:] = PAD
    base_h, base_w = (
        torch.randn(21, 16, dtype=torch.float64),
        torch.randn(50, 16, dtype=torch.float64),
    )
    grads, values = [], []
    for fused in (True, False):
        h, w = base_h.clone().requires_grad_(), base_w.clone().requires_grad_()
        if fused:
            loss, nll = projected_loss(h, w, target.view(-1), smoothing)
        else:
            loss, nll = reference_loss(h @ w.t(), target, smoothing)
        (2.5 * loss).backward()
        grads.append((h.grad, w.grad))
        values.append((loss.item(), nll.item()))
    assert values[0] == pytest.approx(values[1], rel=1e-12)
    for fused, reference in zip(*grads):
        torch.testing.assert_close(fused, reference, rtol=1e-10, atol=1e-12)
    # no gradient from padded positions
    assert grads[0][0][5:7].abs().sum() == 0 and grads[0][0][15:].abs().sum() == 0
    assert loss_fn(base_h @ base_w.t(), target, smoothing)[0].item() == pytest.approx(
        values[1][0], rel=1e-12
    )


def test_fused_projected_loss_under_bf16_autocast():
    """Matmuls in bf16 (as nn.Linear's under autocast),
    gradients in the parameters' fp32, close to fp32's."""
    torch.manual_seed(2)
    target = torch.randint(4, 40, (30,))
    results = []
    for precision in (torch.bfloat16, None):
        torch.manual_seed(3)
        h, w = torch.randn(30, 16).requires_grad_(), torch.randn(40, 16).requires_grad_()
        with torch.autocast("cpu", dtype=precision, enabled=precision is not None):
            loss, _ = projected_loss(h, w, target, 0.1)
        loss.backward()
        assert h.grad.dtype == w.grad.dtype == torch.float32 and torch.isfinite(h.grad).all()
        results.append((loss.item(), h.grad, w.grad))
    assert results[0][0] == pytest.approx(results[1][0], rel=2e-2)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=0.1, atol=0.05)
    torch.testing.assert_close(results[0][2], results[1][2], rtol=0.1, atol=0.05)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return Transformer(24, 24, layers=1, d_model=32, heads=2, ffn=64, dropout=0.0, max_positions=32)


def test_accumulated_micro_batches_equal_one_big_batch():
    split = Split.from_lists(
        [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14]], [[15, 16], [17, 18, 19], [20], [21, 22]]
    )
    grads = []
    for groups in ([[0, 1], [2, 3]], [[0, 1, 2, 3]]):
        model = tiny_model()
        batches = [split_batch(split, np.array(g)) for g in groups]
        n_tgt = sum(b.n_tgt for b in batches)
        for b in batches:
            (loss_fn(model(b.src, b.src_pad_mask, b.tgt_in), b.tgt_out, 0.1)[0] / n_tgt).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_tiny_model_memorises_a_handful_of_pairs():
    """Reversal of 6 short sequences: after training,
    greedy decoding must reproduce every target."""
    rng = np.random.default_rng(0)
    src = [rng.integers(4, 24, int(rng.integers(2, 6))).tolist() for _ in range(6)]
    tgt = [s[::-1] for s in src]
    split = Split.from_lists(src, tgt)
    batch = split_batch(split, np.arange(6))
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss, _ = loss_fn(model(batch.src, batch.src_pad_mask, batch.tgt_in), batch.tgt_out, 0.0)
        opt.zero_grad()
        (loss / batch.n_tgt).backward()
        opt.step()
    model.eval()
    hyps = greedy_search(
        model, batch.src, batch.src_pad_mask, max_lengths(batch.src_pad_mask, 1.0, 3, 31)
    )
    assert [h.tokens for h in hyps] == tgt


def test_compiled_training_matches_eager(repo_root, toy_data, tmp_path):
    """train.compile=true (torch.compile, dynamic shapes) trains like eager: the same loss at every
    step and the same validation loss. Dropout is off, since compiled dropout draws its masks from
    another generator; fp32, since compiled kernels fuse bf16 autocast's casts differently
    (rounding, not a fault)."""
    import json

    from nmt.config import load_config
    from nmt.prepare import prepare
    from nmt.train import train

    sets = [
        *toy_data,
        f"data.prepared_dir={tmp_path / 'prepared'}",
        "train.max_steps=4",
        "train.valid_every=100",
        "train.valid_bleu=false",
        "model.dropout=0.0",
        "train.threads=1",
        "train.log_every=1",
        "train.precision=fp32",
    ]
    prepare(load_config(repo_root / "configs" / "smoke.yaml", sets), log=lambda m: None)

    def losses(name, extra):
        run = train(
            load_config(repo_root / "configs" / "smoke.yaml", [*sets, *extra]), tmp_path / name
        )
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [r["train_loss"] for r in records if "train_loss" in r], [
            r["valid_loss"] for r in records if "valid_loss" in r
        ]

    (eager_train, eager_valid), (comp_train, comp_valid) = (
        losses("eager", []),
        losses("compiled", ["train.compile=true"]),
    )
    assert len(eager_train) == len(comp_train) == 4 and len(eager_valid) == len(comp_valid) == 1
    torch.testing.assert_close(comp_train, eager_train, rtol=1e-5, atol=0.0)
    torch.testing.assert_close(comp_valid, eager_valid, rtol=1e-5, atol=0.0)
    # it did learn: the comparison is not between two frozen models
    assert eager_train[-1] < eager_train[0]


# --- through the command line: the runs `nmt train` refuses ---


def test_train_refuses_a_run_dir_that_holds_a_run(cli, smoke: SmokeRun, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"")
    code, _, err = cli("train", "--config", SMOKE, "--run-dir", run, *smoke.sets)
    assert_one_error_line(code, err, run, "--resume")
    assert [p.name for p in run.iterdir()] == ["last.pt"]  # nothing written into it


def test_train_without_prepared_data(cli, tmp_path: Path) -> None:
    code, _, err = cli(
        "train",
        "--config",
        SMOKE,
        "--run-dir",
        tmp_path / "run",
        "--set",
        f"data.prepared_dir={tmp_path / 'unprepared'}",
    )
    assert_one_error_line(code, err, tmp_path / "unprepared", "nmt prepare")


def test_train_on_a_prepared_dir_of_another_format_version(
    cli, smoke: SmokeRun, tmp_path: Path
) -> None:
    import shutil

    prepared = Path(shutil.copytree(smoke.prepared, tmp_path / "prepared"))
    manifest = json.loads((prepared / "manifest.json").read_text())
    manifest["version"] += 1
    (prepared / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = cli(
        "train",
        "--config",
        SMOKE,
        "--run-dir",
        tmp_path / "run",
        "--set",
        f"data.prepared_dir={prepared}",
    )
    assert_one_error_line(
        code, err, prepared / "manifest.json", f"v{manifest['version']}", "nmt prepare"
    )
