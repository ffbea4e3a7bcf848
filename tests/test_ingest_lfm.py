"""LFM-1K (real 5000-row sample) and LFM-2B-style ingest: sessionisation, keys, duration skips."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from negrec_fast.data import prepare
from negrec_fast.errors import InputError

KEEP_ALL = dict(min_length=1, max_length=None, progress=False)


def lfm_sessions(path: Path, gap: int = 1800) -> list[tuple[str, list[str], list[int]]]:
    """Independent reference: per user, plays by time, cut where the gap exceeds `gap` seconds."""
    by_user: dict[str, list[tuple[int, int, str]]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        user, ts, _aid, artist, tid, track = line.split("\t")
        t = int(datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=None).timestamp() - datetime(1970, 1, 1).timestamp())
        by_user.setdefault(user, []).append((t, n, tid or f"{artist}\x1f{track}"))
    out = []
    for user, plays in by_user.items():
        plays.sort(key=lambda p: p[0])  # stable: equal times keep file order
        part = -1
        for i, (t, _, key) in enumerate(plays):
            if i == 0 or t - plays[i - 1][0] > gap:
                part += 1
                out.append((f"{user}#{part}", [], []))
            out[-1][1].append(key)
            out[-1][2].append(t)
    return out


def as_lists(ds):
    o = ds.offsets
    return [
        (ds.session_keys[s].as_py(), ds.decode(ds.items[o[s] : o[s + 1]]), ds.timestamps[o[s] : o[s + 1]].tolist())
        for s in range(ds.n_sessions)
    ]


def test_lfm1k_sessions_at_30_minute_gaps(lfm1k_sample, tmp_path):
    ds = prepare(lfm1k_sample, tmp_path / "out", format="lfm1k", **KEEP_ALL)
    expected = lfm_sessions(lfm1k_sample)
    assert ds.manifest["n_rows"] == 5000
    assert ds.n_sessions == len(expected)
    assert as_lists(ds) == expected
    assert {k.split("#")[0] for k, _, _ in expected} == {"user_000001", "user_000002"}
    assert int(ds.skips.sum()) == 0  # without a track-length table nothing is a skip
    assert all((np.diff(ds.timestamps[ds.offsets[s] : ds.offsets[s + 1]]) >= 0).all() for s in range(ds.n_sessions))


def test_lfm1k_gap_option_and_fallback_keys(lfm1k_sample, tmp_path):
    ds = prepare(lfm1k_sample, tmp_path / "out", format="lfm1k", session_gap=600, **KEEP_ALL)
    expected = lfm_sessions(lfm1k_sample, gap=600)
    assert as_lists(ds) == expected
    keys = ds.decode(np.arange(2, ds.vocab_size))
    assert len(keys) == len({k for _, items, _ in expected for k in items})
    assert "坂本龍一\x1fComposition 0919 (Live_2009_4_15)" in keys  # row without a track MBID
    ids, unknown = ds.encode(["坂本龍一\x1fMc2 (Live_2009_4_15)", "nope"])
    assert ds.decode(ids) == ["坂本龍一\x1fMc2 (Live_2009_4_15)"] and unknown == ["nope"]


def test_lfm1k_duration_skips(lfm1k_sample, tmp_path):
    ref = lfm_sessions(lfm1k_sample)
    tracks = sorted({k for _, items, _ in ref for k in items})
    durations = {t: 120 + 37 * i % 300 for i, t in enumerate(tracks)}
    table = tmp_path / "durations.tsv"
    table.write_text("track_id\tduration_seconds\n" + "".join(f"{t}\t{d}\n" for t, d in durations.items()))
    ds = prepare(lfm1k_sample, tmp_path / "out", format="lfm1k", durations=table, **KEEP_ALL)
    expected = []
    for _, items, times in ref:
        expected += [int(times[i + 1] - times[i] < durations[items[i]]) for i in range(len(items) - 1)] + [0]
    assert ds.skips.tolist() == expected
    assert 0 < sum(expected) < len(expected)


@pytest.mark.parametrize(
    ("text", "at", "found"),
    [
        ("track_id\tduration_seconds\nt1\t200\nt2\t-30\n", 3, "'-30'"),
        ("t1\t200\nt2\tnan\n", 2, "'nan'"),
        ("t1\tinf\n", 1, "'inf'"),
        ("track_id,duration_seconds\nt1,-0.5\n", 2, "'-0.5'"),
    ],
)
def test_bad_durations_are_reported(tmp_path, text, at, found):
    log = tmp_path / "events.tsv"
    log.write_text("u1\tt1\t1000\nu1\tt2\t1100\n")
    table = tmp_path / "durations.tsv"
    table.write_text(text)
    with pytest.raises(InputError) as err:
        prepare(log, tmp_path / "out", format="lfm2b", durations=table, **KEEP_ALL)
    message = f"{table}:{at}:2: expected a duration in seconds (a finite number >= 0), found {found}"
    assert str(err.value) == message
    assert not (tmp_path / "out").exists()


def test_lfm2b_events_with_header_and_mixed_times(tmp_path):
    log = tmp_path / "events.tsv"
    log.write_text(
        "user_id\ttrack_id\ttimestamp\n"
        "u1\tt1\t1000\n"
        "u2\tt2\t1970-01-01T00:16:40Z\n"
        "u1\tt2\t500\n"
        "u1\tt3\t9000\n"
    )
    ds = prepare(log, tmp_path / "out", format="lfm2b", **KEEP_ALL)
    assert as_lists(ds) == [("u1#0", ["t2", "t1"], [500, 1000]), ("u1#1", ["t3"], [9000]), ("u2#0", ["t2"], [1000])]
    assert ds.manifest["source"]["rows_read"] == 4
