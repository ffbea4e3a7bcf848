"""`prepare`: raw session logs -> processed dataset folder, via the Rust ingest engine.

Rust parses, labels, filters, encodes and splits (GIL released, multi-threaded) and returns
numpy arrays it owns; they become Arrow arrays without copies and are written here.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from negrec_fast import __version__, _core
from negrec_fast.data import parquet, yambda
from negrec_fast.data.dataset import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    SESSIONS_FILE,
    VOCAB_FILE,
    SessionDataset,
    file_sha256,
    load_dataset,
)
from negrec_fast.progress import Progress

FORMATS = ("mssd", "lfm1k", "lfm2b", "events", "recbole")  # read by the Rust ingest
PREPARE_FORMATS = FORMATS + ("yambda",)  # yambda: converted to an events table first (data/yambda.py)
PathArg = str | PathLike[str]

# Column-mapping options of the events/recbole formats (passed to Rust as is).
MAPPING_KEYS = (
    "session",
    "user",
    "item",
    "timestamp",
    "position",
    "timestamp_unit",
    "skip_column",
    "ratio_column",
    "play_time_column",
    "duration_column",
    "rating_column",
    "threshold",
    "delimiter",
)


def _strings(data: np.ndarray, offsets: np.ndarray) -> pa.LargeStringArray:
    """A large_string array over a UTF-8 byte buffer and int64 offsets (no copy)."""
    return pa.LargeStringArray.from_buffers(len(offsets) - 1, pa.py_buffer(offsets), pa.py_buffer(data))


def _numeric(values: np.ndarray) -> pa.Array:
    """A primitive Arrow array over a numpy array's buffer, without a copy (``pa.array`` would
    also import pandas, if installed, to test for a Series: 0.1-0.3 s of a command's time)."""
    values = np.ascontiguousarray(values)
    if values.dtype == np.bool_:  # Arrow booleans are bits
        values = values.view(np.uint8)
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


def _list(offsets: np.ndarray, values: np.ndarray) -> pa.ListArray:
    if offsets[-1] > np.iinfo(np.int32).max:
        raise ValueError(f"{offsets[-1]} plays exceed the 2^31-1 limit of Arrow list<...> columns")
    return pa.ListArray.from_arrays(_numeric(offsets.astype(np.int32)), _numeric(values))


def _write(path: Path, batch: pa.RecordBatch) -> None:
    with pa.OSFile(str(path), "wb") as sink, ipc.new_file(sink, batch.schema) as writer:
        writer.write_batch(batch)


