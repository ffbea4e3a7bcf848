"""Batch recommendation: top-K next items for every session of a file, batched on the device.

Sessions are read by the Rust ingest (the formats and column mapping of ``prepare``, skips
included; no length filter, no cut), encoded with the run's vocabulary (unknown ids dropped
and counted), scored in batches and written to Parquet (one row per session, list columns)
or CSV (one row per recommendation). Each session's result is what
:meth:`Recommender.recommend` returns for its plays, with its skipped plays as ``skipped``
when ``exclude_skipped``.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from negrec_fast import _core
from negrec_fast.data import parquet
from negrec_fast.data.prepare import FORMATS, MAPPING_KEYS, _strings
from negrec_fast.errors import ConfigError, InputError
from negrec_fast.models.base import N_RESERVED
from negrec_fast.progress import Progress
from negrec_fast.recommend import Recommender

OUTPUT_SUFFIXES = (".parquet", ".csv")
SCORE_BUDGET = 1 << 26  # floats of one [batch, catalogue] score matrix (256 MiB)


@dataclass
class Sessions:
    """Sessions of a file encoded with a run's vocabulary: the known plays in CSR form."""

    keys: pa.Array  # [S] session keys as the ingest builds them (``user#n`` for cut user logs)
    offsets: np.ndarray  # int64 [S + 1] into items/skips
    items: np.ndarray  # int64 run ids (>= 2) of the known plays, in play order
    skips: np.ndarray  # uint8, 1 = skipped
    n_unknown: np.ndarray  # int32 [S] plays of each session dropped as unknown
    unknown_ids: pa.Array  # distinct unknown original ids

    def __len__(self) -> int:
        return len(self.offsets) - 1


@dataclass
class BatchSummary:
    """What :func:`recommend_file` wrote and what it could not use."""

    output: Path
    n_sessions: int
    n_plays: int
    n_unknown_plays: int
    unknown_ids: list[str] = field(repr=False)
    n_empty_sessions: int  # sessions with no known play (recommended as an empty session)
    seconds: float


def read_sessions(
    path: str | PathLike[str],
    vocab: pa.Array,
    *,
    format: str = "events",
    skip_rule: str = "skip_2",
    session_gap: int | None | str = "auto",
    durations: str | PathLike[str] | None = None,
    on_bad_rows: str = "error",
    **mapping: Any,
) -> Sessions:
    """Read a sessions file (or folder of shards) with the Rust ingest; encode with ``vocab``.

    ``format``, ``skip_rule``, ``session_gap``, ``durations``, ``on_bad_rows`` and the column
    mapping (``session=``, ``item=``, ``skip_column=``, ...) mean what they mean for
    :func:`negrec_fast.data.prepare`; every session is kept whole. ``vocab`` is the run's
    (``[PAD]``, ``[MASK]``, then the items); ids not in it are dropped and counted.
    """
    if format not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}; got {format!r}")
    if on_bad_rows not in ("error", "skip"):
        raise ConfigError(f"on_bad_rows must be 'error' or 'skip', got {on_bad_rows!r}")
    extra = sorted(set(mapping) - set(MAPPING_KEYS))
    if extra:
        raise TypeError(f"unknown column-mapping options: {', '.join(extra)}")
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: sessions file not found")
    if session_gap == "auto":
        session_gap = None if format == "recbole" else 1800
    kwargs: dict[str, Any] = dict(
        format=format, skip_rule=skip_rule, min_length=1, max_length=None, min_remainder=1, require_skip=False,
        session_gap=session_gap, durations=str(durations) if durations is not None else None,
        skip_bad_rows=on_bad_rows == "skip",
    )
    given = {k: v for k, v in mapping.items() if v is not None}
    if format in ("events", "recbole"):
        kwargs.update(given)
    elif any(k != "timestamp_unit" for k in given):
        raise ConfigError(f"column-mapping options apply to the events and recbole formats, not {format}")
    with tempfile.TemporaryDirectory(prefix="negrec-recommend-") as tmp:
        inputs, converted = [path], []
        if format in ("events", "recbole") and path.suffix.lower() == ".parquet":
            kwargs["delimiter"] = kwargs.get("delimiter") or ","
            full = {k: mapping.get(k) for k in MAPPING_KEYS}
            inputs, converted = parquet.to_csv(inputs, Path(tmp), full, kwargs["delimiter"], format == "recbole")
        try:
            raw = _core.ingest([str(p) for p in inputs], **kwargs)
        except _core.InputError as e:
            raise parquet.map_error(e, converted) from None
    return _encode(raw, vocab)


