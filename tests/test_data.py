"""Batches: teacher-forcing layout, masks, and token-budget buckets."""

import numpy as np

from nmt.data import Split, bucket_batches, make_batch, split_batch
from nmt.tokenizer import BOS, EOS, PAD


def test_batch_layout_for_teacher_forcing():
    split = Split.from_lists([[5, 6, 7], [8]], [[9, 10], [11, 12, 13]])
    b = split_batch(split, np.array([0, 1]))
    assert b.src.tolist() == [[5, 6, 7, EOS], [8, EOS, PAD, PAD]]
    assert b.src_pad_mask.tolist() == [[False] * 4, [False, False, True, True]]
    assert b.tgt_in.tolist() == [[BOS, 9, 10, PAD], [BOS, 11, 12, 13]]
    assert b.tgt_out.tolist() == [[9, 10, EOS, PAD], [11, 12, 13, EOS]]
    assert (b.n_src, b.n_tgt) == (6, 7)  # EOS counted: it is predicted, so it is a label


def test_make_batch_without_target():
    b = make_batch([np.array([4, 5])], None, np.array([0]))
    assert b.tgt_in is None and b.tgt_out is None and b.src.tolist() == [[4, 5, EOS]]


def lengths(n=500, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(1, 40, n), rng.integers(1, 40, n)


def test_buckets_cover_every_sentence_once_within_budget():
    src, tgt = lengths()
    batches = bucket_batches(src, tgt, 300, seed=1, epoch=0)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(500))
    for b in batches:
        width = int(np.maximum(src[b], tgt[b]).max()) + 1
        assert width * len(b) <= 300 or len(b) == 1


def test_buckets_are_a_function_of_seed_and_epoch():
    src, tgt = lengths()
    same = [bucket_batches(src, tgt, 300, seed=1, epoch=3) for _ in range(2)]
    assert all(np.array_equal(a, b) for a, b in zip(*same))
    other = bucket_batches(src, tgt, 300, seed=1, epoch=4)
    assert any(len(a) != len(b) or not np.array_equal(a, b) for a, b in zip(same[0], other))


def test_sorting_by_length_keeps_padding_small():
    rng = np.random.default_rng(0)
    src = rng.integers(1, 40, 2000)
    tgt = np.maximum(1, src + rng.integers(-3, 4, 2000))  # translations have correlated lengths

    def padding_share(batches):  # each side is padded to its own longest sentence
        real = sum(int(src[b].sum() + tgt[b].sum()) for b in batches)
        padded = sum(len(b) * int(src[b].max() + tgt[b].max()) for b in batches)
        return 1 - real / padded

    rng = np.random.default_rng(0)
    order = rng.permutation(2000)
    random_batches = [order[i : i + 20] for i in range(0, 2000, 20)]
    assert padding_share(bucket_batches(src, tgt, 800, seed=1)) < 0.5 * padding_share(
        random_batches
    )
