"""MSSD ingest on the real 201-row sample: labels, sessions, vocabulary, filters, gz/shards."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
import pytest

from negrec_fast.data import prepare

KEEP_ALL = dict(format="mssd", min_length=1, max_length=None, require_skip=False, progress=False)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def sessions_of(rows: list[dict[str, str]], column: str, negate: bool = False) -> list[tuple[str, list[str], list[int]]]:
    out: list[tuple[str, list[str], list[int]]] = []
    for r in rows:
        if not out or out[-1][0] != r["session_id"]:
            out.append((r["session_id"], [], []))
        out[-1][1].append(r["track_id_clean"])
        out[-1][2].append(int((r[column] == "True") != negate))
    return out


def as_lists(ds) -> list[tuple[str, list[str], list[int]]]:
    return [
        (ds.session_keys[s].as_py(), ds.decode(ds.items[ds.offsets[s] : ds.offsets[s + 1]]), ds.skips[ds.offsets[s] : ds.offsets[s + 1]].tolist())
        for s in range(ds.n_sessions)
    ]


def test_keep_everything_matches_the_csv(mssd_sample, tmp_path):
    ds = prepare(mssd_sample, tmp_path / "out", **KEEP_ALL)
    rows = read_rows(mssd_sample)
    m = ds.manifest
    assert (m["n_rows"], m["n_sessions"], m["n_items"], m["vocab_size"], m["n_bad_rows"]) == (201, 11, 175, 177, 0)
    assert int(ds.skips.sum()) == 82
    assert m["skip_rate"] == pytest.approx(82 / 201)
    assert as_lists(ds) == sessions_of(rows, "skip_2")
    # ids from 2 in order of first appearance, with play counts
    first_seen = list(dict.fromkeys(r["track_id_clean"] for r in rows))
    assert ds.decode(np.arange(2, ds.vocab_size)) == first_seen
    assert ds.decode([0, 1]) == ["[PAD]", "[MASK]"]
    counts = {t: sum(r["track_id_clean"] == t for r in rows) for t in first_seen}
    assert ds.item_counts.tolist() == [0, 0] + [counts[t] for t in first_seen]
    assert ds.timestamps is None


@pytest.mark.parametrize(("rule", "expected"), [("skip_1", 69), ("skip_2", 82), ("skip_3", 102), ("not_skipped", 201 - 90)])
def test_skip_rules(mssd_sample, tmp_path, rule, expected):
    ds = prepare(mssd_sample, tmp_path / rule, skip_rule=rule, **KEEP_ALL)
    assert int(ds.skips.sum()) == expected
    column, negate = ("not_skipped", True) if rule == "not_skipped" else (rule, False)
    assert [s[2] for s in as_lists(ds)] == [s[2] for s in sessions_of(read_rows(mssd_sample), column, negate)]


def test_paper_defaults(mssd_sample, tmp_path):
    ds = prepare(mssd_sample, tmp_path / "out", format="mssd", progress=False)
    expected = [s for s in sessions_of(read_rows(mssd_sample), "skip_2") if len(s[1]) >= 6 and any(s[2])]
    assert as_lists(ds) == expected
    assert ds.manifest["rules"]["require_skip"] is True
    assert ds.manifest["rules"]["min_length"] == 6
    kept_tracks = {t for s in expected for t in s[1]}
    assert ds.n_items == len(kept_tracks)


@pytest.mark.parametrize("min_remainder", [2, 3, 6])
def test_windows_and_remainders(mssd_sample, tmp_path, min_remainder):
    ds = prepare(
        mssd_sample, tmp_path / "out", format="mssd", min_length=4, max_length=7, min_remainder=min_remainder,
        require_skip=False, progress=False,
    )
    expected = []
    for sid, tracks, skips in sessions_of(read_rows(mssd_sample), "skip_2"):
        if len(tracks) <= 7:
            if len(tracks) >= 4:
                expected.append((sid, tracks, skips))
            continue
        for w, start in enumerate(range(0, len(tracks), 7)):
            window = tracks[start : start + 7]
            if len(window) == 7 or len(window) >= min_remainder:
                expected.append((f"{sid}:{w}", window, skips[start : start + 7]))
    assert as_lists(ds) == expected
    assert ds.manifest["rules"]["min_remainder"] == min_remainder


def test_paper_window_rule_keeps_a_remainder_of_five(tmp_path):
    """Windows of 20, a remainder of >= 5 kept, while whole sessions still need 6 plays."""
    header = "session_id,session_position,session_length,track_id_clean,skip_1,skip_2,skip_3,not_skipped\n"
    lengths = {"a": 25, "b": 24, "c": 5, "d": 6}
    rows = [f"{sid},{p},{n},t{p % 9},False,{p % 2 == 0},True,False\n" for sid, n in lengths.items() for p in range(1, n + 1)]
    path = tmp_path / "log.csv"
    path.write_text(header + "".join(rows))
    ds = prepare(path, tmp_path / "out", format="mssd", progress=False)
    o = ds.offsets
    keys = [(ds.session_keys[s].as_py(), int(o[s + 1] - o[s])) for s in range(ds.n_sessions)]
    assert keys == [("a:0", 20), ("a:1", 5), ("b:0", 20), ("d", 6)]
    assert (ds.manifest["rules"]["min_length"], ds.manifest["rules"]["min_remainder"]) == (6, 5)
    with pytest.raises(ValueError, match="^min_remainder must be >= 1, got 0$"):
        prepare(path, tmp_path / "bad", format="mssd", min_remainder=0, progress=False)


def test_max_sessions_sample_is_seeded_and_in_order(mssd_sample, tmp_path):
    full = as_lists(prepare(mssd_sample, tmp_path / "full", **KEEP_ALL))
    a = as_lists(prepare(mssd_sample, tmp_path / "a", max_sessions=4, seed=7, **KEEP_ALL))
    b = as_lists(prepare(mssd_sample, tmp_path / "b", max_sessions=4, seed=7, **KEEP_ALL))
    c = as_lists(prepare(mssd_sample, tmp_path / "c", max_sessions=4, seed=8, **KEEP_ALL))
    assert a == b and len(a) == 4 and a != c
    positions = [full.index(s) for s in a]
    assert positions == sorted(positions)


def test_gzip_and_shards_equal_plain(mssd_sample, tmp_path):
    text = mssd_sample.read_bytes()
    gz = tmp_path / "log.csv.gz"
    gz.write_bytes(gzip.compress(text))
    lines = text.decode().splitlines(keepends=True)
    shards = tmp_path / "shards"
    shards.mkdir()
    # a session split across shards stays one session (consecutive rows)
    (shards / "part-000.csv").write_text("".join(lines[:31]))
    (shards / "part-001.csv").write_text(lines[0] + "".join(lines[31:]))
    (shards / "_SUCCESS").write_text("")
    base = prepare(mssd_sample, tmp_path / "plain", **KEEP_ALL)
    for source in (gz, shards):
        other = prepare(source, tmp_path / source.name.replace(".", "_") / "out", **KEEP_ALL)
        assert as_lists(other) == as_lists(base)
        assert other.manifest["source"]["bytes"] == (gz.stat().st_size if source == gz else len(text) + len(lines[0]))


def test_leave_last_out_split(mssd_sample, tmp_path):
    ds = prepare(mssd_sample, tmp_path / "out", **KEEP_ALL)
    for s in range(ds.n_sessions):
        skips = ds.skips[ds.offsets[s] : ds.offsets[s + 1]]
        kept = [i for i in range(1, len(skips)) if skips[i] == 0]
        t = kept[-1] if kept else -1
        v = kept[-2] if len(kept) > 1 else -1
        assert (ds.test_target[s], ds.valid_target[s]) == (t, v)
        assert ds.train_end[s] == (v if v >= 0 else t if t >= 0 else len(skips))


def test_temporal_split_without_times_uses_file_order(mssd_sample, tmp_path):
    ds = prepare(mssd_sample, tmp_path / "out", split="temporal", valid_fraction=0.2, test_fraction=0.2, **KEEP_ALL)
    n = ds.n_sessions  # 11 -> 2 valid, 2 test
    assert (ds.test_target[-2:] >= 0).all() and (ds.test_target[:-2] == -1).all()
    assert (ds.valid_target[-4:-2] >= 0).all() and (ds.valid_target[: n - 4] == -1).all()
    assert (ds.train_end[n - 4 :] == 0).all()
    assert (ds.train_end[: n - 4] == np.diff(ds.offsets)[: n - 4]).all()
    assert ds.manifest["split"] == {"name": "temporal", "n_valid": 2, "n_test": 2, "valid_fraction": 0.2, "test_fraction": 0.2}