def _encode(raw: dict[str, Any], vocab: pa.Array) -> Sessions:
    """Maps the file's own vocabulary onto the run's (a hash join over distinct ids, not plays)."""
    file_vocab = _strings(raw["vocab_data"], raw["vocab_offsets"])[N_RESERVED:]
    found = pc.index_in(file_vocab, value_set=vocab[N_RESERVED:].cast(file_vocab.type))
    lut = np.zeros(len(file_vocab) + N_RESERVED, dtype=np.int64)
    lut[N_RESERVED:] = found.fill_null(-N_RESERVED).to_numpy(zero_copy_only=False).astype(np.int64) + N_RESERVED
    offsets = raw["offsets"]
    items = lut[raw["items"]]
    known = items >= N_RESERVED
    lengths = np.diff(offsets)
    session_of = np.repeat(np.arange(len(lengths)), lengths)
    kept = np.bincount(session_of[known], minlength=len(lengths))
    return Sessions(
        keys=_strings(raw["session_data"], raw["session_offsets"]),
        offsets=np.concatenate([[0], np.cumsum(kept)]).astype(np.int64),
        items=items[known],
        skips=raw["skips"][known],
        n_unknown=(lengths - kept).astype(np.int32),
        unknown_ids=file_vocab.filter(found.is_null()),
    )


