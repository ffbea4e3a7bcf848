"""Yambda (Yandex Music, 2025; Hugging Face dataset ``yandex/yambda``): flat-layout Parquet files
turned into the events form of the Rust ingest (``user_id, item_id, timestamp, skipped`` CSV).

Schema, from the dataset card (huggingface.co/datasets/yandex/yambda, README "Data Format" and
"FAQ") and its paper (arXiv:2505.22238). Flat layout (``flat/{50m,500m,5b}/``), one row per event,
every file sorted by ``(uid, timestamp)``:

- ``listens.parquet``: ``uid`` uint32, ``timestamp`` uint32, ``item_id`` uint32, ``is_organic``
  uint8, ``played_ratio_pct`` uint16, ``track_length_seconds`` uint32;
- ``dislikes.parquet`` (likewise likes, unlikes, undislikes): the first four columns.

``timestamp`` counts seconds from the dataset's first event (not unix time), binned to 5 s;
``is_organic`` is 1 when the user reached the track themselves, 0 when a recommendation did
(personalised feed or playlists); ``played_ratio_pct`` is the share of the track played, in
percent, above 100 when the user rewound (expected, says the FAQ). The sequential layout (one row
per user, list columns ``item_ids``, ``timestamps``, ...) is refused: take ``flat/<size>/``.

Rules:

- One sequence per user (key = ``uid``), plays in timestamp order, ties in file order with
  listens before dislikes; ``session_gap`` cuts histories as for the other user-keyed formats.
- A listen is skipped when ``played_ratio_pct < skip_below``. Default 50: the card counts a track
  as listened (Listen+) when over half of it is played, and the benchmark code published with the
  dataset keeps listens with ``played_ratio_pct >= 50`` (``TRACK_LISTEN_THRESHOLD = 50``), so kept
  and skipped plays are Listen+ and Listen-.
- A dislike ("do not recommend this track") is negative feedback. One pressed while the track
  played becomes that play's skip flag: when the user's latest listen at or before the dislike
  (ties: the last in file order) is of the same track and started at most
  ``track_length_seconds + 5`` s earlier (5 s: the timestamp bin), that listen is flagged
  skipped, whatever its ratio, and no play is added (the play and its dislike are one event; both
  would put the track twice in a row). Any other dislike adds a play of the track, flagged
  skipped, at the dislike's timestamp.
- Likes, unlikes and undislikes are not read: a like marks a track the user plays anyway, and a
  dislike revoked later was still negative when pressed.
- ``organic_only`` keeps the events with ``is_organic = 1`` only, listens and added dislikes each
  by their own flag, after dislikes are matched to listens.

Files are read in record batches (memory: a batch plus one user's rows) and the plays written to
one CSV that the Rust events reader ingests like any event table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from negrec_fast._core import InputError

SKIP_BELOW = 50.0
TIME_BIN = 5
EVENTS = {"uid": pa.uint32(), "timestamp": pa.uint32(), "item_id": pa.uint32(), "is_organic": pa.uint8()}
LISTENS = {**EVENTS, "played_ratio_pct": pa.uint16(), "track_length_seconds": pa.uint32()}
READ = ("listens", "dislikes")
NOT_READ = ("likes", "unlikes", "undislikes", "multi_event", "embeddings")
CSV_SCHEMA = pa.schema(
    [("user_id", pa.uint32()), ("item_id", pa.uint32()), ("timestamp", pa.uint32()), ("skipped", pa.uint8())]
)
# Rust ingest options for the CSV written here.
INGEST_OPTIONS = {
    "format": "events", "user": "user_id", "item": "item_id", "timestamp": "timestamp", "skip_column": "skipped",
    "delimiter": ",",
}

Columns = dict[str, np.ndarray]


@dataclass
class Converted:
    """The events CSV written from a listens file and an optional dislikes file."""

    csv: Path
    listens: Path
    dislikes: Path | None
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def files(self) -> list[str]:
        return [str(p) for p in (self.listens, self.dislikes) if p is not None]

    @property
    def bytes(self) -> int:
        return sum(Path(p).stat().st_size for p in self.files)

    def map_error(self, err: InputError) -> InputError:
        """A whole-file error of the CSV (e.g. no session passes the filters) named after the listens."""
        text, prefix = str(err), f"{self.csv}:"
        return InputError(f"{self.listens}:{text[len(prefix):]}") if text.startswith(prefix) else err


def check_skip_below(value: float) -> float:
    """``value`` as a float, or ValueError unless it is a finite percentage >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"skip_below must be a finite percentage >= 0 (played_ratio_pct), got {value!r}")
    return float(value)


