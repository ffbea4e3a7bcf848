"""Rows per second of the synthetic MSSD generator (default 3M rows; NEGREC_BENCH_ROWS).

Run: ``pytest benches/bench_synthetic.py --benchmark-only`` (threads: NEGREC_NUM_THREADS).
"""

from __future__ import annotations

import gzip
import os

import pytest

from negrec_fast.synthetic import generate_mssd

ROWS = int(os.environ.get("NEGREC_BENCH_ROWS", "3000000"))
MEAN_LENGTH = 15  # sessions of 10..20 plays


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_generate_mssd(benchmark, tmp_path, suffix):
    path = tmp_path / f"synthetic{suffix}"
    n_sessions = max(1, ROWS // MEAN_LENGTH)
    benchmark.pedantic(
        generate_mssd, args=(path,), kwargs={"n_sessions": n_sessions, "n_items": 100_000},
        rounds=3, iterations=1,
    )
    with (gzip.open if suffix == ".csv.gz" else open)(path, "rb") as f:
        rows = sum(1 for _ in f) - 1
    benchmark.extra_info["rows"] = rows
    benchmark.extra_info["rows_per_s"] = rows / benchmark.stats.stats.mean
    benchmark.extra_info["bytes"] = path.stat().st_size
    print(f"\n{suffix}: {rows:,} rows, {rows / benchmark.stats.stats.mean:,.0f} rows/s")
