"""Training batches and negative sampling, backed by the Rust extension.

`BatchLoader` yields `Batch`es of torch tensors that share memory with buffers built by a
background Rust thread (prefetching ahead of the training loop); `NegativeSampler` draws
the same negatives on its own. Draws are keyed by ``(seed, epoch, rank, batch_index)``,
so they do not depend on threads, prefetch depth or where an epoch is resumed.
Each epoch iterator owns one background thread (no thread pool), which stops when the
iterator is exhausted, closed or dropped; nothing runs between epochs, so forking
(e.g. DataLoader workers) is safe.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from negrec_fast import _core

__all__ = ["Batch", "BatchLoader", "NegativeSampler"]


@dataclass(frozen=True)
class Batch:
    """One training batch (B rows; the last batch of an epoch may have fewer)."""

    items: torch.Tensor  # int64 [B, seq_len], left-padded with 0
    skips: torch.Tensor  # bool [B, seq_len], True = skipped
    negatives: torch.Tensor  # int64 [K], distinct, not reserved, not among the excluded `items`
    neg_logq: torch.Tensor  # float32 [K], log inclusion probability (chance to be among the K)
    sessions: torch.Tensor  # int64 [B], session index of each row

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The same batch on `device`."""
        return Batch(
            *(
                t.to(device, non_blocking=non_blocking)
                for t in (self.items, self.skips, self.negatives, self.neg_logq, self.sessions)
            )
        )


