"""`prepare --memory-limit` (issue 13): a log several times larger than the limit is prepared in
bounded memory into the same dataset folder as in memory.

"Same output": sessions.arrow, vocab.arrow and manifest.json equal byte for byte (so the manifest
checksums agree too), and the tables read back with plain pyarrow are equal. Peak memory is the
child process's VmHWM; the baseline is the same command on a tiny log (interpreter, numpy,
pyarrow and the extension loaded, thread pool started: about 75 MB here), and the limit
bounds what a large log adds to it.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from negrec_fast.data import prepare
from negrec_fast.data.prepare import parse_size
from negrec_fast.errors import InputError
from negrec_fast.synthetic import generate_mssd

FILES = ("sessions.arrow", "vocab.arrow", "manifest.json")

# Runs the CLI in a child and prints its exit code and peak resident set (KiB). What pyarrow sets up
# on first use (the IPC writer and reader) is set up first, as `prepare` does only after the
# ingest, when it writes and loads the folder: the baseline then holds it and the ingest's own
# memory comes on top of it, not hidden under it.
CHILD = """
import json, sys
import numpy as np, pyarrow as pa, pyarrow.ipc as ipc
column = pa.Array.from_buffers(pa.int64(), 3, [None, pa.py_buffer(np.arange(3))])
batch = pa.record_batch({"x": column})
sink = pa.BufferOutputStream()
with ipc.new_file(sink, batch.schema) as writer:
    writer.write_batch(batch)
ipc.open_file(sink.getvalue()).read_all()
from negrec_fast.cli import main
rc = main(sys.argv[1:])
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"rc": rc, "peak_kib": peak}))
"""


@pytest.fixture(scope="module")
def mssd_log(tmp_path_factory) -> Path:
    """A generated MSSD log of about 48 MB (24,000 sessions of 10-20 plays, 356k rows)."""
    return generate_mssd(tmp_path_factory.mktemp("streaming") / "log.csv", n_sessions=24_000, n_items=3000, seed=5)


def read(folder: Path) -> dict:
    """The folder's tables, read with pyarrow alone."""
    out = {}
    for name in FILES[:2]:
        with open(folder / name, "rb") as f:
            out[name] = ipc.open_file(f).read_all()
    out["manifest"] = json.loads((folder / "manifest.json").read_text())
    return out


def assert_same_folder(a: Path, b: Path) -> None:
    for name in FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ta, tb = read(a), read(b)
    for name in FILES[:2]:
        assert ta[name].schema == tb[name].schema
        assert ta[name].equals(tb[name]), name
    assert ta["manifest"] == tb["manifest"]
    assert sorted(p.name for p in b.iterdir()) == sorted(FILES), "no spill files left"


def test_parse_size():
    assert parse_size("64M") == parse_size("64MiB") == parse_size("64mb") == 64 << 20
    assert parse_size("1.5G") == 3 << 29
    assert parse_size(" 512k ") == 512 << 10
    assert parse_size("1000") == parse_size(1000) == 1000
    for bad in ("", "M", "12X", "-1M", "0", True, 2.5):
        with pytest.raises(ValueError):
            parse_size(bad)


@pytest.mark.parametrize(
    "options",
    [{}, {"split": "temporal", "max_sessions": 2500, "seed": 3}, {"min_length": 3, "max_length": 8}],
    ids=["defaults", "temporal-sample", "short-windows"],
)
def test_mssd_same_folder_at_a_quarter_of_the_file(mssd_log, tmp_path, options):
    limit = mssd_log.stat().st_size // 4
    a = prepare(mssd_log, tmp_path / "memory", format="mssd", progress=False, **options)
    b = prepare(mssd_log, tmp_path / "streamed", format="mssd", progress=False, memory_limit=limit, **options)
    assert a.manifest["n_sessions"] >= 2500
    assert_same_folder(tmp_path / "memory", tmp_path / "streamed")
    np.testing.assert_array_equal(b.items, a.items)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folders removed"


def test_events_by_user_same_folder(tmp_path):
    """Users interleaved over the file, times out of order, cut at gaps; gzip input."""
    rng = np.random.default_rng(0)
    n = 150_000
    users = rng.integers(0, 2000, n)
    times = 1_600_000_000 + np.sort(rng.integers(0, 60_000, n)) - rng.integers(0, 3, n) * 400
    lines = [f"u{u},i{i},{t},{s}\n" for u, i, t, s in zip(users, rng.zipf(1.5, n) % 5000, times, rng.random(n) < 0.3)]
    log = tmp_path / "events.csv.gz"
    log.write_bytes(gzip.compress(("user_id,item_id,timestamp,skipped\n" + "".join(lines)).encode()))
    options = dict(format="events", skip_column="skipped", min_length=2, progress=False)
    prepare(log, tmp_path / "memory", **options)
    ds = prepare(log, tmp_path / "streamed", memory_limit="1M", **options)
    assert ds.timestamps is not None and ds.n_sessions > 1000
    assert any(key.endswith("#1") for key in ds.session_keys.to_pylist()), "histories cut at gaps"
    assert_same_folder(tmp_path / "memory", tmp_path / "streamed")


