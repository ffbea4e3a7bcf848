"""Generic event tables and RecBole .inter files: column mapping and negative signals."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from negrec_fast.cli import main
from negrec_fast.data import load_dataset, prepare
from negrec_fast.errors import InputError

KEEP_ALL = dict(min_length=1, max_length=None, progress=False)


def as_lists(ds):
    o = ds.offsets
    return [(ds.session_keys[s].as_py(), ds.decode(ds.items[o[s] : o[s + 1]]), ds.skips[o[s] : o[s + 1]].tolist()) for s in range(ds.n_sessions)]


PLAYS = "sid,pos,video,watch,length,ratio,liked,stars\ns1,2,v2,3,10,0.3,false,2\ns1,1,v1,9,10,0.9,true,5\ns2,1,v1,1,10,0.1,0,4.5\n"


@pytest.mark.parametrize(
    ("signal", "skips"),
    [
        (dict(ratio_column="ratio", threshold=0.5), [0, 1, 1]),
        (dict(play_time_column="watch", duration_column="length", threshold=0.5), [0, 1, 1]),
        (dict(skip_column="liked"), [1, 0, 0]),
        (dict(rating_column="stars", threshold=3), [0, 1, 0]),
        ({}, [0, 0, 0]),
    ],
)
def test_event_signals_and_positions(tmp_path, signal, skips):
    path = tmp_path / "plays.csv"
    path.write_text(PLAYS)
    ds = prepare(path, tmp_path / "out", format="events", session="sid", item="video", position="pos", **signal, **KEEP_ALL)
    assert [(k, items) for k, items, _ in as_lists(ds)] == [("s1", ["v1", "v2"]), ("s2", ["v1"])]
    assert ds.skips.tolist() == skips
    assert ds.timestamps is None
    assert ds.manifest["rules"]["columns"]["item"] == "video"


def test_users_with_timestamps_are_cut_at_gaps_and_interleaving_is_grouped(tmp_path):
    path = tmp_path / "log.tsv"
    path.write_text("user_id\titem_id\tts\n" + "".join(f"u{i % 2}\ti{i}\t{1000 * i}\n" for i in range(6)) + "u0\tlate\t99999\n")
    ds = prepare(path, tmp_path / "out", format="events", timestamp="ts", session_gap=2000, **KEEP_ALL)
    assert [(k, items) for k, items, _ in as_lists(ds)] == [
        ("u0#0", ["i0", "i2", "i4"]),
        ("u0#1", ["late"]),
        ("u1#0", ["i1", "i3", "i5"]),
    ]
    assert ds.timestamps.tolist() == [0, 2000, 4000, 99999, 1000, 3000, 5000]


def test_millisecond_timestamps_and_quoted_fields(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text('session_id,item_id,timestamp\n"a,1","x ""y""",5000\n"a,1",z,1000\n')
    ds = prepare(path, tmp_path / "out", format="events", timestamp_unit="ms", **KEEP_ALL)
    assert as_lists(ds) == [("a,1", ["z", 'x "y"'], [0, 0])]
    assert ds.timestamps.tolist() == [1, 5]


def test_recbole_inter(tmp_path):
    path = tmp_path / "ml.inter"
    path.write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "1\t10\t4.0\t881250949\n1\t20\t1.0\t881250950\n2\t10\t2.0\t891717742\n1\t30\t5.0\t881250960\n"
    )
    ds = prepare(path, tmp_path / "out", format="recbole", rating_column="rating", threshold=3.0, **KEEP_ALL)
    assert as_lists(ds) == [("1", ["10", "20", "30"], [0, 1, 0]), ("2", ["10"], [1])]
    assert ds.timestamps.tolist() == [881250949, 881250950, 881250960, 891717742]


def recbole_rows() -> list[tuple[str, str, int]]:
    """(user, item, time) rows in file order: user a has 30 plays hours apart with shuffled
    times and ties, user b 7 plays, user c 3; the users are interleaved."""
    times = [7200 * ((i * 7) % 13) for i in range(30)]  # 13 distinct times, each used 2-3 times
    rows = [("a", f"i{i}", t) for i, t in enumerate(times)]
    rows += [("b", f"j{i}", 100 * (7 - i)) for i in range(7)] + [("c", f"k{i}", i) for i in range(3)]
    return [rows[i] for i in sorted(range(len(rows)), key=lambda i: (i * 11) % len(rows))]


