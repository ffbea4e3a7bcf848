"""Type stubs of the Rust extension `negrec_fast._core`."""

from __future__ import annotations

__version__: str

class NegrecError(Exception): ...
class InputError(NegrecError): ...

# --- ingest (rust/src/python/ingest.rs) ---

from typing import Any

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
    min_remainder: int = 5,
    require_skip: bool = False,
    max_sessions: int | None = None,
    seed: int = 0,
    session_gap: int | None = 1800,
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
    memory_limit: int | None = None,
    work_dir: str | None = None,
) -> dict[str, Any]:
    """Keys: session_data (uint8) + session_offsets (int64), offsets (int64 [S+1]), items (uint32),
    skips (uint8), timestamps (int64 or None), train_end/valid_target/test_target (int32 [S]),
    vocab_data (uint8) + vocab_offsets (int64), counts (uint64 [V]), rows_read, bad_rows, bytes, files.

    With ``memory_limit`` (bytes, >= 1 MiB; spill files go to ``work_dir``) the ingest runs in
    bounded memory and the row and session columns come back as files instead: ``columns`` maps
    session_data, session_offsets (int64 [S+1]), offsets (int32 [S+1]), items, skips,
    timestamps (when the source has times), train_end, valid_target, test_target to files of
    little-endian values in ``work_dir``; with n_rows, n_sessions, n_skipped, n_valid, n_test,
    partitions, spilled_bytes and the vocab_data, vocab_offsets, counts, rows_read, bad_rows,
    bytes, files above."""

# --- sampling and batching (rust/src/python/batching.rs) ---


class NegativeSampler:
    def __init__(
        self,
        vocab_size: int,
        *,
        distribution: str = "uniform",
        alpha: float = 1.0,
        item_counts: NDArray[np.uint64] | None = None,
        seed: int = 0,
    ) -> None: ...
    @property
    def vocab_size(self) -> int: ...
    def sample(
        self, exclude: NDArray[np.int64], k: int, *, epoch: int = 0, rank: int = 0, batch_index: int = 0
    ) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """(ids, log_pi): k distinct ids outside `exclude` and their log inclusion probabilities."""
    def log_prob(self, ids: NDArray[np.int64]) -> NDArray[np.float32]: ...

class BatchLoader:
    def __init__(
        self,
        offsets: NDArray[np.int64],
        items: NDArray[np.uint32],
        skips: NDArray[np.uint8],
        train_end: NDArray[np.int32],
        *,
        vocab_size: int,
        batch_size: int = 256,
        seq_len: int = 51,
        n_negatives: int = 1000,
        distribution: str = "uniform",
        alpha: float = 1.0,
        item_counts: NDArray[np.uint64] | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        drop_last: bool = False,
        prefetch: int = 4,
        windows: str = "all",
        exclude: str = "all",
    ) -> None: ...
    def __len__(self) -> int: ...
    @property
    def n_examples(self) -> int: ...
    @property
    def train_item_counts(self) -> NDArray[np.uint64]:
        """Read-only plays of each id before train_end; popularity uses them unless item_counts is given."""
    def shard(self, epoch: int) -> tuple[NDArray[np.uint32], NDArray[np.uint32]]:
        """This rank's examples in batch order: (session indices, window ends)."""
    def epoch(self, epoch: int, start_batch: int = 0) -> EpochIterator: ...

class EpochIterator:
    """Yields (items int64[B,L], skips bool[B,L], negatives int64[K], neg_logq float32[K], sessions int64[B]);
    all batches of the epoch, or ValueError (a batch cannot be built) / RuntimeError (the thread failed)."""

    def __iter__(self) -> EpochIterator: ...
    def __next__(
        self,
    ) -> tuple[
        NDArray[np.int64],
        NDArray[np.bool_],
        NDArray[np.int64],
        NDArray[np.float32],
        NDArray[np.int64],
    ]: ...
    def __len__(self) -> int: ...
    def close(self) -> None: ...

# --- synthetic data (rust/src/python/synth.rs) ---

def generate_mssd(
    path: str,
    *,
    n_sessions: int,
    n_items: int,
    n_tastes: int,
    on_taste_prob: float,
    skip_prob_on: float,
    skip_prob_off: float,
    min_length: int,
    max_length: int,
    zipf_exponent: float,
    seed: int,
    chart_exponent: float = 0.0,
    chart_keep_share: float = 0.0,
    dislike_share: float = 0.0,
    n_threads: int = 0,
) -> int: ...
def synth_track_ids(n_items: int) -> list[str]: ...
