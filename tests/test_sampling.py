"""BatchLoader and NegativeSampler: shapes, windows, padding, exclusion, inclusion probabilities,
determinism, sharding."""

from __future__ import annotations

import math
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from negrec_fast.sampling import Batch, BatchLoader, NegativeSampler

VOCAB = 200


@pytest.fixture(scope="module")
def data() -> SimpleNamespace:
    """A duck-typed dataset: 60 sessions of 1..12 plays, a few too short to train on."""
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 13, size=60)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = rng.integers(2, VOCAB, size=offsets[-1]).astype(np.uint32)
    skips = (rng.random(offsets[-1]) < 0.3).astype(np.uint8)
    train_end = np.maximum(lengths - rng.integers(0, 3, size=60), 0).astype(np.int32)
    counts = np.bincount(items, minlength=VOCAB).astype(np.uint64)
    return SimpleNamespace(
        offsets=offsets, items=items, skips=skips, train_end=train_end,
        item_counts=counts, vocab_size=VOCAB,
    )


def train_counts(data: SimpleNamespace) -> np.ndarray:
    """Reference: plays of each id at positions < train_end, by a plain loop."""
    counts = np.zeros(data.vocab_size, np.uint64)
    for s, end in enumerate(data.train_end):
        for id_ in data.items[data.offsets[s]:data.offsets[s] + end]:
            counts[id_] += 1
    return counts


def batches(loader: BatchLoader, epoch: int = 0, start: int = 0) -> list[Batch]:
    return list(loader.epoch(epoch, start))


def test_shapes_dtypes_and_left_padding(data):
    loader = BatchLoader(data, batch_size=8, seq_len=6, n_negatives=20, shuffle=False, windows="last")
    n_examples = int((data.train_end >= 2).sum())
    assert loader.n_examples == n_examples
    assert len(loader) == math.ceil(n_examples / 8)
    out = batches(loader)
    assert len(out) == len(loader)
    assert [b.items.shape[0] for b in out[:-1]] == [8] * (len(out) - 1)
    assert out[-1].items.shape == (n_examples - 8 * (len(out) - 1), 6)
    first = out[0]
    assert (first.items.dtype, first.skips.dtype) == (torch.int64, torch.bool)
    assert (first.negatives.dtype, first.neg_logq.dtype, first.sessions.dtype) == (
        torch.int64, torch.float32, torch.int64,
    )
    assert first.negatives.shape == first.neg_logq.shape == (20,)
    trainable = np.flatnonzero(data.train_end >= 2)
    assert torch.cat([b.sessions for b in out]).tolist() == trainable.tolist()
    for batch in out:
        for row, s in enumerate(batch.sessions.tolist()):
            start = data.offsets[s]
            end = start + data.train_end[s]
            take = min(6, end - start)
            expected = np.zeros(6, np.int64)
            expected[6 - take:] = data.items[end - take:end]
            assert batch.items[row].tolist() == expected.tolist()
            exp_skips = np.zeros(6, bool)
            exp_skips[6 - take:] = data.skips[end - take:end] == 1
            assert batch.skips[row].tolist() == exp_skips.tolist()


def poisson_inclusion(q: np.ndarray, allowed: np.ndarray, k: int) -> np.ndarray:
    """Reference: pi = 1 - exp(-lambda q'), q' = q over the allowed ids renormalised, lambda
    found by bisection so that the pi of the allowed ids sum to k; 0 elsewhere."""
    q_allowed = np.where(allowed, q, 0.0)
    q_allowed = q_allowed / q_allowed.sum()
    lo, hi = 0.0, 1.0
    while (1 - np.exp(-hi * q_allowed[allowed])).sum() < k:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if (1 - np.exp(-mid * q_allowed[allowed])).sum() < k else (lo, mid)
    return np.where(allowed, 1 - np.exp(-lo * q_allowed), 0.0)