def _array(values: Any, dtype: type[np.generic], name: str) -> np.ndarray:
    """`values` as a contiguous array of `dtype`, refusing values that would not fit."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.dtype != dtype:
        if array.size and not (
            np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.bool_)
        ):
            raise ValueError(f"{name} must hold integers, got dtype {array.dtype}")
        info = np.iinfo(dtype)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise ValueError(
                f"{name} has values in [{array.min()}, {array.max()}], "
                f"outside the range of {np.dtype(dtype).name}"
            )
        array = array.astype(dtype)
    return np.ascontiguousarray(array)


def _counts(item_counts: Any) -> np.ndarray | None:
    return None if item_counts is None else _array(item_counts, np.uint64, "item_counts")


class NegativeSampler:
    """K distinct negatives per batch, uniform or ∝ count^alpha, with their log inclusion
    probabilities.

    The K ids are drawn without replacement from q restricted to the ids not excluded; the
    inclusion probability pi_c of id c is its chance to be among them: exactly
    K / n_allowed for uniform, the successive-sampling (Poisson) approximation
    ``1 - exp(-lambda q'_c)`` for popularity (q' = q renormalised over the allowed ids,
    lambda such that the pi sum to K). Ids below 2 (padding, mask) are never drawn;
    ``vocab_size`` counts them.
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        distribution: str = "uniform",
        alpha: float = 1.0,
        item_counts: Any = None,
        seed: int = 0,
    ) -> None:
        self._core = _core.NegativeSampler(
            vocab_size,
            distribution=distribution,
            alpha=alpha,
            item_counts=_counts(item_counts),
            seed=seed,
        )

    @property
    def vocab_size(self) -> int:
        return self._core.vocab_size

    def sample(
        self, exclude: Any, k: int = 1000, *, epoch: int = 0, rank: int = 0, batch_index: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids int64 [k], log_pi float32 [k]), none of them in `exclude` (ids < 2 there are
        ignored); log_pi is each id's log inclusion probability given `exclude`.

        Equal to the negatives `BatchLoader` draws for the same seed, epoch, rank and batch
        when `exclude` is that batch's excluded items (all of them, or ``items[~skips]``
        under ``exclude="kept"``).
        """
        ids, logq = self._core.sample(
            _array(exclude, np.int64, "exclude"), k, epoch=epoch, rank=rank, batch_index=batch_index
        )
        return torch.from_numpy(ids), torch.from_numpy(logq)

    def log_prob(self, ids: Any) -> torch.Tensor:
        """log q of each id, same shape (-inf for reserved and never-drawn ids)."""
        array = _array(ids, np.int64, "ids")
        return torch.from_numpy(self._core.log_prob(array).reshape(array.shape))


class BatchLoader:
    """Epochs of training batches from a session dataset, prefetched by a Rust thread.

    `data` is any object with ``offsets``, ``items``, ``skips``, ``train_end`` and
    ``vocab_size``, such as `negrec_fast.data.SessionDataset`; or pass those arrays as
    keywords. An example is a window of `seq_len` training plays of a session with
    ``train_end >= 2``, left-padded. ``windows="all"`` tiles each session's training plays
    ``[0, train_end)`` into windows ending at ``train_end``, ``train_end - (seq_len - 1)``,
    ... (while the end is >= 2), so that with targets ``items[:, 1:]`` every training play
    but a session's first is a target once per epoch; ``windows="last"`` keeps the last
    window only. Windows of all sessions are shuffled together. ``exclude="all"`` draws
    the negatives apart from every item of the batch, ``exclude="kept"`` only from its
    non-skipped ones (skipped items can then be negatives). With ``world_size > 1``, each
    rank gets every ``world_size``-th example of the shared epoch order; under
    ``drop_last`` every rank gets the same number of full batches.

    The popularity distribution uses `train_item_counts` (plays before ``train_end``, so
    held-out targets do not shape the negatives) unless `item_counts` is given.
    Limits, checked here: ``seq_len >= 2``, ``batch_size * seq_len <= 2**26``,
    ``1 <= prefetch <= 64``, `n_negatives` at most the drawable items. An epoch either
    yields all its batches or raises from ``next()`` (ValueError when a batch cannot be
    built, e.g. too few items outside it for `n_negatives`; RuntimeError if the
    background thread fails), naming epoch and batch.
    """

    def __init__(
        self,
        data: Any = None,
        *,
        offsets: Any = None,
        items: Any = None,
        skips: Any = None,
        train_end: Any = None,
        vocab_size: int | None = None,
        item_counts: Any = None,
        batch_size: int = 256,
        seq_len: int = 51,
        n_negatives: int = 1000,
        distribution: str = "uniform",
        alpha: float = 1.0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        drop_last: bool = False,
        prefetch: int = 4,
        windows: str = "all",
        exclude: str = "all",
    ) -> None:
        arrays = {"offsets": offsets, "items": items, "skips": skips, "train_end": train_end}
        if data is not None:
            for name in arrays:
                if arrays[name] is None:
                    arrays[name] = getattr(data, name)
            vocab_size = data.vocab_size if vocab_size is None else vocab_size
        missing = [name for name, value in arrays.items() if value is None]
        if missing or vocab_size is None:
            raise ValueError(
                "BatchLoader needs a dataset or the arrays offsets, items, skips, train_end "
                f"and vocab_size; missing: {', '.join(missing + ['vocab_size'] * (vocab_size is None))}"
            )
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.n_negatives = n_negatives
        self._core = _core.BatchLoader(
            _array(arrays["offsets"], np.int64, "offsets"),
            _array(arrays["items"], np.uint32, "items"),
            _array(arrays["skips"], np.uint8, "skips"),
            _array(arrays["train_end"], np.int32, "train_end"),
            vocab_size=vocab_size,
            batch_size=batch_size,
            seq_len=seq_len,
            n_negatives=n_negatives,
            distribution=distribution,
            alpha=alpha,
            item_counts=_counts(item_counts),
            seed=seed,
            rank=rank,
            world_size=world_size,
            shuffle=shuffle,
            drop_last=drop_last,
            prefetch=prefetch,
            windows=windows,
            exclude=exclude,
        )

    def __len__(self) -> int:
        """Batches per epoch for this rank."""
        return len(self._core)

    @property
    def n_examples(self) -> int:
        """Training examples (windows) over all ranks."""
        return self._core.n_examples

    @property
    def train_item_counts(self) -> np.ndarray:
        """Plays of each id before ``train_end`` (skipped ones included), read-only uint64
        [vocab_size], reserved ids 0: the training popularity, e.g. for the logQ
        correction of in-batch candidates."""
        return self._core.train_item_counts

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        """The batches of `epoch` from `start_batch` on (resuming gives the same batches)."""
        return _Epoch(self._core.epoch(epoch, start_batch))


class _Epoch:
    """Iterator of `Batch`; breaking out of a loop early stops the Rust thread."""

    def __init__(self, core: Any) -> None:
        self._core = core

    def __iter__(self) -> _Epoch:
        return self

    def __next__(self) -> Batch:
        items, skips, negatives, neg_logq, sessions = next(self._core)
        return Batch(
            torch.from_numpy(items),
            torch.from_numpy(skips),
            torch.from_numpy(negatives),
            torch.from_numpy(neg_logq),
            torch.from_numpy(sessions),
        )

    def __len__(self) -> int:
        """Batches left."""
        return len(self._core)

    def close(self) -> None:
        """Stops the background thread now (also done when the iterator is dropped)."""
        self._core.close()