def test_recbole_default_is_one_time_ordered_sequence_per_user(tmp_path):
    rows = recbole_rows()
    path = tmp_path / "hand.inter"
    path.write_text("user_id:token\titem_id:token\ttimestamp:float\n" + "".join(f"{u}\t{i}\t{t}\n" for u, i, t in rows))
    # RecBole: a user's rows sorted by time, ties kept in file order (a stable sort).
    expected = {u: [i for _, i, _ in sorted((r for r in rows if r[0] == u), key=lambda r: r[2])] for u in "abc"}
    ds = prepare(path, tmp_path / "out", format="recbole", progress=False)  # default filters
    assert [(k, items) for k, items, _ in as_lists(ds)] == [("a", expected["a"]), ("b", expected["b"])]
    assert ds.manifest["rules"]["max_length"] is None and ds.manifest["rules"]["session_gap"] is None
    assert main(["prepare", "--format", "recbole", "--no-progress", str(path), str(tmp_path / "cli")]) == 0
    assert [items for _, items, _ in as_lists(load_dataset(tmp_path / "cli"))] == [expected["a"], expected["b"]]

    # With a session gap, histories are cut where consecutive plays are more than it apart.
    cut = prepare(path, tmp_path / "gap", format="recbole", session_gap=7200, min_length=1, progress=False)
    assert [k for k, _, _ in as_lists(cut)] == ["a#0", "b#0", "c#0"]
    cut = prepare(path, tmp_path / "gap2", format="recbole", session_gap=7199, min_length=1, progress=False)
    assert [k for k, _, _ in as_lists(cut)][:13] == [f"a#{n}" for n in range(13)]


def test_parquet_events(tmp_path):
    table = pa.table({"session": ["s1", "s1", "s2"], "item": ["a", "b", "a"], "skipped": [True, False, True], "pos": [1, 2, 1]})
    pq.write_table(table, tmp_path / "log.parquet")
    ds = prepare(tmp_path / "log.parquet", tmp_path / "out", format="events", session="session", item="item", position="pos", skip_column="skipped", **KEEP_ALL)
    assert as_lists(ds) == [("s1", ["a", "b"], [1, 0]), ("s2", ["a"], [1])]


def test_parquet_errors_name_the_parquet_row_and_column(tmp_path):
    table = pa.table(
        {
            "user_id": ["u", "u", "u"],
            "notes": ["a\nb", "", ""],  # not read: not a mapped column
            "item_id": ["a", "b", "c"],
            "rating": ["4", "5", "abc"],
            "timestamp": [1, 2, 3],
        }
    )
    path = tmp_path / "events.parquet"
    pq.write_table(table, path, row_group_size=2)
    with pytest.raises(InputError) as err:
        prepare(path, tmp_path / "out", format="events", rating_column="rating", threshold=3, **KEEP_ALL)
    assert str(err.value) == f"{path}: row 3, column 'rating' (4): expected a number (a ratio or rating), found 'abc'"
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError) as err:
        prepare(path, tmp_path / "out", format="events", skip_column="liked", **KEEP_ALL)
    assert str(err.value) == f"{path}: missing column 'liked' (columns: user_id, notes, item_id, rating, timestamp)"
    with pytest.raises(InputError) as err:
        prepare(path, tmp_path / "out", format="events", item="notes", **KEEP_ALL)
    assert str(err.value) == f"{path}: row 1, column 'notes' (2): expected a value without line breaks"
    with pytest.raises(InputError) as err:
        prepare(path, tmp_path / "out", format="events", rating_column="rating", threshold=3, on_bad_rows="skip", min_length=5, progress=False)
    assert str(err.value).startswith(f"{path}: no session passes the filters (min_length=5")


def test_parquet_manifest_names_the_parquet_file(tmp_path):
    table = pa.table({"user_id": ["u1", "u1", "u2"], "item_id": ["a", "b", "a"], "timestamp": [10, 20, 5], "extra": [1.0, 2.0, 3.0]})
    path = tmp_path / "events.parquet"
    pq.write_table(table, path)
    csv = tmp_path / "more.csv"
    csv.write_text("user_id,item_id,timestamp,extra\nu3,c,7,0\n")
    ds = prepare([path, csv], tmp_path / "out", format="events", **KEEP_ALL)
    assert as_lists(ds) == [("u1#0", ["a", "b"], [0, 0]), ("u2#0", ["a"], [0]), ("u3#0", ["c"], [0])]
    source = ds.manifest["source"]
    assert source["paths"] == [str(path), str(csv)]
    assert source["bytes"] == path.stat().st_size + csv.stat().st_size
    assert source["rows_read"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.parquet", "more.csv", "out"]


def test_mapping_mistakes_are_reported(tmp_path):
    path = tmp_path / "plays.csv"
    path.write_text(PLAYS)
    with pytest.raises(ValueError, match="needs a threshold"):
        prepare(path, tmp_path / "a", format="events", session="sid", item="video", ratio_column="ratio", **KEEP_ALL)
    with pytest.raises(ValueError, match="one negative signal"):
        prepare(path, tmp_path / "b", format="events", session="sid", item="video", skip_column="liked", rating_column="stars", threshold=1, **KEEP_ALL)
    with pytest.raises(ValueError, match="apply to the events and recbole formats"):
        prepare(path, tmp_path / "c", format="mssd", item="video", **KEEP_ALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plays.csv"]