def find_files(paths: list[Path]) -> tuple[Path, Path | None]:
    """The listens and dislikes files among the inputs: a flat-layout folder (its
    ``listens.parquet`` and, when present, ``dislikes.parquet``) or those files themselves."""
    if len(paths) == 1 and paths[0].is_dir():
        folder = paths[0]
        listens, dislikes = folder / "listens.parquet", folder / "dislikes.parquet"
        if not listens.is_file():
            raise InputError(f"{folder}: no listens.parquet (expected a Yambda flat-layout folder such as flat/50m)")
        return listens, dislikes if dislikes.is_file() else None
    found: dict[str, Path] = {}
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        kind = path.name.removesuffix(".parquet")
        if path.is_dir() or kind not in READ or not path.name.endswith(".parquet"):
            why = f"{kind} events are not read" if kind in NOT_READ else "not a Yambda file name"
            raise InputError(
                f"{path}: {why} (expected listens.parquet, dislikes.parquet or a flat-layout folder holding them)"
            )
        if kind in found:
            raise InputError(f"{path}: a second {kind} file (the first is {found[kind]})")
        found[kind] = path
    if "listens" not in found:
        raise InputError(f"{', '.join(map(str, paths))}: no listens.parquet among the inputs")
    return found["listens"], found.get("dislikes")


def _check_schema(path: Path, schema: pa.Schema, columns: dict[str, pa.DataType]) -> None:
    if "item_ids" in schema.names or any(pa.types.is_list(f.type) or pa.types.is_large_list(f.type) for f in schema):
        raise InputError(
            f"{path}: Yambda's sequential layout (one row per user, list columns) is not supported; "
            "use the flat layout (flat/<size>/)"
        )
    for name, expected in columns.items():
        if name not in schema.names:
            raise InputError(f"{path}: missing column {name!r} of type {expected} (columns: {', '.join(schema.names)})")
        found = schema.field(name).type
        if found != expected:
            raise InputError(f"{path}: column {name!r} ({schema.names.index(name) + 1}): expected {expected}, found {found}")


def _batches(path: Path, columns: dict[str, pa.DataType], batch_size: int, count: Callable[[int], None]) -> Iterator[Columns]:
    """Validated batches of one file as numpy columns plus ``key`` = uid << 32 | timestamp."""
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    schema = file.schema_arrow
    _check_schema(path, schema, columns)

    def where(row: int, name: str) -> str:
        return f"{path}: row {row + 1}, column {name!r} ({schema.names.index(name) + 1})"

    first, last = 0, np.uint64(0)
    for batch in file.iter_batches(batch_size=batch_size, columns=list(columns)):
        out: Columns = {}
        for name in columns:
            column = batch.column(name)
            if column.null_count:
                row = first + int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
                raise InputError(f"{where(row, name)}: expected a value, found null")
            out[name] = column.to_numpy()
        bad = np.flatnonzero(out["is_organic"] > 1)
        if len(bad):
            raise InputError(f"{where(first + int(bad[0]), 'is_organic')}: expected 0 or 1, found {out['is_organic'][bad[0]]}")
        key = (out["uid"].astype(np.uint64) << np.uint64(32)) | out["timestamp"]
        previous = np.concatenate(([last], key[:-1]))
        bad = np.flatnonzero(key < previous)
        if len(bad):
            i = int(bad[0])
            name = "timestamp" if previous[i] >> np.uint64(32) == out["uid"][i] else "uid"
            raise InputError(
                f"{where(first + i, name)}: rows must be sorted by (uid, timestamp) as Yambda's files are; found uid "
                f"{out['uid'][i]}, timestamp {out['timestamp'][i]} after uid {previous[i] >> np.uint64(32)}, "
                f"timestamp {previous[i] & np.uint64(0xFFFFFFFF)}"
            )
        out["key"] = key
        if len(key):
            last = key[-1]
        first += len(key)
        count(len(key))
        yield out


def _cat(a: Columns, b: Columns) -> Columns:
    return {k: np.concatenate((a[k], b[k])) for k in b} if a else b


def _cut(c: Columns, end: int) -> tuple[Columns, Columns]:
    return {k: v[:end] for k, v in c.items()}, {k: v[end:] for k, v in c.items()}