@pytest.mark.parametrize("distribution", ["uniform", "popularity"])
def test_negatives_exclude_batch_items_and_report_inclusion_probabilities(data, distribution):
    loader = BatchLoader(
        data, batch_size=16, seq_len=8, n_negatives=60, distribution=distribution, alpha=0.5, seed=2
    )
    counts = train_counts(data).astype(np.float64)
    q = np.where(counts > 0, counts**0.5, 0.0) if distribution == "popularity" else np.ones(VOCAB)
    q[:2] = 0.0
    for batch in loader.epoch(1):
        negatives = batch.negatives.numpy()
        assert len(set(negatives.tolist())) == 60
        assert negatives.min() >= 2 and negatives.max() < VOCAB
        assert not np.isin(negatives, batch.items.numpy()).any()
        assert (q[negatives] > 0).all()
        allowed = (q > 0) & ~np.isin(np.arange(VOCAB), batch.items.numpy())
        if distribution == "uniform":
            expected = np.full(60, 60 / allowed.sum())
        else:
            expected = poisson_inclusion(q, allowed, 60)[negatives]
        np.testing.assert_allclose(np.exp(batch.neg_logq.numpy()), expected, rtol=1e-4)


def test_sampler_matches_loader_and_log_prob(data):
    loader = BatchLoader(data, batch_size=8, seq_len=5, n_negatives=30, seed=7)
    sampler = NegativeSampler(VOCAB, seed=7)
    for index, batch in enumerate(loader.epoch(3)):
        ids, logq = sampler.sample(batch.items, 30, epoch=3, rank=0, batch_index=index)
        assert torch.equal(ids, batch.negatives) and torch.equal(logq, batch.neg_logq)
    lp = sampler.log_prob(torch.tensor([[0, 1], [2, VOCAB - 1]]))
    assert lp.shape == (2, 2)
    assert lp[0].tolist() == [-math.inf, -math.inf]
    assert lp[1].tolist() == pytest.approx([-math.log(VOCAB - 2)] * 2)


def test_deterministic_across_prefetch_and_resume(data):
    def run(prefetch: int, start: int = 0) -> list[list[list]]:
        loader = BatchLoader(data, batch_size=4, seq_len=5, n_negatives=10, seed=1, prefetch=prefetch)
        return [[t.tolist() for t in (b.items, b.negatives, b.sessions)] for b in batches(loader, 2, start)]

    full = run(1)
    assert full == run(8)
    assert run(3, start=5) == full[5:]
    other = BatchLoader(data, batch_size=4, seq_len=5, n_negatives=10, seed=1)
    assert [b.sessions.tolist() for b in batches(other, 3)] != [row[2] for row in full]


def window_ends(train_end: int, seq_len: int, windows: str = "all") -> list[int]:
    """Reference: ends of a session's windows, from the definition (train_end, then
    max_len = seq_len - 1 plays earlier, ..., while >= 2)."""
    ends = [e for e in range(train_end, 1, -(seq_len - 1))]
    return ends[:1] if windows == "last" else ends


@pytest.mark.parametrize("drop_last", [False, True])
def test_sharding_across_ranks(data, drop_last):
    world = 3
    per_rank = []
    for rank in range(world):
        loader = BatchLoader(
            data, batch_size=5, seq_len=4, n_negatives=5, rank=rank, world_size=world,
            drop_last=drop_last,
        )
        out = batches(loader, epoch=4)
        assert len(out) == len(loader)
        rows = torch.cat([b.sessions for b in out]).tolist()
        sessions, ends = (a[: len(rows)].tolist() for a in loader._core.shard(4))
        assert rows == sessions
        per_rank.append(list(zip(sessions, ends)))
    seen = sum(per_rank, [])
    assert len(seen) == len(set(seen))
    every = {(s, e) for s, end in enumerate(data.train_end) for e in window_ends(int(end), 4)}
    if drop_last:
        assert len({len(s) for s in per_rank}) == 1
        assert set(seen) <= every and all(len(s) % 5 == 0 for s in per_rank)
    else:
        assert set(seen) == every


