"""`SessionDataset`: a memory-mapped processed dataset folder with zero-copy numpy views."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from negrec_fast.errors import InputError

FORMAT_VERSION = 1
SESSIONS_FILE = "sessions.arrow"
VOCAB_FILE = "vocab.arrow"
MANIFEST_FILE = "manifest.json"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 18):
            digest.update(block)
    return digest.hexdigest()


def _read_table(path: Path) -> pa.Table:
    try:
        with pa.memory_map(str(path), "r") as source:
            return ipc.open_file(source).read_all()
    except (OSError, pa.ArrowInvalid) as e:
        raise InputError(f"{path}: not a readable Arrow IPC file ({e})") from None


def _column(table: pa.Table, name: str) -> pa.Array:
    """A column as one array: zero-copy for the single record batch `prepare` writes."""
    column = table.column(name)
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


_FLOATS = {"halffloat": np.float16, "float": np.float32, "double": np.float64}


def _numpy(array: pa.Array) -> np.ndarray:
    """Zero-copy, read-only numpy view of a primitive Arrow array (no nulls). Built from the
    data buffer: ``Array.to_numpy`` would also import pandas, if installed (0.1-0.3 s)."""
    if array.null_count or pa.types.is_boolean(array.type):
        return array.to_numpy(zero_copy_only=True)  # raises: not a plain primitive buffer
    dtype = np.dtype(_FLOATS.get(str(array.type), str(array.type)))
    return np.frombuffer(array.buffers()[1], dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize)


class SessionDataset:
    """A processed dataset: sessions in CSR form (`offsets`, `items`, `skips`, ...) over memory maps.

    Session ``s`` holds plays ``items[offsets[s]:offsets[s + 1]]`` with skip flags ``skips[...]``
    (1 = skipped). Arrays are read-only views of the mapped Arrow files, except ``offsets``
    (widened to int64 from Arrow's int32 list offsets).
    """

    def __init__(self, path: Path, sessions: pa.Table, vocab: pa.Table, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self._sessions = sessions
        self._vocab = vocab
        items_col = _column(sessions, "items")
        self.offsets: np.ndarray = _numpy(items_col.offsets).astype(np.int64)
        self.items: np.ndarray = _numpy(items_col.values)
        self.skips: np.ndarray = _numpy(_column(sessions, "skips").values)
        self.timestamps: np.ndarray | None = (
            _numpy(_column(sessions, "timestamps").values) if "timestamps" in sessions.column_names else None
        )
        self.train_end: np.ndarray = _numpy(_column(sessions, "train_end"))
        self.valid_target: np.ndarray = _numpy(_column(sessions, "valid_target"))
        self.test_target: np.ndarray = _numpy(_column(sessions, "test_target"))
        self.item_counts: np.ndarray = _numpy(_column(vocab, "count"))
        self.session_keys: pa.LargeStringArray = _column(sessions, "session")
        self.vocab: pa.LargeStringArray = _column(vocab, "item")
        self._index: dict[str, int] | None = None

    @property
    def n_sessions(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_items(self) -> int:
        """Real items (the two reserved ids excluded)."""
        return len(self.vocab) - 2

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return self.n_sessions

    def __repr__(self) -> str:
        return (
            f"SessionDataset({str(self.path)!r}, sessions={self.n_sessions}, rows={len(self.items)}, "
            f"items={self.n_items}, skip_rate={self.manifest.get('skip_rate', float('nan')):.3f})"
        )

    def session(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        """Items and skip flags of session ``s``."""
        a, b = self.offsets[s], self.offsets[s + 1]
        return self.items[a:b], self.skips[a:b]

    def encode(self, ids: Iterable[str]) -> tuple[np.ndarray, list[str]]:
        """Internal ids (uint32) of the known original ids, in order, and the unknown ones."""
        if self._index is None:
            self._index = {key: i for i, key in enumerate(self.vocab.to_pylist()) if i >= 2}
        known: list[int] = []
        unknown: list[str] = []
        for key in ids:
            i = self._index.get(key)
            if i is None:
                unknown.append(key)
            else:
                known.append(i)
        return np.asarray(known, dtype=np.uint32), unknown

    def decode(self, ids: Sequence[int] | np.ndarray) -> list[str]:
        """Original ids of internal ids (``[PAD]``/``[MASK]`` for 0/1)."""
        idx = np.asarray(ids, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.vocab_size):
            raise ValueError(f"item ids must be in [0, {self.vocab_size}), got {idx.min()}..{idx.max()}")
        return self.vocab.take(pa.array(idx)).to_pylist()

    def verify(self) -> None:
        """Checks the sha256 of the Arrow files against the manifest; raises InputError on mismatch."""
        expected = self.manifest.get("checksum", {})
        for name in (SESSIONS_FILE, VOCAB_FILE):
            actual = file_sha256(self.path / name)
            if expected.get(name) != actual:
                raise InputError(f"{self.path / name}: checksum mismatch (manifest {expected.get(name)}, file {actual})")


def load_dataset(path: str | PathLike[str], *, verify: bool = False) -> SessionDataset:
    """Memory-maps a folder written by `negrec_fast.data.prepare` (checksums checked if `verify`)."""
    folder = Path(path)
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        raise InputError(f"{manifest_path}: not found; is {folder} a dataset folder written by prepare?")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{manifest_path}:{e.lineno}:{e.colno}: invalid JSON ({e.msg})") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise InputError(f"{manifest_path}: format_version {version!r} is not supported (expected {FORMAT_VERSION})")
    dataset = SessionDataset(folder, _read_table(folder / SESSIONS_FILE), _read_table(folder / VOCAB_FILE), manifest)
    if verify:
        dataset.verify()
    return dataset
