"""Batches: teacher-forcing layout, masks, and token-budget buckets."""

import numpy as np

from nmt.data import Split, bucket_batches, make_batch, pack, split_batch
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


def plain_pack(width: np.ndarray, max_tokens: int) -> list[tuple[int, int]]:
    """The packing rule, one sentence at a time: a sentence joins the batch unless rows x widest
    would exceed the budget."""
    out, start, longest = [], 0, 0
    for k in range(len(width)):
        longest_k = max(longest, int(width[k]))
        if k > start and longest_k * (k - start + 1) > max_tokens:
            out.append((start, k))
            start, longest_k = k, int(width[k])
        longest = longest_k
    if len(width) > start:
        out.append((start, len(width)))
    return out


def test_packing_equals_the_plain_rule():
    rng = np.random.default_rng(3)
    for max_tokens in (8, 50, 300, 4096):
        for width in (
            rng.integers(2, 60, 3000),
            np.sort(rng.integers(2, 60, 3000)),
            rng.integers(2, 400, 500),  # rows wider than the budget get a batch of their own
            np.array([7]),
            np.zeros(0, np.int64),
        ):
            assert pack(width, max_tokens) == plain_pack(width, max_tokens), (max_tokens, width)


def test_buckets_sort_as_lexsort_by_target_then_source_length():
    """The one-key radix sort orders as np.lexsort would, short lengths (16-bit key) or long."""
    rng = np.random.default_rng(5)
    for high in (40, 2000):
        src, tgt = rng.integers(1, high, 3000), rng.integers(1, high, 3000)
        order = np.random.default_rng([1, 0]).permutation(3000)
        expected = order[np.lexsort((src[order], tgt[order]))]
        got = np.concatenate(bucket_batches(src, tgt, 10**9, seed=1, epoch=0))  # one batch
        assert np.array_equal(got, expected), high
