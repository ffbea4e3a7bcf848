"""Yambda flat-layout Parquet files: sequences per user, skips from played_ratio_pct, dislikes as
negatives, organic filter and schema errors. Files are written with Yambda's own column order and
Arrow types (dataset card of yandex/yambda, "Data Format")."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from negrec_fast.cli import main
from negrec_fast.data import load_dataset, prepare
from negrec_fast.data.yambda import to_csv
from negrec_fast.errors import InputError

EVENT_FIELDS = [("uid", pa.uint32()), ("timestamp", pa.uint32()), ("item_id", pa.uint32()), ("is_organic", pa.uint8())]
LISTEN_FIELDS = EVENT_FIELDS + [("played_ratio_pct", pa.uint16()), ("track_length_seconds", pa.uint32())]
ALL = {"min_length": 1, "progress": False}

# (uid, timestamp, item_id, is_organic, played_ratio_pct, track_length_seconds), sorted by (uid, timestamp)
LISTENS = [
    (10, 100, 1, 1, 100, 200),  # kept
    (10, 300, 2, 1, 20, 180),  # skipped: 20 < 50
    (10, 480, 3, 0, 50, 240),  # kept by its ratio (50 is not < 50), but disliked at 500 while playing
    (10, 800, 4, 1, 130, 200),  # kept (> 100: rewound)
    (10, 800, 5, 1, 0, 150),  # skipped; same timestamp as item 4, after it in the file
    (10, 2000, 6, 1, 75, 100),  # kept by its ratio, disliked at 2105 = 2000 + 100 + 5
    (20, 50, 1, 0, 60, 100),  # kept
    (20, 60, 7, 1, 10, 100),  # skipped
]
# (uid, timestamp, item_id, is_organic)
DISLIKES = [
    (10, 500, 3, 0),  # latest listen of user 10 at <= 500 is item 3 at 480, 20 s <= 245: merged
    (10, 1500, 1, 1),  # latest listen is item 5: a new skipped play of item 1 at 1500
    (10, 2105, 6, 1),  # item 6 started 105 s earlier, 105 <= 100 + 5: merged
    (10, 2110, 6, 0),  # 110 s > 105: a new skipped play at 2110
    (15, 900, 9, 1),  # a user without listens
    (20, 60, 1, 1),  # latest listen at <= 60 is item 7 (same timestamp, last in file order): new play after it
    (30, 70, 8, 1),
]
# Worked out by hand from the comments above: (key, items, timestamps, skips) per user.
EXPECTED = [
    ("10", [1, 2, 3, 4, 5, 1, 6, 6], [100, 300, 480, 800, 800, 1500, 2000, 2110], [0, 1, 1, 0, 1, 1, 1, 1]),
    ("15", [9], [900], [1]),
    ("20", [1, 7, 1], [50, 60, 60], [0, 1, 1]),
    ("30", [8], [70], [1]),
]


def write(path, rows, fields, **kwargs):
    columns = list(zip(*rows)) if rows else [[] for _ in fields]
    pq.write_table(pa.table({n: pa.array(c, type=t) for (n, t), c in zip(fields, columns)}), path, **kwargs)
    return path


def flat_folder(tmp_path, listens=LISTENS, dislikes=DISLIKES):
    """A flat/50m-like folder: listens, dislikes and a likes file that must not be read."""
    folder = tmp_path / "flat" / "50m"
    folder.mkdir(parents=True)
    write(folder / "listens.parquet", listens, LISTEN_FIELDS)
    write(folder / "dislikes.parquet", dislikes, EVENT_FIELDS)
    write(folder / "likes.parquet", [(10, 100, 99, 1)], EVENT_FIELDS)
    return folder


def as_lists(ds):
    o = ds.offsets
    return [
        (
            ds.session_keys[s].as_py(),
            [int(i) for i in ds.decode(ds.items[o[s] : o[s + 1]])],
            ds.timestamps[o[s] : o[s + 1]].tolist(),
            ds.skips[o[s] : o[s + 1]].tolist(),
        )
        for s in range(ds.n_sessions)
    ]


def test_sequences_skips_and_dislikes(tmp_path):
    folder = flat_folder(tmp_path)
    ds = prepare(folder, tmp_path / "out", format="yambda", **ALL)
    assert as_lists(ds) == EXPECTED
    m = ds.manifest
    assert m["rules"]["skip_below"] == 50 and m["rules"]["organic_only"] is False
    assert m["rules"]["session_gap"] is None and m["rules"]["max_length"] is None
    source = m["source"]
    assert source["format"] == "yambda"
    assert source["paths"] == [str(folder / "listens.parquet"), str(folder / "dislikes.parquet")]
    assert source["bytes"] == (folder / "listens.parquet").stat().st_size + (folder / "dislikes.parquet").stat().st_size
    assert source["rows_read"] == 8 + 7
    assert source["yambda"] == {"listens": 8, "dislikes": 7, "dislikes_merged": 2, "dislikes_added": 5, "non_organic_dropped": 0}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["manifest.json", "sessions.arrow", "vocab.arrow"]

    # The same files named one by one, dislikes first: read alike.
    files = [folder / "dislikes.parquet", folder / "listens.parquet"]
    assert as_lists(prepare(files, tmp_path / "files", format="yambda", **ALL)) == EXPECTED
    # Listens alone: no dislike plays, no flags from dislikes.
    alone = prepare(folder / "listens.parquet", tmp_path / "alone", format="yambda", **ALL)
    assert as_lists(alone) == [
        ("10", [1, 2, 3, 4, 5, 6], [100, 300, 480, 800, 800, 2000], [0, 1, 0, 0, 1, 0]),
        ("20", [1, 7], [50, 60], [0, 1]),
    ]


@pytest.mark.parametrize(
    ("skip_below", "user10", "user20"),
    [
        (20, [0, 0, 1, 0, 1, 1, 1, 1], [0, 1, 1]),  # ratio 20 is no longer below the threshold
        (0, [0, 0, 1, 0, 0, 1, 1, 1], [0, 0, 1]),  # only dislikes are negatives
        (100.5, [1, 1, 1, 0, 1, 1, 1, 1], [1, 1, 1]),  # only the rewound play (130) is kept
    ],
)
def test_skip_threshold(tmp_path, skip_below, user10, user20):
    ds = prepare(flat_folder(tmp_path), tmp_path / "out", format="yambda", skip_below=skip_below, **ALL)
    assert [skips for key, _, _, skips in as_lists(ds) if key in ("10", "20")] == [user10, user20]
    assert ds.manifest["rules"]["skip_below"] == skip_below


def test_organic_only(tmp_path):
    ds = prepare(flat_folder(tmp_path), tmp_path / "out", format="yambda", organic_only=True, **ALL)
    # Dropped: listens of item 3 (user 10, merged with its dislike) and item 1 (user 20), the dislike at 2110.
    assert as_lists(ds) == [
        ("10", [1, 2, 4, 5, 1, 6], [100, 300, 800, 800, 1500, 2000], [0, 1, 0, 1, 1, 1]),
        ("15", [9], [900], [1]),
        ("20", [7, 1], [60, 60], [1, 1]),
        ("30", [8], [70], [1]),
    ]
    assert ds.manifest["source"]["yambda"]["non_organic_dropped"] == 3


def test_session_gap_cuts_user_histories(tmp_path):
    ds = prepare(flat_folder(tmp_path), tmp_path / "out", format="yambda", session_gap=300, **ALL)
    # User 10's gaps: 200, 180, 320 (cut), 0, 700 (cut), 500 (cut), 110.
    assert [(key, items) for key, items, _, _ in as_lists(ds)][:4] == [
        ("10#0", [1, 2, 3]),
        ("10#1", [4, 5]),
        ("10#2", [1]),
        ("10#3", [6, 6]),
    ]


@pytest.mark.parametrize("batch_size", [1, 2, 3, 1 << 20])
def test_batches_split_users_anywhere(tmp_path, batch_size):
    folder = flat_folder(tmp_path)
    csv = tmp_path / "events.csv"
    converted = to_csv([folder], csv, batch_size=batch_size)
    rows = pacsv.read_csv(csv).to_pylist()
    expected = [(str(k), i, t, s) for k, items, times, skips in EXPECTED for i, t, s in zip(items, times, skips)]
    assert [(str(r["user_id"]), r["item_id"], r["timestamp"], r["skipped"]) for r in rows] == expected
    assert converted.counts["dislikes_merged"] == 2


def test_cli(tmp_path, capsys):
    folder = flat_folder(tmp_path)
    out = tmp_path / "cli"
    args = ["prepare", "--format", "yambda", "--no-progress", "--min-length", "1", "--skip-below", "20", str(folder), str(out)]
    assert main(args) == 0
    assert [skips for _, _, _, skips in as_lists(load_dataset(out))] == [[0, 0, 1, 0, 1, 1, 1, 1], [1], [0, 1, 1], [1]]
    assert "13 rows, 4 sessions" in capsys.readouterr().out  # 8 listens + 5 added dislikes
    bad = write(tmp_path / "listens.parquet", [(1, 2, 3, 7, 50, 100)], LISTEN_FIELDS)
    assert main(["prepare", "--format", "yambda", "--no-progress", str(bad), str(tmp_path / "bad")]) == 1
    assert "row 1, column 'is_organic' (4): expected 0 or 1, found 7" in capsys.readouterr().err


def test_schema_errors(tmp_path):
    def error(rows, fields, name="listens.parquet", **kwargs):
        path = write(tmp_path / name, rows, fields, **kwargs)
        with pytest.raises(InputError) as err:
            prepare(path, tmp_path / "out", format="yambda", **ALL)
        assert not (tmp_path / "out").exists()
        return str(err.value).removeprefix(f"{path}: ")

    listen = (10, 100, 1, 1, 100, 200)
    assert error([listen[:5]], LISTEN_FIELDS[:5]) == (
        "missing column 'track_length_seconds' of type uint32 (columns: uid, timestamp, item_id, is_organic, played_ratio_pct)"
    )
    as_float = LISTEN_FIELDS[:4] + [("played_ratio_pct", pa.float64()), LISTEN_FIELDS[5]]
    assert error([listen], as_float) == "column 'played_ratio_pct' (5): expected uint16, found double"
    rows = [listen, (10, 200, 2, 1, None, 200)]
    assert error(rows, LISTEN_FIELDS) == "row 2, column 'played_ratio_pct' (5): expected a value, found null"
    rows = [listen, (10, 200, 2, 0, 50, 200), (10, 300, 2, 2, 50, 200)]
    assert error(rows, LISTEN_FIELDS) == "row 3, column 'is_organic' (4): expected 0 or 1, found 2"
    rows = [listen, (10, 300, 2, 1, 50, 200), (10, 250, 3, 1, 50, 200), (9, 400, 3, 1, 50, 200)]
    assert error(rows, LISTEN_FIELDS, row_group_size=2) == (
        "row 3, column 'timestamp' (2): rows must be sorted by (uid, timestamp) as Yambda's files are; "
        "found uid 10, timestamp 250 after uid 10, timestamp 300"
    )
    sequential = [("uid", pa.uint32()), ("item_ids", pa.list_(pa.uint32())), ("timestamps", pa.list_(pa.uint32()))]
    assert error([(10, [1, 2], [5, 10])], sequential) == (
        "Yambda's sequential layout (one row per user, list columns) is not supported; use the flat layout (flat/<size>/)"
    )
    # A dislikes file with the wrong id type, next to good listens.
    good = tmp_path / "good"
    good.mkdir()
    write(good / "listens.parquet", [listen], LISTEN_FIELDS)
    dislikes = write(good / "dislikes.parquet", [(10, 150, 1, 1)], [("uid", pa.int64())] + EVENT_FIELDS[1:])
    with pytest.raises(InputError) as err:
        prepare(good, tmp_path / "out", format="yambda", **ALL)
    assert str(err.value) == f"{dislikes}: column 'uid' (1): expected uint32, found int64"


def test_unsorted_rows_across_batches(tmp_path):
    path = write(tmp_path / "listens.parquet", [(20, 5, 1, 1, 50, 100), (10, 9, 2, 1, 50, 100)], LISTEN_FIELDS)
    with pytest.raises(InputError, match=r"row 2, column 'uid' \(1\): .* found uid 10, timestamp 9 after uid 20, timestamp 5$"):
        to_csv([path], tmp_path / "events.csv", batch_size=1)


def test_inputs_and_options_are_checked(tmp_path):
    folder = flat_folder(tmp_path)
    with pytest.raises(InputError, match="likes events are not read"):
        prepare([folder / "listens.parquet", folder / "likes.parquet"], tmp_path / "out", format="yambda", **ALL)
    with pytest.raises(InputError, match="no listens.parquet among the inputs"):
        prepare(folder / "dislikes.parquet", tmp_path / "out", format="yambda", **ALL)
    with pytest.raises(InputError, match="no listens.parquet \\(expected a Yambda flat-layout folder"):
        prepare(tmp_path / "flat", tmp_path / "out", format="yambda", **ALL)
    with pytest.raises(ValueError, match="skip_below must be a finite percentage >= 0"):
        prepare(folder, tmp_path / "out", format="yambda", skip_below=-1, **ALL)
    with pytest.raises(ValueError, match="apply to the yambda format, not events"):
        prepare(folder / "listens.parquet", tmp_path / "out", format="events", organic_only=True, **ALL)
    with pytest.raises(ValueError, match="neither durations nor on_bad_rows='skip'"):
        prepare(folder, tmp_path / "out", format="yambda", on_bad_rows="skip", **ALL)
    with pytest.raises(InputError, match=f"^{folder / 'listens.parquet'}: no session passes the filters"):
        prepare(folder, tmp_path / "out", format="yambda", min_length=9, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flat"]
