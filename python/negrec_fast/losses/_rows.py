"""Reading rows of the item table, with sparse row gradients when the table asks for them.

``train.optimizer = "sparse_adam"`` (:mod:`negrec_fast.optim`) marks the item table with
:func:`mark_sparse_rows`. Every loss reads the table's rows through :func:`gather_rows`: for a
marked table that is ``F.embedding(ids, table, sparse=True)``, whose gradient is a sparse COO
tensor over the ids read, so a step costs nothing per catalogue row; for any other table it is
``table[ids]`` (values and gradients as before). A loss that reads the *whole* table (full
softmax, WRMF) would give a dense gradient: the config refuses it with the sparse optimizer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_MARK = "_negrec_sparse_rows"


def mark_sparse_rows(table: Tensor, on: bool = True) -> None:
    """Make :func:`gather_rows` on ``table`` (this tensor object) give sparse row gradients."""
    setattr(table, _MARK, bool(on))


def has_sparse_rows(table: Tensor) -> bool:
    """Whether ``table`` was marked by :func:`mark_sparse_rows` (and the mark is on)."""
    return bool(getattr(table, _MARK, False))


def gather_rows(table: Tensor, ids: Tensor) -> Tensor:
    """``table[ids]`` (``ids`` integer, any shape -> ``[*ids.shape, d]``); the gradient is
    sparse when ``table`` is marked and autograd records the read."""
    if has_sparse_rows(table) and table.requires_grad and torch.is_grad_enabled():
        return F.embedding(ids, table, sparse=True)
    return table[ids]
