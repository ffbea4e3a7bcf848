"""Negative sampling for a 1M-item catalogue (B=256, seq_len=20, K=1000): Rust vs numpy.

Both implement the same contract: K distinct ids, none reserved (< 2), none among the
batch's items, with log q. The Rust benchmark records its speed-up over the numpy one
measured in the same run (``extra_info['speedup_vs_numpy']``, target >= 50): Rust's
median time per batch against numpy's best of three 16-batch passes.
Run: ``pytest benches/bench_sampler.py --benchmark-only``.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from negrec_fast.sampling import BatchLoader, NegativeSampler

VOCAB = 1_000_002
B, SEQ_LEN, K = 256, 20, 1000
N_BATCHES = 64


def zipf_counts(rng: np.random.Generator) -> np.ndarray:
    counts = (1e6 / np.arange(1, VOCAB - 1) ** 0.9).astype(np.uint64)
    return np.concatenate([[0, 0], rng.permutation(counts)]).astype(np.uint64)


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    counts = zipf_counts(rng)
    q = counts / counts.sum()
    # Batches of items drawn by popularity, as in real logs (many repeats).
    batches = [rng.choice(VOCAB, size=(B, SEQ_LEN), p=q) for _ in range(N_BATCHES)]
    return counts, q, batches


def numpy_sample(rng, exclude, k, cdf, logq):
    """The same contract in numpy: rejection of reserved/excluded/duplicate draws."""
    excluded = np.unique(exclude)
    chosen = np.empty(0, np.int64)
    while len(chosen) < k:
        need = k - len(chosen)
        if cdf is None:
            cand = rng.integers(2, VOCAB, size=need + need // 4 + 16)
        else:
            cand = np.searchsorted(cdf, rng.random(need + need // 4 + 16), side="right")
        cand = cand[(cand >= 2) & ~np.isin(cand, excluded) & ~np.isin(cand, chosen)]
        _, first = np.unique(cand, return_index=True)
        chosen = np.concatenate([chosen, cand[np.sort(first)][:need]])
    return chosen, logq(chosen)


def numpy_timing(distribution, q, batches) -> float:
    """Seconds per batch of the numpy sampler (best of 3 passes)."""
    rng = np.random.default_rng(1)
    if distribution == "uniform":
        cdf, logq = None, lambda ids: np.full(len(ids), -np.log(VOCAB - 2), np.float32)
    else:
        cdf = np.cumsum(q)
        logq = lambda ids: np.log(q[ids]).astype(np.float32)  # noqa: E731
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for batch in batches[:16]:
            numpy_sample(rng, batch, K, cdf, logq)
        best = min(best, (time.perf_counter() - start) / 16)
    return best


@pytest.mark.parametrize("distribution", ["uniform", "popularity"])
def test_numpy_sampler(benchmark, setup, distribution):
    _, q, batches = setup
    per_batch = benchmark.pedantic(numpy_timing, args=(distribution, q, batches), rounds=1)
    benchmark.extra_info["batches_per_s"] = 1 / per_batch


@pytest.mark.parametrize("distribution", ["uniform", "popularity"])
def test_rust_sampler(benchmark, setup, distribution):
    counts, q, batches = setup
    sampler = NegativeSampler(VOCAB, distribution=distribution, alpha=1.0, item_counts=counts)
    index = iter(range(10**9))

    def one_batch():
        i = next(index)
        return sampler.sample(batches[i % N_BATCHES], K, batch_index=i)

    ids, logq = one_batch()
    assert len(set(ids.tolist())) == K and not np.isin(ids.numpy(), batches[0]).any()
    benchmark(one_batch)
    rust = benchmark.stats.stats.median  # robust to preemption on a busy machine
    numpy_per_batch = numpy_timing(distribution, q, batches)
    benchmark.extra_info["batches_per_s"] = 1 / rust
    benchmark.extra_info["numpy_batches_per_s"] = 1 / numpy_per_batch
    benchmark.extra_info["speedup_vs_numpy"] = numpy_per_batch / rust
    print(f"\n{distribution}: rust {1 / rust:,.0f} batches/s, numpy {1 / numpy_per_batch:,.0f} "
          f"batches/s, speed-up {numpy_per_batch / rust:.0f}x")


def test_batch_loader_epoch(benchmark, setup):
    """Whole batches (padding + negatives + zero-copy tensors) through the prefetch thread."""
    counts, _, _ = setup
    rng = np.random.default_rng(2)
    lengths = rng.integers(10, 21, size=20_000)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = rng.integers(2, VOCAB, size=offsets[-1]).astype(np.uint32)
    loader = BatchLoader(
        offsets=offsets, items=items, skips=np.zeros(len(items), np.uint8),
        train_end=lengths.astype(np.int32), vocab_size=VOCAB, item_counts=counts,
        distribution="popularity", batch_size=B, seq_len=SEQ_LEN, n_negatives=K,
    )
    epochs = iter(range(10**9))
    n = benchmark(lambda: sum(1 for _ in loader.epoch(next(epochs))))
    assert n == len(loader)
    benchmark.extra_info["batches_per_s"] = len(loader) / benchmark.stats.stats.mean
