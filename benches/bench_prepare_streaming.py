"""The whole `negrec-fast prepare` command with and without `--memory-limit` (issue 13): what
bounded memory costs in time, and what it saves in peak memory.

Each command runs as a fresh process on a generated MSSD log in the page cache (the log of
bench_ingest_command.py: `NEGREC_BENCH_ROWS` rows, default 3,000,000, about 500 MB; or the file
`NEGREC_BENCH_LOG` names). Limits: `NEGREC_BENCH_MEMORY_LIMITS` (default `256M,64M`; at 3M rows the item vocabulary, 200k
ids of 38 bytes, needs about 30 MB and must fit in half the limit). Each
round runs every command once, in turn; times are medians over the rounds, throughput is log
megabytes per second of the whole command (interpreter start included), peak memory is the
child's maximum resident set (VmHWM). The baseline is the same command on a 40-session log:
the interpreter and libraries, which no limit covers. The dataset folders must be identical.
Run: `pytest benches/bench_prepare_streaming.py --benchmark-only`.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench_ingest import ROWS, write_mssd
from negrec_fast.synthetic import generate_mssd

ROUNDS = 3
LIMITS = [s.strip() for s in os.environ.get("NEGREC_BENCH_MEMORY_LIMITS", "256M,64M").split(",") if s.strip()]


@pytest.fixture(scope="module")
def mssd_log(tmp_path_factory) -> Path:
    given = os.environ.get("NEGREC_BENCH_LOG")
    if given:
        return Path(given)
    path = tmp_path_factory.mktemp("bench_prepare_streaming") / f"mssd_{ROWS}.csv"
    write_mssd(path, ROWS)
    return path


# `python -m negrec_fast ARGS` that prints its peak resident set (VmHWM, KiB) on exit. (A
# child's ru_maxrss would not do: it counts the parent's pages the child had before exec.)
CHILD = """
import sys
from negrec_fast.cli import main
rc = main(sys.argv[1:])
print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")))
sys.exit(rc)
"""


def _run(args: list[str]) -> tuple[float, int]:
    """Wall time (s) and peak resident set (bytes) of `negrec-fast ARGS` in a fresh process."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{args} failed: {done.stderr}")
    return elapsed, int(done.stdout.strip().splitlines()[-1]) * 1024


def test_prepare_with_and_without_memory_limit(benchmark, mssd_log, tmp_path):
    mssd_log.read_bytes()  # into the page cache
    megabytes = mssd_log.stat().st_size / 1e6

    def command(log: Path, out: Path, limit: str | None) -> list[str]:
        cmd = ["prepare", "--format", "mssd", str(log), str(out), "--overwrite", "--no-progress"]
        return cmd + (["--memory-limit", limit] if limit else [])

    runs = {"in_memory": None, **{f"limit_{limit}": limit for limit in LIMITS}}
    times: dict[str, list[float]] = {name: [] for name in runs}
    peaks: dict[str, list[int]] = {name: [] for name in runs}

    def one_round():
        for name, limit in runs.items():
            elapsed, peak = _run(command(mssd_log, tmp_path / name, limit))
            times[name].append(elapsed)
            peaks[name].append(peak)

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    for name in runs:
        for file in ("sessions.arrow", "vocab.arrow", "manifest.json"):
            assert (tmp_path / name / file).read_bytes() == (tmp_path / "in_memory" / file).read_bytes(), (name, file)

    tiny = generate_mssd(tmp_path / "tiny.csv", n_sessions=40, n_items=50, seed=1)
    baseline = {name: _run(command(tiny, tmp_path / f"tiny_{name}", limit))[1] for name, limit in runs.items()}
    mib = 1 << 20
    info: dict[str, object] = {"rows": ROWS, "megabytes": round(megabytes, 1), "rounds": ROUNDS}
    median = {name: statistics.median(t[-ROUNDS:]) for name, t in times.items()}
    for name in runs:
        peak = max(peaks[name][-ROUNDS:])
        info[name] = {
            "median_s": round(median[name], 3),
            "mb_per_s": round(megabytes / median[name], 1),
            "peak_rss_mib": round(peak / mib, 1),
            "baseline_rss_mib": round(baseline[name] / mib, 1),
            "added_rss_mib": round((peak - baseline[name]) / mib, 1),
            "time_vs_in_memory": round(median[name] / median["in_memory"], 2),
        }
    benchmark.extra_info.update(info)
    for name in runs:
        shutil.rmtree(tmp_path / name, ignore_errors=True)


def test_ingest_call_with_and_without_memory_limit(benchmark, mssd_log, tmp_path):
    """The Rust ingest alone (`_core.ingest`, in this process, warm): the engine's own cost of
    streaming, without the interpreter start and the folder writing the command includes."""
    from negrec_fast import _core
    from negrec_fast.data.prepare import parse_size

    mssd_log.read_bytes()
    megabytes = mssd_log.stat().st_size / 1e6
    options = dict(format="mssd", require_skip=True)
    runs = {"in_memory": {}, **{f"limit_{s}": {"memory_limit": parse_size(s)} for s in LIMITS}}
    times: dict[str, list[float]] = {name: [] for name in runs}

    def one_round():
        for name, extra in runs.items():
            work = tmp_path / name
            if extra:
                extra = {**extra, "work_dir": str(work)}
            start = time.perf_counter()
            _core.ingest([str(mssd_log)], **options, **extra)
            times[name].append(time.perf_counter() - start)
            shutil.rmtree(work, ignore_errors=True)

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    median = {name: statistics.median(t[-ROUNDS:]) for name, t in times.items()}
    benchmark.extra_info.update(
        rows=ROWS,
        megabytes=round(megabytes, 1),
        **{
            name: {"median_s": round(m, 3), "mb_per_s": round(megabytes / m, 1),
                   "time_vs_in_memory": round(m / median["in_memory"], 2)}
            for name, m in median.items()
        },
    )