def test_parquet_and_yambda_same_folder(tmp_path):
    """Parquet inputs are converted batch by batch, then streamed like any event table."""
    rng = np.random.default_rng(1)
    n = 40_000
    uid = np.sort(rng.integers(0, 300, n)).astype(np.uint32)
    ts = (np.arange(n) * 7 % 100_000).astype(np.uint32)
    order = np.lexsort((ts, uid))
    listens = {
        "uid": uid[order], "timestamp": ts[order], "item_id": rng.integers(0, 900, n).astype(np.uint32),
        "is_organic": rng.integers(0, 2, n).astype(np.uint8),
        "played_ratio_pct": rng.integers(0, 120, n).astype(np.uint16),
        "track_length_seconds": rng.integers(60, 400, n).astype(np.uint32),
    }
    flat = tmp_path / "flat"
    flat.mkdir()
    pq.write_table(pa.table(listens), flat / "listens.parquet", row_group_size=5000)
    events = tmp_path / "events.parquet"
    pq.write_table(pa.table({"user_id": listens["uid"], "item_id": listens["item_id"], "timestamp": listens["timestamp"],
                             "ratio": listens["played_ratio_pct"]}), events, row_group_size=5000)
    for name, source, options in (
        ("yambda", flat, dict(format="yambda", min_length=2)),
        ("events", events, dict(format="events", ratio_column="ratio", threshold=50.0, min_length=2)),
    ):
        prepare(source, tmp_path / f"{name}-memory", progress=False, **options)
        prepare(source, tmp_path / f"{name}-streamed", progress=False, memory_limit="1M", **options)
        assert_same_folder(tmp_path / f"{name}-memory", tmp_path / f"{name}-streamed")


def test_errors_and_bad_rows_as_in_memory(mssd_log, tmp_path):
    lines = mssd_log.read_bytes().split(b"\n")
    fields = lines[40_000].split(b",")
    fields[5] = b"maybe"
    lines[40_000] = b",".join(fields)
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"\n".join(lines))
    messages = []
    for limit in (None, "1M"):
        with pytest.raises(InputError) as err:
            prepare(bad, tmp_path / "out", format="mssd", progress=False, memory_limit=limit)
        messages.append(str(err.value))
    assert messages[0] == messages[1] == f"{bad}:40001:6: expected a boolean (True/False/true/false), found 'maybe'"
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    skip = dict(format="mssd", progress=False, on_bad_rows="skip")
    prepare(bad, tmp_path / "memory", **skip)
    ds = prepare(bad, tmp_path / "streamed", memory_limit="1M", **skip)
    assert ds.manifest["n_bad_rows"] == 1
    assert_same_folder(tmp_path / "memory", tmp_path / "streamed")
    with pytest.raises(ValueError, match="at least 1048576 bytes"):
        prepare(mssd_log, tmp_path / "out", format="mssd", progress=False, memory_limit="512K")


def run_child(*args: str) -> int:
    """Peak resident set (KiB) of `negrec-fast ARGS` run in a child process."""
    result = subprocess.run([sys.executable, "-c", CHILD, *args], check=True, capture_output=True, text=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["rc"] == 0, result.stderr
    return report["peak_kib"]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_peak_memory_stays_under_the_limit(mssd_log, tmp_path):
    # A sixteenth of the log (3 MB). Parsed MSSD rows are about 12 times smaller than their text
    # (13 bytes a row plus the session keys: 6.6 MB here), so at a quarter of the file they would
    # all fit; at a sixteenth they are twice the limit and must be built a partition at a time.
    limit = mssd_log.stat().st_size // 16
    tiny = generate_mssd(tmp_path / "tiny.csv", n_sessions=40, n_items=50, seed=1)

    def peak(log: Path, name: str, *extra: str) -> int:
        return run_child("prepare", "--format", "mssd", str(log), str(tmp_path / name), "--no-progress", *extra)

    streaming = ("--memory-limit", str(limit))
    baseline = peak(tiny, "tiny", *streaming)
    streamed = peak(mssd_log, "streamed", *streaming)
    in_memory = peak(mssd_log, "memory")
    added = {"streamed": (streamed - baseline) * 1024, "in memory": (in_memory - baseline) * 1024}
    print(f"log {mssd_log.stat().st_size} B, limit {limit} B, baseline {baseline} KiB, added {added}")
    assert added["streamed"] <= limit, added
    # Without the limit, the same log takes many times more.
    assert added["in memory"] > 5 * limit, added
    assert_same_folder(tmp_path / "memory", tmp_path / "streamed")