def test_early_break_stops_the_thread(data):
    loader = BatchLoader(data, batch_size=1, seq_len=4, n_negatives=5, prefetch=1)
    before = threading.active_count()
    started = time.monotonic()
    for _ in range(50):
        for batch in loader.epoch(0):
            assert batch.items.shape == (1, 4)
            break
    epoch = loader.epoch(1)
    next(epoch)
    epoch.close()
    with pytest.raises(StopIteration):
        next(epoch)
    assert time.monotonic() - started < 10
    assert threading.active_count() == before


def test_popularity_uses_dataset_counts_and_skips_unseen_items(data):
    counts = np.zeros(VOCAB, np.uint64)
    counts[2:12] = 5
    sampler = NegativeSampler(VOCAB, distribution="popularity", item_counts=counts)
    ids, logq = sampler.sample(np.array([3, 4]), 8)
    assert set(ids.tolist()) == set(range(2, 12)) - {3, 4}
    assert logq.tolist() == [0.0] * 8  # every allowed item is drawn: pi = 1
    assert sampler.log_prob(ids).tolist() == pytest.approx([math.log(0.1)] * 8)


def test_errors_are_clear(data):
    sampler = NegativeSampler(VOCAB)
    with pytest.raises(ValueError, match=r"cannot draw 198 distinct negatives: only 197 items"):
        sampler.sample(np.array([5]), 198)
    with pytest.raises(ValueError, match=r"exclude\[1\] = 200 is not an item id"):
        sampler.sample(np.array([5, VOCAB]), 3)
    with pytest.raises(ValueError, match="distribution must be 'uniform' or 'popularity'"):
        NegativeSampler(VOCAB, distribution="zipf")
    with pytest.raises(ValueError, match="item_counts are all zero"):
        NegativeSampler(VOCAB, distribution="popularity", item_counts=np.zeros(VOCAB, np.int64))
    with pytest.raises(ValueError, match=r"rank must be in \[0, world_size = 2\), got 2"):
        BatchLoader(data, rank=2, world_size=2)
    with pytest.raises(ValueError, match=r"items\[\d+\] = \d+ is not an item id .*vocab_size = 50"):
        BatchLoader(data, vocab_size=50)
    with pytest.raises(ValueError, match=r"items has values in \[-1, 5\]"):
        BatchLoader(offsets=[0, 2], items=[-1, 5], skips=[0, 0], train_end=[2], vocab_size=9)
    with pytest.raises(ValueError, match="missing: skips, vocab_size"):
        BatchLoader(offsets=[0, 2], items=[2, 3], train_end=[2])
    loader = BatchLoader(data, batch_size=64, seq_len=12, n_negatives=VOCAB - 3)
    with pytest.raises(ValueError, match="epoch 0, batch 0: cannot draw 197 distinct negatives"):
        next(iter(loader.epoch(0)))


def test_popularity_counts_come_from_training_plays_only(data):
    loader = BatchLoader(data, batch_size=16, seq_len=8, n_negatives=60, distribution="popularity")
    counts = loader.train_item_counts
    assert counts.dtype == np.uint64 and counts.shape == (VOCAB,)
    np.testing.assert_array_equal(counts, train_counts(data))
    assert counts[:2].tolist() == [0, 0]
    assert (counts <= data.item_counts).all() and (counts < data.item_counts).any()
    with pytest.raises(ValueError, match="read-only"):
        counts[5] = 1
    # Items played only at or after train_end (held-out targets) are never drawn.
    held_out_only = np.flatnonzero((counts == 0) & (data.item_counts > 0))
    assert held_out_only.size > 0
    drawn = np.concatenate([b.negatives.numpy() for b in loader.epoch(0)])
    assert not np.isin(drawn, held_out_only).any()
    # Uniform loaders report the same counts (the trainer uses them for in-batch logQ).
    np.testing.assert_array_equal(BatchLoader(data, n_negatives=5).train_item_counts, counts)