def _by_user(listens: Iterator[Columns], dislikes: Iterator[Columns]) -> Iterator[tuple[Columns, Columns]]:
    """(listens, dislikes) chunks holding all rows of their users in both files, in uid order."""
    held: Columns = {}
    pending: Columns = {}
    more = True

    def dislikes_before(uid: int | None) -> Columns:
        """Buffered dislike rows with uid < ``uid`` (all when None), reading on as needed."""
        nonlocal pending, more
        while more and (not pending or uid is None or pending["uid"][-1] < uid):
            nxt = next(dislikes, None)
            if nxt is None:
                more = False
            else:
                pending = _cat(pending, nxt)
        if not pending:
            return {}
        end = len(pending["uid"]) if uid is None else int(np.searchsorted(pending["uid"], uid, side="left"))
        taken, pending = _cut(pending, end)
        return taken

    for batch in listens:
        held = _cat(held, batch)
        if not len(held["uid"]):
            continue
        last_user = held["uid"][-1]
        end = int(np.searchsorted(held["uid"], last_user, side="left"))
        if end:
            chunk, held = _cut(held, end)
            yield chunk, dislikes_before(int(last_user))
    if held or pending or more:
        yield held, dislikes_before(None)


def _events(listens: Columns, dislikes: Columns, skip_below: float, organic_only: bool, counts: dict[str, int]) -> pa.RecordBatch:
    """The plays of one chunk: listens flagged by ratio and matched dislikes, plus unmatched dislikes."""
    skip = listens["played_ratio_pct"] < skip_below if listens else np.zeros(0, bool)
    added = np.zeros(0, bool)
    if dislikes:
        added = np.ones(len(dislikes["uid"]), bool)
        if listens and len(listens["uid"]):
            j = np.searchsorted(listens["key"], dislikes["key"], side="right") - 1
            at = np.maximum(j, 0)
            since = dislikes["timestamp"].astype(np.int64) - listens["timestamp"][at]
            merged = (
                (j >= 0)
                & (listens["uid"][at] == dislikes["uid"])
                & (listens["item_id"][at] == dislikes["item_id"])
                & (since <= listens["track_length_seconds"][at].astype(np.int64) + TIME_BIN)
            )
            skip[j[merged]] = True
            added = ~merged
        counts["dislikes_merged"] += int((~added).sum())
        counts["dislikes_added"] += int(added.sum())
    parts = []
    for rows, flags, keep in ((listens, skip, None), (dislikes, np.ones(len(added), bool), added)):
        if not rows:
            continue
        if organic_only:
            organic = rows["is_organic"] == 1
            counts["non_organic_dropped"] += int((~organic if keep is None else keep & ~organic).sum())
            keep = organic if keep is None else keep & organic
        if keep is not None:
            rows, flags = {k: v[keep] for k, v in rows.items()}, flags[keep]
        parts.append((rows, flags))
    key = np.concatenate([r["key"] for r, _ in parts])
    order = np.argsort(key, kind="stable")  # users in uid order, listens first on timestamp ties

    def column(name: str) -> np.ndarray:
        return np.concatenate([r[name] for r, _ in parts])[order]

    skipped = np.concatenate([f for _, f in parts]).astype(np.uint8)[order]
    arrays = [pa.array(column("uid")), pa.array(column("item_id")), pa.array(column("timestamp")), pa.array(skipped)]
    return pa.RecordBatch.from_arrays(arrays, schema=CSV_SCHEMA)


def to_csv(
    paths: list[Path],
    csv: Path,
    *,
    skip_below: float = SKIP_BELOW,
    organic_only: bool = False,
    progress: bool = False,
    batch_size: int = 1 << 20,
) -> Converted:
    """Reads the Yambda listens (and dislikes) files of ``paths`` in record batches of
    ``batch_size`` rows and writes their plays to ``csv`` (see the module docstring for the rules)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from negrec_fast.progress import Progress

    skip_below = check_skip_below(skip_below)
    listens_path, dislikes_path = find_files(paths)
    converted = Converted(csv, listens_path, dislikes_path)
    counts = converted.counts
    counts.update(listens=0, dislikes=0, dislikes_merged=0, dislikes_added=0, non_organic_dropped=0)
    total = sum(pq.ParquetFile(p).metadata.num_rows for p in (listens_path, dislikes_path) if p is not None)
    bar = Progress(total, "rows", "yambda", disable=not progress)

    def counter(kind: str) -> Callable[[int], None]:
        def count(n: int) -> None:
            counts[kind] += n
            bar.update(n)

        return count

    listens = _batches(listens_path, LISTENS, batch_size, counter("listens"))
    dislikes = _batches(dislikes_path, EVENTS, batch_size, counter("dislikes")) if dislikes_path else iter(())
    try:
        with pacsv.CSVWriter(csv, CSV_SCHEMA) as writer:
            for chunk_listens, chunk_dislikes in _by_user(listens, dislikes):
                if chunk_listens or chunk_dislikes:
                    writer.write_batch(_events(chunk_listens, chunk_dislikes, skip_below, organic_only, counts))
    finally:
        bar.close()
    return converted