_SIZE = re.compile(r"(\d+(?:\.\d*)?)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)


def parse_size(value: int | str) -> int:
    """Bytes of a size: an integer, or text like ``"512M"``, ``"1.5G"``, ``"64MiB"`` (K, M, G, T are
    powers of 1024; a plain number is bytes)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"a size is an integer or text like '512M', got {value!r}")
    if isinstance(value, int):
        size = value
    else:
        m = _SIZE.fullmatch(value.strip())
        if m is None:
            raise ValueError(f"a size is a number with an optional unit K, M, G or T (e.g. '512M'), got {value!r}")
        size = int(float(m[1]) * 1024 ** " kmgt".index((m[2] or " ").lower()))
    if size <= 0:
        raise ValueError(f"a size must be positive, got {value!r}")
    return size


def _zeros(nbytes: int) -> mmap.mmap | np.ndarray:
    """Zero bytes in a private anonymous map: pages that are only read map the kernel's shared
    zero page, so they take no memory (resident set) however large."""
    if not hasattr(mmap, "MAP_PRIVATE"):  # Windows: calloc'ed pages are committed when touched
        return np.zeros(max(nbytes, 1), dtype=np.uint8)
    return mmap.mmap(-1, max(nbytes, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def _placeholder(dtype: type[np.generic], n: int, last: int | None = None) -> pa.Buffer:
    """A buffer of ``n`` zero values of ``dtype`` (the last set to ``last``) that takes no memory."""
    size = np.dtype(dtype).itemsize * n
    zeros = _zeros(size)
    if last is not None:
        np.frombuffer(zeros, dtype=dtype, count=n)[-1] = last
    return pa.py_buffer(zeros)[:size]


def _copy_into(dst: int, offset: int, src_path: str, size: int) -> None:
    """Copies the file ``src_path`` (``size`` bytes) to ``offset`` of the open file ``dst``, in the kernel
    where it can (no user-space buffer), else in 1 MiB blocks."""
    if os.path.getsize(src_path) != size:
        raise RuntimeError(f"{src_path}: {os.path.getsize(src_path)} bytes, expected {size}")
    with open(src_path, "rb") as src:
        done = 0
        if hasattr(os, "copy_file_range"):
            try:
                while done < size:
                    n = os.copy_file_range(src.fileno(), dst, size - done, done, offset + done)
                    if n == 0:
                        break
                    done += n
            except OSError:
                pass
        while done < size:
            block = os.pread(src.fileno(), min(1 << 20, size - done), done)
            if not block:
                raise RuntimeError(f"{src_path}: ends after {done} of {size} bytes")
            os.pwrite(dst, block, offset + done)
            done += len(block)


def _write_streamed(path: Path, raw: dict[str, Any]) -> None:
    """Writes sessions.arrow from the column files of a streaming ingest without loading them:
    pyarrow writes the file (so it is byte for byte what `_write_folder` writes) from buffers of
    zeros that take no memory, then each column file is copied over its zeros."""
    files = raw["columns"]
    n, rows = raw["n_sessions"], raw["n_rows"]
    if rows > np.iinfo(np.int32).max:
        raise ValueError(f"{rows} plays exceed the 2^31-1 limit of Arrow list<...> columns")
    key_bytes = os.path.getsize(files["session_data"])

    def array(dtype: type[np.generic], pa_type: pa.DataType, count: int, last: int | None = None) -> pa.Array:
        return pa.Array.from_buffers(pa_type, count, [None, _placeholder(dtype, count, last)])

    def listed(dtype: type[np.generic], pa_type: pa.DataType) -> pa.ListArray:
        return pa.ListArray.from_arrays(array(np.int32, pa.int32(), n + 1, rows), array(dtype, pa_type, rows))

    key_offsets = _placeholder(np.int64, n + 1, key_bytes)
    columns: dict[str, pa.Array] = {
        "session": pa.LargeStringArray.from_buffers(n, key_offsets, _placeholder(np.uint8, key_bytes)),
        "items": listed(np.uint32, pa.uint32()),
        "skips": listed(np.uint8, pa.uint8()),
    }
    # The file each buffer of each column comes from (None: no buffer), in `Array.buffers()` order.
    sources: dict[str, list[str | None]] = {
        "session": [None, "session_offsets", "session_data"],
        "items": [None, "offsets", None, "items"],
        "skips": [None, "offsets", None, "skips"],
    }
    if "timestamps" in files:
        columns["timestamps"] = listed(np.int64, pa.int64())
        sources["timestamps"] = [None, "offsets", None, "timestamps"]
    for name in ("train_end", "valid_target", "test_target"):
        columns[name] = array(np.int32, pa.int32(), n)
        sources[name] = [None, name]
    _write(path, pa.RecordBatch.from_pydict(columns))
    del columns, key_offsets

    # Where pyarrow put each buffer: its address in a map of the file, less the map's start.
    with pa.memory_map(str(path), "r") as source:
        size = source.size()
        base = source.read_buffer(1).address
        source.seek(0)
        batch = ipc.open_file(source).get_batch(0)
        spans = []
        for name, names in sources.items():
            buffers = batch.column(name).buffers()
            if len(buffers) != len(names):
                raise RuntimeError(f"{path}: column {name!r} has {len(buffers)} buffers, expected {len(names)}")
            for buf, file in zip(buffers, names):
                if file is None or buf is None or buf.size == 0:
                    continue
                offset = buf.address - base
                if not 0 <= offset <= size - buf.size:  # read as a copy, not in place
                    raise RuntimeError(f"{path}: the {file} buffer is not inside the file map")
                spans.append((offset, files[file], buf.size))
        del batch, buffers
    fd = os.open(path, os.O_WRONLY)
    try:
        for offset, file, nbytes in spans:
            _copy_into(fd, offset, file, nbytes)
    finally:
        os.close(fd)


def _run_with_progress(paths: list[str], show: bool, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Runs `_core.ingest`; a helper thread draws input bytes processed while Rust works."""
    if not show:
        return _core.ingest(paths, **kwargs)
    counter = _core.IngestProgress()
    bar = Progress(_core.input_bytes(paths), "B", "prepare")
    done = threading.Event()

    def poll() -> None:
        while not done.wait(0.2):
            bar.update(counter.bytes - bar.count)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        return _core.ingest(paths, progress=counter, **kwargs)
    finally:
        done.set()
        thread.join()
        bar.update(counter.bytes - bar.count)
        bar.close()


def prepare(
    input: PathArg | Sequence[PathArg],
    output_dir: PathArg,
    *,
    format: str,
    skip_rule: str = "skip_2",
    min_length: int = 6,
    max_length: int | None | str = "auto",
    min_remainder: int = 5,
    require_skip: bool | None = None,
    max_sessions: int | None = None,
    seed: int = 0,
    split: str = "leave-last-out",
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    session_gap: int | None | str = "auto",
    durations: PathArg | None = None,
    session: str | None = None,
    user: str | None = None,
    item: str | None = None,
    timestamp: str | None = None,
    position: str | None = None,
    timestamp_unit: str = "s",
    skip_column: str | None = None,
    ratio_column: str | None = None,
    play_time_column: str | None = None,
    duration_column: str | None = None,
    rating_column: str | None = None,
    threshold: float | None = None,
    delimiter: str | None = None,
    skip_below: float | None = None,
    organic_only: bool = False,
    on_bad_rows: str = "error",
    memory_limit: int | str | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> SessionDataset:
    """Turns raw logs into a processed dataset folder and returns it loaded (memory-mapped).

    input: a file, a folder of shards (read in name order) or a list of them; plain or ``.gz``
    (``.parquet`` files too for ``events``/``recbole``: only the columns the mapping uses are read,
    and errors name the Parquet file, data row and column).
    format: ``mssd`` (Spotify MSSD CSV), ``lfm1k`` (Last.fm 1K TSV), ``lfm2b`` (``user, track,
    time`` TSV), ``events`` (CSV/TSV with a header), ``recbole`` (``.inter``) or ``yambda``
    (Yambda flat-layout ``listens.parquet`` and ``dislikes.parquet``, or their folder).
    Filters, in order: a session (and each full window of a cut one) needs ``min_length`` plays;
    sessions longer than ``max_length`` (None = no cut) are cut into windows of ``max_length``
    plays, the shorter last window (remainder) kept only with ``min_remainder`` plays (defaults
    6/20/5: windows of 20, remainders of >= 5 kept; ``"auto"``: 20, no cut for recbole/yambda);
    ``require_skip`` (default: on for MSSD, off otherwise) drops windows without a skip;
    ``max_sessions`` keeps a ``seed``-ed uniform sample in file order. User-keyed timestamped
    logs are cut into sessions at gaps over ``session_gap`` seconds (keys ``user#n``; None = one
    sequence per user; ``"auto"``: 1800, None for recbole/yambda); windows of a cut session get
    ``:w`` appended. ``recbole`` thus follows RecBole by default: one sequence per user
    (``user_id``), ordered by timestamp, ties in file order; ``yambda`` likewise (``uid``).
    Skips: MSSD ``skip_rule`` (``skip_1``, ``skip_2`` = default, ``skip_3``, ``not_skipped``);
    events/recbole one of ``skip_column`` (boolean), ``ratio_column`` (< ``threshold``),
    ``play_time_column``/``duration_column`` (ratio < ``threshold``), ``rating_column``
    (< ``threshold``); timestamped logs without one may derive skips from ``durations``
    (``track_id, duration_seconds``): a play is skipped when the next play of its session starts
    before the track's duration has passed. LFM-1K rows without a track id use the key
    ``artist-name + "\\x1f" + track-name``.
    Yambda: a listen is skipped when ``played_ratio_pct < skip_below`` (default 50, Yambda's
    Listen+ boundary); a dislike flags the listen it interrupted as skipped, or else adds a skipped
    play at its time; ``organic_only`` keeps ``is_organic = 1`` events only (rules and schema
    source: ``negrec_fast.data.yambda``).
    on_bad_rows: ``"error"`` raises InputError (``FILE:LINE:COL: ...``) at the first malformed
    row; ``"skip"`` skips and counts them (manifest ``n_bad_rows``).
    memory_limit: bytes (an int, or text like ``"512M"``, ``"4G"``; at least 1 MiB) the ingest's data may
    take: the input is read in blocks and spilled to partition files in a temporary folder beside
    ``output_dir``, which are built one at a time and merged, so a log larger than memory can be
    prepared. The dataset folder is the same, byte for byte, as without a limit. Not counted: the
    Python interpreter and its libraries (a fixed ~75 MB), the item vocabulary (refused if it
    needs over half the limit), one session or user history larger than a partition, a
    ``durations`` table, and 16 bytes per session under the temporal split. None (default):
    everything in memory, fastest.
    The folder is written to a temporary sibling and renamed into place when complete; an
    existing non-empty ``output_dir`` is replaced only with ``overwrite=True``.
    """
    if format not in PREPARE_FORMATS:
        raise ValueError(f"format must be one of {', '.join(PREPARE_FORMATS)}; got {format!r}")
    if on_bad_rows not in ("error", "skip"):
        raise ValueError(f"on_bad_rows must be 'error' or 'skip', got {on_bad_rows!r}")
    if max_length == "auto":
        max_length = None if format in ("recbole", "yambda") else 20
    if session_gap == "auto":
        session_gap = None if format in ("recbole", "yambda") else 1800
    for name, value in (("max_length", max_length), ("session_gap", session_gap)):
        if isinstance(value, str):
            raise ValueError(f"{name} must be an integer, None or 'auto', got {value!r}")
    for name, value in (
        ("min_length", min_length),
        ("max_length", max_length),
        ("min_remainder", min_remainder),
        ("max_sessions", max_sessions),
    ):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    limit = None if memory_limit is None else parse_size(memory_limit)
    if require_skip is None:
        require_skip = format == "mssd"
    inputs = [Path(p) for p in ([input] if isinstance(input, (str, PathLike)) else input)]
    out = Path(output_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True to replace it)")
    mapping = {
        "session": session,
        "user": user,
        "item": item,
        "timestamp": timestamp,
        "position": position,
        "timestamp_unit": timestamp_unit,
        "skip_column": skip_column,
        "ratio_column": ratio_column,
        "play_time_column": play_time_column,
        "duration_column": duration_column,
        "rating_column": rating_column,
        "threshold": threshold,
        "delimiter": delimiter,
    }
    rules = {
        "skip_rule": skip_rule if format == "mssd" else None,
        "min_length": min_length,
        "max_length": max_length,
        "min_remainder": min_remainder,
        "require_skip": require_skip,
        "max_sessions": max_sessions,
        "seed": seed,
        "session_gap": session_gap,
        "durations": str(durations) if durations is not None else None,
        "on_bad_rows": on_bad_rows,
    }
    kwargs: dict[str, Any] = dict(
        format=format,
        skip_rule=skip_rule,
        min_length=min_length,
        max_length=max_length,
        min_remainder=min_remainder,
        require_skip=require_skip,
        max_sessions=max_sessions,
        seed=seed,
        session_gap=session_gap,
        split=split,
        valid_fraction=valid_fraction,
        test_fraction=test_fraction,
        durations=str(durations) if durations is not None else None,
        skip_bad_rows=on_bad_rows == "skip",
    )
    if format in ("events", "recbole"):
        kwargs.update(mapping)
        rules["columns"] = {k: v for k, v in mapping.items() if v is not None}
    elif any(v is not None for k, v in mapping.items() if k != "timestamp_unit"):
        raise ValueError(f"column-mapping options apply to the events and recbole formats, not {format}")
    if format == "yambda":
        if durations is not None or on_bad_rows != "error":
            raise ValueError("the yambda format takes neither durations nor on_bad_rows='skip'")
        skip_below = yambda.check_skip_below(yambda.SKIP_BELOW if skip_below is None else skip_below)
        kwargs.update(yambda.INGEST_OPTIONS)
        rules.update(skip_below=skip_below, organic_only=organic_only)
    elif skip_below is not None or organic_only:
        raise ValueError(f"skip_below and organic_only apply to the yambda format, not {format}")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        converted: list[parquet.Converted] = []
        from_yambda: yambda.Converted | None = None
        # Parquet is converted in record batches; under a memory limit, of about limit / 1024 rows.
        batch_rows = {} if limit is None else {"batch_size": max(1 << 10, min(1 << 16, limit // 1024))}
        if format in ("events", "recbole") and any(p.suffix.lower() == ".parquet" for p in inputs):
            kwargs["delimiter"] = delimiter or ","
            inputs, converted = parquet.to_csv(
                inputs, tmp, mapping, kwargs["delimiter"], format == "recbole", **batch_rows
            )
        if format == "yambda":
            from_yambda = yambda.to_csv(
                inputs, tmp / "yambda-events.csv", skip_below=skip_below, organic_only=organic_only, progress=progress,
                **batch_rows,
            )
            inputs = [from_yambda.csv]
        if limit is not None:
            kwargs.update(memory_limit=limit, work_dir=str(tmp / "spill"))
        try:
            raw = _run_with_progress([str(p) for p in inputs], progress, kwargs)
        except _core.InputError as e:
            raise (from_yambda.map_error(e) if from_yambda else parquet.map_error(e, converted)) from None
        if from_yambda:
            raw.update(files=from_yambda.files, bytes=from_yambda.bytes, yambda=from_yambda.counts)
            raw["rows_read"] = from_yambda.counts["listens"] + from_yambda.counts["dislikes"]
            from_yambda.csv.unlink()
        if converted:
            raw["files"] = parquet.source_files(raw["files"], converted)
            raw["bytes"] += sum(c.parquet.stat().st_size - c.csv.stat().st_size for c in converted)
            for c in converted:
                c.csv.unlink()
        manifest = _write_folder(tmp, raw, format, rules, split, valid_fraction, test_fraction)
        shutil.rmtree(tmp / "spill", ignore_errors=True)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            out.rename(old / out.name)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    dataset = load_dataset(out)
    assert dataset.manifest == manifest
    return dataset


def _write_folder(
    folder: Path,
    raw: dict[str, Any],
    format: str,
    rules: dict[str, Any],
    split: str,
    valid_fraction: float,
    test_fraction: float,
) -> dict[str, Any]:
    """Writes sessions.arrow, vocab.arrow and manifest.json into `folder`; returns the manifest.
    `raw` holds the arrays of an in-memory ingest, or the column files of a streaming one."""
    if "columns" in raw:
        _write_streamed(folder / SESSIONS_FILE, raw)
        n_rows, n_sessions, n_valid, n_test = raw["n_rows"], raw["n_sessions"], raw["n_valid"], raw["n_test"]
        skip_rate = raw["n_skipped"] / n_rows if n_rows else 0.0  # == skips.mean(): both correctly rounded
    else:
        offsets = raw["offsets"]
        columns = {
            "session": _strings(raw["session_data"], raw["session_offsets"]),
            "items": _list(offsets, raw["items"]),
            "skips": _list(offsets, raw["skips"]),
        }
        if raw["timestamps"] is not None:
            columns["timestamps"] = _list(offsets, raw["timestamps"])
        for name in ("train_end", "valid_target", "test_target"):
            columns[name] = _numeric(raw[name])
        _write(folder / SESSIONS_FILE, pa.RecordBatch.from_pydict(columns))
        skips = raw["skips"]
        n_rows, n_sessions = len(skips), len(offsets) - 1
        skip_rate = float(skips.mean()) if len(skips) else 0.0
        n_valid, n_test = (raw["valid_target"] >= 0).sum(), (raw["test_target"] >= 0).sum()
    vocab = {"item": _strings(raw["vocab_data"], raw["vocab_offsets"]), "count": _numeric(raw["counts"])}
    _write(folder / VOCAB_FILE, pa.RecordBatch.from_pydict(vocab))

    n_items = len(raw["counts"]) - 2
    split_info: dict[str, Any] = {"name": split, "n_valid": int(n_valid), "n_test": int(n_test)}
    if split == "temporal":
        split_info.update(valid_fraction=valid_fraction, test_fraction=test_fraction)
    manifest = {
        "format_version": FORMAT_VERSION,
        "n_rows": int(n_rows),
        "n_sessions": int(n_sessions),
        "n_items": n_items,
        "vocab_size": n_items + 2,
        "skip_rate": float(skip_rate),
        "n_bad_rows": int(raw["bad_rows"]),
        "source": {
            "format": format,
            "paths": raw["files"],
            "bytes": int(raw["bytes"]),
            "rows_read": int(raw["rows_read"]),
            **({"yambda": raw["yambda"]} if "yambda" in raw else {}),  # Yambda event counts
        },
        "rules": rules,
        "split": split_info,
        "checksum": {name: file_sha256(folder / name) for name in (SESSIONS_FILE, VOCAB_FILE)},
        "created_by": f"negrec-fast {__version__}",
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