def test_explicit_item_counts_override_the_training_counts():
    # One session; item 9 is its held-out last play. The explicit counts put all mass
    # on items 5..8, which never occur in the data.
    counts = np.zeros(12, np.uint64)
    counts[5:9] = [1, 1, 1, 5]
    kwargs = dict(
        offsets=[0, 4], items=[2, 3, 4, 9], skips=[0, 1, 0, 0], train_end=[3], vocab_size=12,
        seq_len=4, n_negatives=4, distribution="popularity",
    )
    loader = BatchLoader(**kwargs, item_counts=counts)
    assert loader.train_item_counts.tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    (batch,) = loader.epoch(0)
    order = np.argsort(batch.negatives.numpy())
    assert batch.negatives.numpy()[order].tolist() == [5, 6, 7, 8]
    assert batch.neg_logq.tolist() == [0.0] * 4  # all 4 drawable items are drawn
    sampler = NegativeSampler(12, distribution="popularity", item_counts=counts)
    np.testing.assert_allclose(
        sampler.log_prob(batch.negatives.numpy()[order]).numpy(), np.log([1 / 8, 1 / 8, 1 / 8, 5 / 8]), rtol=1e-6
    )
    # Without them, only the training plays 2, 3, 4 could be drawn, and the batch holds them all.
    with pytest.raises(ValueError, match=r"n_negatives = 4 is more than the 3 items the sampler can draw"):
        BatchLoader(**kwargs)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"seq_len": 2**62}, r"batch_size \* seq_len = 256 \* 4611686018427387904 = \d+ positions per batch "
         r"is too many \(at most 2\^26 = 67108864, about 600 MB of buffers\); lower batch_size or seq_len"),
        ({"seq_len": 2**36}, r"256 \* 68719476736 = 17592186044416 positions per batch is too many"),
        ({"seq_len": 1}, r"seq_len must be at least 2 \(inputs x\[:, :-1\] and targets x\[:, 1:\]\), got 1"),
        ({"prefetch": 0}, "prefetch must be between 1 and 64 batches, got 0"),
        ({"prefetch": 65}, "prefetch must be between 1 and 64 batches, got 65"),
        ({"n_negatives": 9}, r"n_negatives = 9 is more than the 8 items the sampler can draw"),
        ({"vocab_size": 2**40}, "vocab_size must be between 3 and 4294967295"),
    ],
)
def test_impossible_shapes_fail_at_construction(options, message):
    kwargs = dict(offsets=[0, 3], items=[2, 3, 4], skips=[0, 0, 0], train_end=[3], vocab_size=10, n_negatives=2)
    with pytest.raises(ValueError, match=message):
        BatchLoader(**(kwargs | options))


def two_batch_loader(n_negatives: int) -> BatchLoader:
    """Batch 0 holds ids {2, 3}, batch 1 ids {4..9}, from a catalogue of ids 2..11."""
    return BatchLoader(
        offsets=[0, 2, 4, 10, 12], items=[2, 3, 3, 2, 4, 5, 6, 7, 8, 9, 4, 5], skips=[0] * 12,
        train_end=[2, 2, 6, 2], vocab_size=12, batch_size=2, seq_len=6, n_negatives=n_negatives,
        shuffle=False,
    )


def test_a_batch_that_cannot_get_its_negatives_raises_not_a_short_epoch():
    assert len(list(two_batch_loader(4).epoch(0))) == 2
    loader = two_batch_loader(6)
    assert len(loader) == 2
    epoch = loader.epoch(3)
    assert next(epoch).negatives.shape == (6,)
    message = (
        r"^epoch 3, batch 1: cannot draw 6 distinct negatives: only 4 items are allowed \(10 catalogue "
        r"items \(vocab_size 12 minus 2 reserved ids\) minus 6 in the batch\); lower the number of "
        r"negatives or the batch size$"
    )
    with pytest.raises(ValueError, match=message):
        next(epoch)
    with pytest.raises(StopIteration):
        next(epoch)
    with pytest.raises(ValueError, match=message.replace("epoch 3", "epoch 0")):
        list(loader.epoch(0))


