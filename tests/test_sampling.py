"""BatchLoader and NegativeSampler: shapes, padding, exclusion, logq, determinism, sharding."""

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
    loader = BatchLoader(data, batch_size=8, seq_len=6, n_negatives=20, shuffle=False)
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


@pytest.mark.parametrize("distribution", ["uniform", "popularity"])
def test_negatives_exclude_batch_items_and_reserved_ids(data, distribution):
    loader = BatchLoader(
        data, batch_size=16, seq_len=8, n_negatives=60, distribution=distribution, alpha=0.5, seed=2
    )
    counts = train_counts(data).astype(np.float64)
    q = np.where(counts > 0, counts**0.5, 0.0)
    q /= q.sum()
    for batch in loader.epoch(1):
        negatives = batch.negatives.numpy()
        assert len(set(negatives.tolist())) == 60
        assert negatives.min() >= 2 and negatives.max() < VOCAB
        assert not np.isin(negatives, batch.items.numpy()).any()
        if distribution == "uniform":
            expected = np.full(60, -np.log(VOCAB - 2))
        else:
            assert (counts[negatives] > 0).all()
            expected = np.log(q[negatives])
        np.testing.assert_allclose(batch.neg_logq.numpy(), expected, rtol=1e-5)


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
        per_rank.append(torch.cat([b.sessions for b in out]).tolist())
    seen = sum(per_rank, [])
    assert len(seen) == len(set(seen))
    trainable = set(np.flatnonzero(data.train_end >= 2).tolist())
    if drop_last:
        assert len({len(s) for s in per_rank}) == 1
        assert set(seen) <= trainable and all(len(s) % 5 == 0 for s in per_rank)
    else:
        assert set(seen) == trainable


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
    assert logq.tolist() == pytest.approx([math.log(0.1)] * 8)


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
    np.testing.assert_allclose(batch.neg_logq.numpy()[order], np.log([1 / 8, 1 / 8, 1 / 8, 5 / 8]), rtol=1e-6)
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
