"""Batch recommendation on CPU: sessions/s of ``recommend_file`` (Rust ingest, batched scoring,
Parquet output) against a plain torch loop over the same model, one session at a time.

SASRec with the default sizes (d=128, 2 layers, max_len=20), top-100, skipped plays excluded.
The batch run covers the whole file (ingest and writing included); the loop gets its sessions
already parsed and encoded and is timed on its first ``NEGREC_BENCH_REC_LOOP`` sessions
(default 50), which is enough for a rate. ``extra_info['speedup_vs_torch_loop']`` is the ratio
of the two rates measured in the same run.

Default size (about a minute on 2 idle cores): 5,000 sessions, 100,000 items. Full size:
``NEGREC_BENCH_REC_SESSIONS=100000 NEGREC_BENCH_REC_ITEMS=1000000 pytest benches/bench_recommend.py --benchmark-only -s``.
"""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch

from negrec_fast.batch_recommend import recommend_file
from negrec_fast.config import Config
from negrec_fast.recommend import Recommender
from negrec_fast.models import build_model_for

N_SESSIONS = int(os.environ.get("NEGREC_BENCH_REC_SESSIONS", 5_000))
N_ITEMS = int(os.environ.get("NEGREC_BENCH_REC_ITEMS", 100_000))
N_LOOP = int(os.environ.get("NEGREC_BENCH_REC_LOOP", 50))
K = 100


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    rng = np.random.default_rng(0)
    vocab = ["[PAD]", "[MASK]"] + [f"t{i:07d}" for i in range(N_ITEMS)]
    lengths = rng.integers(5, 31, size=N_SESSIONS)
    plays = rng.zipf(1.3, size=lengths.sum()) % N_ITEMS  # popular items repeat, as in real logs
    skips = rng.random(lengths.sum()) < 0.3
    table = pa.table({
        "session_id": np.repeat(np.arange(N_SESSIONS), lengths),
        "item_id": pa.array(vocab, pa.large_string()).take(pa.array(plays + 2)),
        "skipped": skips,
    })
    path = tmp_path_factory.mktemp("bench_recommend") / "sessions.csv"
    pacsv.write_csv(table, path)
    cfg = Config.from_dict({"data": {"max_len": 20}})
    torch.manual_seed(0)
    model = build_model_for(cfg, len(vocab))
    dataset = SimpleNamespace(vocab=pa.array(vocab, pa.large_string()), vocab_size=len(vocab))
    rec = Recommender(model, dataset, cfg, torch.device("cpu"))
    starts = np.concatenate([[0], np.cumsum(lengths)])
    sessions = [(plays[a:b] + 2, skips[a:b]) for a, b in zip(starts[:N_LOOP], starts[1 : N_LOOP + 1])]
    return rec, path, sessions, vocab


@torch.no_grad()
def torch_loop(model: torch.nn.Module, sessions, vocab: list[str], max_len: int) -> list[list[str]]:
    """One session at a time: left-pad, query, score the catalogue, mask skipped, top-K, decode."""
    out = []
    for items, skipped in sessions:
        x = torch.zeros(1, max_len, dtype=torch.int64)
        tail = torch.from_numpy(items[-max_len:].astype(np.int64))
        x[0, max_len - len(tail):] = tail
        scores = model.score_all(model.next_query(x))[0]
        scores[torch.from_numpy(items[skipped].astype(np.int64))] = float("-inf")
        out.append([vocab[i] for i in torch.topk(scores, K).indices.tolist()])
    return out


@pytest.fixture(scope="module")
def loop(setup) -> tuple[float, list[list[str]]]:
    """Sessions/s of the torch loop and its top-K, measured once per run."""
    rec, _, sessions, vocab = setup
    tic = time.perf_counter()
    top = torch_loop(rec.model, sessions, vocab, rec.config.data.max_len)
    return len(sessions) / (time.perf_counter() - tic), top


def test_recommend_torch_loop(benchmark, setup, loop):
    rec, _, sessions, vocab = setup
    benchmark.pedantic(torch_loop, args=(rec.model, sessions, vocab, rec.config.data.max_len), rounds=1)
    benchmark.extra_info["sessions_per_s"] = len(sessions) / benchmark.stats.stats.median
    benchmark.extra_info["sessions"] = len(sessions)


def test_recommend_batch(benchmark, setup, loop, tmp_path):
    rec, path, sessions, vocab = setup
    loop_rate, expected = loop
    out = tmp_path / "recs.parquet"

    def run():
        return recommend_file(rec, path, out, k=K, progress=False, skip_column="skipped")

    summary = benchmark.pedantic(run, rounds=1)
    by_session = {r["session"]: r["items"] for r in pq.read_table(out, columns=["session", "items"]).to_pylist()}
    same = [len(set(by_session[str(i)]) & set(top)) / K for i, top in enumerate(expected)]
    assert np.mean(same) > 0.99  # the same top-K (up to near-ties of batched vs single matmuls)
    rate = summary.n_sessions / benchmark.stats.stats.median
    benchmark.extra_info.update(
        sessions=summary.n_sessions, items=N_ITEMS, sessions_per_s=rate, torch_loop_sessions_per_s=loop_rate,
        speedup_vs_torch_loop=rate / loop_rate,
    )
    print(f"\n{summary.n_sessions} sessions x {N_ITEMS} items: batch {rate:,.0f} sessions/s, "
          f"torch loop {loop_rate:,.0f} sessions/s, speed-up {rate / loop_rate:.1f}x")