def unique_plays(n_sessions: int = 50) -> SimpleNamespace:
    """Sessions of 0..16 plays where every play has its own id (2 + its index), so a row
    names its plays; train_end cuts 0..3 plays off the end."""
    rng = np.random.default_rng(8)
    lengths = rng.integers(0, 17, size=n_sessions)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n = int(offsets[-1])
    return SimpleNamespace(
        offsets=offsets, items=np.arange(2, n + 2, dtype=np.uint32),
        skips=(rng.random(n) < 0.3).astype(np.uint8),
        train_end=np.maximum(lengths - rng.integers(0, 4, size=n_sessions), 0).astype(np.int32),
        vocab_size=n + 2,
    )


@pytest.mark.parametrize(("seq_len", "batch_size"), [(6, 8), (2, 5), (21, 3)])
def test_all_windows_make_every_training_play_a_target_once_per_epoch(seq_len, batch_size):
    d = unique_plays()
    session_of = np.repeat(np.arange(len(d.train_end)), np.diff(d.offsets))
    position = np.arange(d.offsets[-1]) - d.offsets[session_of]
    training = position < d.train_end[session_of]
    loader = BatchLoader(d, batch_size=batch_size, seq_len=seq_len, n_negatives=4, seed=3)
    for epoch in (0, 1):
        targets = []
        for batch in loader.epoch(epoch):
            items = batch.items.numpy()
            plays = items[items != 0] - 2
            assert training[plays].all(), "a play at or after train_end was in a batch"
            for row, s in zip(items, batch.sessions.tolist()):
                assert (session_of[row[row != 0] - 2] == s).all()
                for prev, cur in zip(row[:-1], row[1:]):
                    if prev != 0:  # targets x[:, 1:] with an input before them
                        assert cur == prev + 1
                        targets.append(cur - 2)
        expected = np.flatnonzero(training & (position >= 1))
        assert sorted(targets) == expected.tolist()
    n_windows = sum(len(window_ends(int(t), seq_len)) for t in d.train_end)
    assert loader.n_examples == n_windows


def test_last_windows_reproduce_the_previous_batches(data):
    # Recorded from the loader before windows existed (one example per session).
    loader = BatchLoader(data, batch_size=8, seq_len=6, n_negatives=20, seed=5, windows="last")
    out = batches(loader, 2)
    assert torch.cat([b.sessions for b in out]).tolist() == [
        37, 28, 39, 3, 10, 40, 5, 27, 24, 43, 2, 7, 21, 54, 15, 35, 30, 36, 56, 13, 14, 58, 12, 47, 59, 49, 6,
        0, 29, 45, 55, 20, 4, 33, 19, 1, 53, 44, 26, 34, 50, 16, 46, 11, 17, 32, 23, 31, 25, 9, 22, 51, 38,
    ]
    assert out[0].negatives.tolist() == [
        106, 37, 85, 139, 27, 145, 180, 100, 55, 197, 49, 138, 39, 184, 19, 92, 74, 99, 147, 97,
    ]
    assert out[-1].negatives.tolist() == [
        146, 78, 103, 183, 71, 25, 120, 194, 98, 50, 107, 34, 164, 149, 55, 51, 96, 165, 148, 141,
    ]


@pytest.mark.parametrize("windows", ["all", "last"])
def test_resuming_mid_epoch_gives_the_same_batches(windows):
    d = unique_plays()
    loader = BatchLoader(d, batch_size=4, seq_len=5, n_negatives=6, seed=9, windows=windows, exclude="kept")
    full = [[t.tolist() for t in (b.items, b.negatives, b.neg_logq, b.sessions)] for b in batches(loader, 1)]
    tail = [[t.tolist() for t in (b.items, b.negatives, b.neg_logq, b.sessions)] for b in batches(loader, 1, 7)]
    assert tail == full[7:]


