"""Type stubs of the Rust extension `negrec_fast._core`."""

from __future__ import annotations

__version__: str

class NegrecError(Exception): ...
class InputError(NegrecError): ...

# --- ingest (rust/src/python/ingest.rs) ---

import numpy as np
from numpy.typing import NDArray

class IngestProgress:
    """Input bytes processed by a running `ingest` call (poll `.bytes` from another thread)."""

    def __init__(self) -> None: ...
    @property
    def bytes(self) -> int: ...

def input_bytes(paths: list[str]) -> int: ...
def ingest(
    paths: list[str],
    format: str,
    *,
    skip_rule: str = "skip_2",
    min_length: int = 6,
    max_length: int | None = 20,
    require_skip: bool = False,
    max_sessions: int | None = None,
    seed: int = 0,
    session_gap: int = 1800,
    split: str = "leave-last-out",
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    durations: str | None = None,
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
    skip_bad_rows: bool = False,
    progress: IngestProgress | None = None,
) -> dict[str, NDArray[np.generic] | int | list[str] | None]:
    """Keys: session_data (uint8) + session_offsets (int64), offsets (int64 [S+1]), items (uint32),
    skips (uint8), timestamps (int64 or None), train_end/valid_target/test_target (int32 [S]),
    vocab_data (uint8) + vocab_offsets (int64), counts (uint64 [V]), rows_read, bad_rows, bytes, files."""

# --- sampling and batching (rust/src/python/batching.rs) ---

# --- synthetic data (rust/src/python/synth.rs) ---
