"""Synthetic MSSD generator: format, determinism, and the planted skip structure."""

from __future__ import annotations

import csv
import gzip
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from negrec_fast.synthetic import generate_mssd, planted_tastes

HEADER = (
    "session_id,session_position,session_length,track_id_clean,skip_1,skip_2,skip_3,not_skipped,"
    "context_switch,no_pause_before_play,short_pause_before_play,long_pause_before_play,"
    "hist_user_behavior_n_seekfwd,hist_user_behavior_n_seekback,hist_user_behavior_is_shuffle,"
    "hour_of_day,date,premium,context_type,hist_user_behavior_reason_start,"
    "hist_user_behavior_reason_end"
).split(",")

PARAMS = dict(n_sessions=1200, n_items=400, n_tastes=8, on_taste_prob=0.7, skip_prob_on=0.1,
              skip_prob_off=0.9, min_length=5, max_length=9)


def read(path: Path) -> list[dict[str, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == HEADER
        return list(reader)


def test_format_and_planted_structure(tmp_path):
    path = generate_mssd(tmp_path / "log.csv.gz", seed=3, **PARAMS)
    assert path == tmp_path / "log.csv.gz"
    rows = read(path)
    sessions: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        assert None not in row and len(row) == 21
        sessions[row["session_id"]].append(row)
    assert len(sessions) == 1200
    assert all(s.startswith("0_") for s in sessions)
    tastes = planted_tastes(400, 8)
    skipped = {"on": [], "off": []}
    for plays in sessions.values():
        n = len(plays)
        assert 5 <= n <= 9
        assert [int(p["session_position"]) for p in plays] == list(range(1, n + 1))
        assert {int(p["session_length"]) for p in plays} == {n}
        taste = Counter(tastes[p["track_id_clean"]] for p in plays).most_common(1)[0][0]
        for p in plays:
            s1, s2, s3, kept = (p[c] == "True" for c in ("skip_1", "skip_2", "skip_3", "not_skipped"))
            assert {p[c] for c in ("skip_1", "skip_2", "skip_3", "not_skipped")} <= {"True", "False"}
            assert (not s1 or s2) and (not s2 or s3) and kept == (not s3)
            assert 0 <= int(p["hour_of_day"]) <= 23
            assert len(p["date"]) == 10 and p["date"][4] == p["date"][7] == "-"
            assert p["context_type"] in {"editorial_playlist", "user_collection", "catalog", "radio",
                                         "charts", "personalized_playlist"}
            assert p["hist_user_behavior_reason_end"] in {"trackdone", "fwdbtn", "backbtn", "endplay"}
            skipped["on" if tastes[p["track_id_clean"]] == taste else "off"].append(s2)
    rate = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert rate(skipped["on"]) == pytest.approx(0.1, abs=0.02)
    assert rate(skipped["off"]) == pytest.approx(0.9, abs=0.02)
    assert rate(skipped["on"] + skipped["off"]) == pytest.approx(0.7 * 0.1 + 0.3 * 0.9, abs=0.02)
    on_share = len(skipped["on"]) / len(rows)
    assert on_share == pytest.approx(0.7, abs=0.03)


def test_deterministic_whatever_the_threads(tmp_path, monkeypatch):
    a = generate_mssd(tmp_path / "a.csv", seed=5, n_threads=1, **PARAMS).read_bytes()
    monkeypatch.setenv("NEGREC_NUM_THREADS", "3")
    b = generate_mssd(tmp_path / "b.csv", seed=5, **PARAMS).read_bytes()
    c = generate_mssd(tmp_path / "c.csv", seed=6, **PARAMS).read_bytes()
    assert a == b
    assert a != c
    # Plain and gzip outputs carry the same text.
    gz = generate_mssd(tmp_path / "a.csv.gz", seed=5, **PARAMS)
    assert gzip.decompress(gz.read_bytes()) == a


def test_track_ids_are_stable_and_zipf_popular(tmp_path):
    rows = read(generate_mssd(tmp_path / "z.csv", seed=0, n_sessions=600, n_items=300, n_tastes=3))
    tastes = planted_tastes(300, 3)
    assert len(tastes) == 300
    plays = Counter(r["track_id_clean"] for r in rows)
    assert set(plays) <= set(tastes)
    ids = list(tastes)
    # Rank 0 of each taste (items 0, 1, 2) outplays rank 50 (items 150, 151, 152).
    assert all(plays[ids[t]] > 5 * plays[ids[150 + t]] for t in range(3))


def test_dislike_mode_skips_a_sessions_disliked_items_again(tmp_path):
    """Within a session, an on-taste track skipped once is skipped again far more often than one
    kept once (share 0.4: P(disliked | skipped) = 0.36 / 0.42, later skip rate 0.79 against 0.16)."""
    taste = planted_tastes(120, 4)
    # long, mostly on-taste sessions: the majority vote finds each session's taste
    params = {**PARAMS, "n_sessions": 3000, "n_items": 120, "n_tastes": 4, "on_taste_prob": 0.9,
              "min_length": 15, "max_length": 20}
    rates = {}
    for share in (0.0, 0.4):
        rows = read(generate_mssd(tmp_path / f"d{share}.csv", **params, dislike_share=share, seed=4))
        sessions = defaultdict(list)
        for r in rows:
            sessions[r["session_id"]].append((r["track_id_clean"], r["skip_2"] == "True"))
        later = {True: [], False: []}
        for plays in sessions.values():
            main_taste = Counter(taste[t] for t, _ in plays).most_common(1)[0][0]
            first = {}
            for track, skipped in plays:
                if taste[track] != main_taste:
                    continue
                if track in first:
                    later[first[track]].append(skipped)
                else:
                    first[track] = skipped
        rates[share] = {k: sum(v) / len(v) for k, v in later.items()}
    assert abs(rates[0.4][True] - 0.79) < 0.06 and abs(rates[0.4][False] - 0.16) < 0.04, rates
    assert abs(rates[0.0][True] - 0.1) < 0.05 and abs(rates[0.0][False] - 0.1) < 0.03, rates


def test_bad_arguments(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"skip_prob_off must be a probability in \[0, 1\], got -0.1"):
        generate_mssd(tmp_path / "x.csv", skip_prob_off=-0.1)
    with pytest.raises(ValueError, match=r"dislike_share must be a probability in \[0, 1\], got 1.5"):
        generate_mssd(tmp_path / "x.csv", dislike_share=1.5)
    with pytest.raises(ValueError, match="need 2 <= n_tastes <= n_items"):
        generate_mssd(tmp_path / "x.csv", n_items=5, n_tastes=6)
    monkeypatch.setenv("NEGREC_NUM_THREADS", "lots")
    with pytest.raises(ValueError, match="NEGREC_NUM_THREADS must be a positive integer, got \"lots\""):
        generate_mssd(tmp_path / "x.csv", n_sessions=10)
    from negrec_fast import InputError

    with pytest.raises(InputError, match="no_such_dir"):
        generate_mssd(tmp_path / "no_such_dir" / "x.csv", n_sessions=10, n_threads=1)
