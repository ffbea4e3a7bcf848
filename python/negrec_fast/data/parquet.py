"""Parquet inputs of the events/recbole formats.

The Rust reader takes text, so each Parquet file is streamed, row group by row group and only
the columns the mapping can use, into a temporary CSV file (one header line, then one line per
row). Errors and manifest paths are then mapped back to the Parquet file, its 1-based data row
and its column name and number.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from negrec_fast._core import InputError

# Mapping options that name a column, and the default column names the Rust reader looks for.
COLUMN_OPTIONS = (
    "session",
    "user",
    "item",
    "timestamp",
    "position",
    "skip_column",
    "ratio_column",
    "play_time_column",
    "duration_column",
    "rating_column",
)
DEFAULT_COLUMNS = ("session_id", "user_id", "item_id", "timestamp")

_LOCATION = re.compile(r"(\d+)(?::(\d+))?: (.*)\Z", re.S)


@dataclass(frozen=True)
class Converted:
    """A Parquet file and its CSV copy: CSV column i + 1 holds Parquet column `columns[i]`."""

    parquet: Path
    csv: Path
    columns: list[str]
    schema: list[str]

    def where(self, line: int, column: int) -> str:
        """`row R, column 'name' (N)` of a CSV line and 1-based column (0 = whole line)."""
        text = "header" if line <= 1 else f"row {line - 1}"
        if 0 < column <= len(self.columns):
            name = self.columns[column - 1]
            text += f", column {name!r} ({self.schema.index(name) + 1})"
        return text


def _check_line_breaks(batch: pa.RecordBatch, converted: Converted, first_row: int) -> None:
    """A line break inside a value would shift the CSV lines off the Parquet rows: refuse it."""
    import pyarrow.compute as pc  # here: its import costs a CSV-only `prepare` command 0.1 s

    for i, column in enumerate(batch.columns):
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            continue
        found = pc.match_substring(column, "\n")
        if pc.any(found).as_py():
            row = first_row + pc.index(found, True).as_py() + 1
            where = converted.where(row + 1, i + 1)
            raise InputError(f"{converted.parquet}: {where}: expected a value without line breaks")


def to_csv(
    paths: list[Path],
    workdir: Path,
    mapping: Mapping[str, Any],
    delimiter: str,
    recbole: bool,
    batch_size: int = 1 << 16,
) -> tuple[list[Path], list[Converted]]:
    """Converts the `.parquet` paths into CSV files in `workdir`, ``batch_size`` rows at a time;
    returns the new input list (other paths unchanged) and the conversions."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    def base(name: str) -> str:  # RecBole headers are `name:type`
        return name.rsplit(":", 1)[0] if recbole else name

    inputs: list[Path] = []
    converted: list[Converted] = []
    named = [mapping[k] for k in COLUMN_OPTIONS if mapping.get(k) is not None]
    for i, path in enumerate(paths):
        if path.suffix.lower() != ".parquet":
            inputs.append(path)
            continue
        parquet = pq.ParquetFile(path)
        schema = parquet.schema_arrow
        present = {base(n) for n in schema.names}
        for name in named:
            if name not in present:
                raise InputError(f"{path}: missing column {name!r} (columns: {', '.join(schema.names)})")
        wanted = set(named) | set(DEFAULT_COLUMNS)
        columns = [n for n in schema.names if base(n) in wanted]
        c = Converted(path, workdir / f"{i:04d}-{path.stem}.csv", columns, list(schema.names))
        options = pacsv.WriteOptions(delimiter=delimiter)
        fields = pa.schema([schema.field(n) for n in columns])
        with pacsv.CSVWriter(c.csv, fields, write_options=options) as writer:
            row = 0
            for batch in parquet.iter_batches(batch_size=batch_size, columns=columns):
                _check_line_breaks(batch, c, row)
                writer.write_batch(batch)
                row += batch.num_rows
        inputs.append(c.csv)
        converted.append(c)
    return inputs, converted


def map_error(err: InputError, converted: list[Converted]) -> InputError:
    """The error with a CSV copy's `path:line:col` turned into the Parquet file, row and column."""
    text = str(err)
    for c in converted:
        prefix = f"{c.csv}:"
        if not text.startswith(prefix):
            continue
        rest = text[len(prefix) :]
        m = _LOCATION.match(rest)
        if m is None:  # a whole-file message
            return InputError(f"{c.parquet}:{rest}")
        return InputError(f"{c.parquet}: {c.where(int(m[1]), int(m[2] or 0))}: {m[3]}")
    return err


def source_files(files: list[str], converted: list[Converted]) -> list[str]:
    """Files read, with each CSV copy replaced by its Parquet file."""
    original = {str(c.csv): str(c.parquet) for c in converted}
    return [original.get(f, f) for f in files]
