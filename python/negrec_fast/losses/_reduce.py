"""Shared reduction over rows that carry a loss."""

from __future__ import annotations

from torch import Tensor


def reduce_rows(per_row: Tensor, valid: Tensor, reduction: str) -> Tensor:
    """Reduce ``per_row`` (zero where ``valid`` is False): mean over valid rows, sum, or none.

    The mean of zero valid rows is 0 (still attached to the graph), not NaN.
    """
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return per_row.sum()
    if reduction == "mean":
        return per_row.sum() / valid.sum().clamp(min=1)
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