def test_kept_exclusion_draws_skipped_items_but_never_kept_ones(data):
    loader = BatchLoader(data, batch_size=8, seq_len=6, n_negatives=40, seed=4, exclude="kept")
    sampler = NegativeSampler(VOCAB, seed=4)
    skipped_drawn = 0
    for index, batch in enumerate(loader.epoch(0)):
        items, skips, negatives = batch.items.numpy(), batch.skips.numpy(), batch.negatives.numpy()
        kept = items[(items != 0) & ~skips]
        skipped_only = np.setdiff1d(items[skips], kept)
        assert not np.isin(negatives, kept).any()
        skipped_drawn += np.isin(negatives, skipped_only).sum()
        allowed = VOCAB - 2 - len(np.unique(kept))
        np.testing.assert_allclose(np.exp(batch.neg_logq.numpy()), 40 / allowed, rtol=1e-5)
        ids, log_pi = sampler.sample(kept, 40, epoch=0, batch_index=index)
        assert torch.equal(ids, batch.negatives) and torch.equal(log_pi, batch.neg_logq)
    assert skipped_drawn > 0
    with pytest.raises(ValueError, match="exclude must be 'all' or 'kept', got \"skipped\""):
        BatchLoader(data, exclude="skipped")
    with pytest.raises(ValueError, match="windows must be 'all' or 'last', got \"first\""):
        BatchLoader(data, windows="first")


def inclusion_frequencies(sampler: NegativeSampler, exclude: np.ndarray, k: int, rounds: int):
    """How often each id is drawn over `rounds` batches, and exp(log_pi) as reported."""
    seen, pi = np.zeros(sampler.vocab_size), np.zeros(sampler.vocab_size)
    for b in range(rounds):
        ids, log_pi = sampler.sample(exclude, k, epoch=1, batch_index=b)
        seen[ids.numpy()] += 1
        pi[ids.numpy()] = np.exp(log_pi.numpy())
    return seen / rounds, pi


def test_uniform_inclusion_probability_is_exact_by_monte_carlo():
    exclude = np.array([0, 2, 5, 5, 6, 13, 29])
    freq, pi = inclusion_frequencies(NegativeSampler(32, seed=1), exclude, 5, 12_000)
    allowed = np.ones(32, bool)
    allowed[:2] = allowed[exclude] = False
    assert (freq[~allowed] == 0).all() and (pi[~allowed] == 0).all()
    np.testing.assert_allclose(pi[allowed], 5 / allowed.sum(), rtol=1e-6)
    assert pi.sum() == pytest.approx(5, rel=1e-5)
    # binomial sd at pi = 0.2 over 12k rounds: 0.0037; within 5 sd
    np.testing.assert_allclose(freq[allowed], pi[allowed], atol=0.02)


def test_popularity_inclusion_probability_matches_monte_carlo():
    counts = np.zeros(32, np.uint64)
    counts[2:] = 1 + (np.arange(30) * 7) % 11  # counts 1..11
    exclude = np.array([3, 4, 20, 0])
    sampler = NegativeSampler(32, distribution="popularity", alpha=1.0, item_counts=counts, seed=2)
    freq, pi = inclusion_frequencies(sampler, exclude, 8, 12_000)
    allowed = counts > 0
    allowed[exclude] = False
    np.testing.assert_allclose(pi, poisson_inclusion(counts.astype(float), allowed, 8), rtol=1e-4, atol=1e-7)
    assert pi.sum() == pytest.approx(8, rel=1e-5)
    assert (freq[~allowed] == 0).all()
    # The Poisson approximation of drawing without replacement, checked to 0.025; the
    # uncorrected K q' is off by more than that on the most popular items.
    assert np.abs(freq - pi).max() < 0.025
    q = np.where(allowed, counts, 0) / counts[allowed].sum()
    assert np.abs(freq - 8 * q).max() > 0.04