def batch_size_for(vocab_size: int, batch_size: int) -> int:
    """``batch_size`` capped so one ``[batch, vocab_size]`` score matrix fits SCORE_BUDGET floats."""
    return max(1, min(batch_size, SCORE_BUDGET // vocab_size))


@torch.no_grad()
def recommend_sessions(
    rec: Recommender,
    sessions: Sessions,
    *,
    k: int = 10,
    exclude_seen: bool = False,
    exclude_skipped: bool = True,
    batch_size: int = 256,
    progress: bool = False,
) -> Iterator[pa.RecordBatch]:
    """Record batches ``session, items (list<string>), scores (list<float>), n_unknown``.

    Row ``s`` equals ``rec.recommend(plays, skips=its skip flags, skipped=skipped plays if
    exclude_skipped, k=k, exclude_seen=exclude_seen)``: fewer than ``k`` items only when exclusions leave
    fewer candidates.
    """
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    model, device, vocab = rec.model, rec.device, rec.dataset.vocab
    max_len, n_sessions = rec.config.data.max_len, len(sessions)
    step = batch_size_for(rec.dataset.vocab_size, batch_size)
    k_top = min(k, rec.dataset.vocab_size)
    offsets = sessions.offsets
    with Progress(n_sessions, "session", "recommend", disable=not progress) as bar:
        for a in range(0, n_sessions, step):
            b = min(a + step, n_sessions)
            lo, hi = offsets[a], offsets[b]
            items = sessions.items[lo:hi]
            rows = np.repeat(np.arange(b - a), np.diff(offsets[a : b + 1]))
            from_end = offsets[a + 1 : b + 1][rows] - 1 - np.arange(lo, hi)  # 0 = last play
            tail = from_end < max_len
            x = np.zeros((b - a, max_len), dtype=np.int64)
            x[rows[tail], max_len - 1 - from_end[tail]] = items[tail]
            flags = np.zeros((b - a, max_len), dtype=bool)
            flags[rows[tail], max_len - 1 - from_end[tail]] = sessions.skips[lo:hi][tail] == 1
            query = model.next_query(torch.from_numpy(x).to(device), torch.from_numpy(flags).to(device))
            scores = model.score_all(query).float()
            banned = np.ones(len(items), dtype=bool) if exclude_seen else np.zeros(len(items), dtype=bool)
            if exclude_skipped:
                banned |= sessions.skips[lo:hi] == 1
            if banned.any():
                r = torch.from_numpy(rows[banned]).to(device)
                c = torch.from_numpy(items[banned]).to(device)
                scores[r, c] = float("-inf")
            top = torch.topk(scores, k_top)
            values, indices = top.values.cpu().numpy(), top.indices.cpu().numpy()
            finite = np.isfinite(values)
            list_offsets = pa.array(np.concatenate([[0], np.cumsum(finite.sum(axis=1))]).astype(np.int32))
            names = vocab.take(pa.array(indices[finite])).cast(pa.string())
            yield pa.RecordBatch.from_pydict({
                "session": sessions.keys[a:b].cast(pa.string()),
                "items": pa.ListArray.from_arrays(list_offsets, names),
                "scores": pa.ListArray.from_arrays(list_offsets, pa.array(values[finite], pa.float32())),
                "n_unknown": pa.array(sessions.n_unknown[a:b]),
            })
            bar.update(b - a)


def _long(batch: pa.RecordBatch) -> pa.RecordBatch:
    """One row per recommendation: session, rank (1-based), item, score."""
    items = batch.column("items")
    counts = pc.list_value_length(items).to_numpy(zero_copy_only=False)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return pa.RecordBatch.from_pydict({
        "session": batch.column("session").take(pa.array(np.repeat(np.arange(len(counts)), counts))),
        "rank": pa.array(np.arange(counts.sum()) - starts + 1, pa.int32()),
        "item": items.flatten(),
        "score": batch.column("scores").flatten(),
    })


def recommend_file(
    rec: Recommender,
    input: str | PathLike[str],
    output: str | PathLike[str],
    *,
    k: int = 10,
    exclude_seen: bool = False,
    exclude_skipped: bool = True,
    batch_size: int = 256,
    progress: bool = True,
    **read_options: Any,
) -> BatchSummary:
    """Recommend for every session of ``input`` (see :func:`read_sessions` for
    ``read_options``) and write ``output``: ``.parquet`` (one row per session: ``session``,
    ``items`` and ``scores`` lists, ``n_unknown``) or ``.csv`` (``session, rank, item,
    score``, one row per recommendation). Written to a temporary file, then renamed."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    output = Path(output)
    suffix = output.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise ConfigError(
            f"{output}: the output must end in {' or '.join(OUTPUT_SUFFIXES)}, got {suffix or 'no suffix'!r}"
        )
    tic = time.perf_counter()
    sessions = read_sessions(input, rec.dataset.vocab, **read_options)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(fd)
    batches = recommend_sessions(
        rec, sessions, k=k, exclude_seen=exclude_seen, exclude_skipped=exclude_skipped,
        batch_size=batch_size, progress=progress,
    )
    try:
        if suffix == ".parquet":
            _write_parquet(pq, tmp, batches)
        else:
            writer = None
            for batch in batches:
                long = _long(batch)
                writer = writer or pacsv.CSVWriter(tmp, long.schema)
                writer.write_batch(long)
            writer.close()
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return BatchSummary(
        output=output,
        n_sessions=len(sessions),
        n_plays=int(len(sessions.items) + sessions.n_unknown.sum()),
        n_unknown_plays=int(sessions.n_unknown.sum()),
        unknown_ids=sessions.unknown_ids.to_pylist(),
        n_empty_sessions=int((np.diff(sessions.offsets) == 0).sum()),
        seconds=time.perf_counter() - tic,
    )


def _write_parquet(pq: Any, path: str, batches: Iterator[pa.RecordBatch], rows_per_group: int = 1 << 16) -> None:
    """Writes the batches as row groups of about ``rows_per_group`` sessions."""
    writer, pending, n = None, [], 0
    for batch in batches:
        pending.append(batch)
        n += batch.num_rows
        if n >= rows_per_group:
            writer = writer or pq.ParquetWriter(path, batch.schema)
            writer.write_table(pa.Table.from_batches(pending))
            pending, n = [], 0
    if pending:
        writer = writer or pq.ParquetWriter(path, pending[0].schema)
        writer.write_table(pa.Table.from_batches(pending))
    writer.close()
