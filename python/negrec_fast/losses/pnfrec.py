"""PNFRec's extra loss terms (Ivanova, Frolov & Vasilev, RecSys 2025), reference in plain torch;
:mod:`negrec_fast.models.pnfrec` has the model and what was taken from the paper and its code.

- The negative CE's targets (:func:`next_skipped`): the negative encoder's state at a skipped
  play predicts the next skipped play of the window.
- The contrastive term (:func:`pnfrec_contrastive`): with query ``q`` of a prediction whose
  target ``t`` is kept and ``e`` the item embeddings,
  ``loss = log(exp(q.e_t) + sum_k exp(q.e_k)) - q.e_t`` where ``k`` runs over the session
  window's skipped plays, before and after the prediction (as theirs, all the user's negative
  plays: a training signal, never an input of the query; one term per play; a play of the
  target's own item is left out, theirs keeps it); raw dot products. The mean runs over all kept targets: a prediction
  without a skipped play in its window adds 0 (as theirs, the mean over positive plays).
"""

from __future__ import annotations

import torch
from torch import Tensor

from negrec_fast.losses._reduce import reduce_rows
from negrec_fast.losses._rows import gather_rows


def next_skipped(items: Tensor, skips: Tensor, pad_index: int = 0) -> Tensor:
    """``[B, L]`` at each skipped play the item of the next skipped play of its row
    (``pad_index`` where there is none, and at every other column)."""
    length = items.shape[1]
    skipped = skips.bool() & (items != pad_index)
    columns = torch.arange(length, device=items.device).expand_as(items)
    at = torch.where(skipped, columns, length)
    first_from = at.flip(1).cummin(dim=1).values.flip(1)  # first skipped column >= i
    after = torch.cat([first_from[:, 1:], torch.full_like(first_from[:, :1], length)], dim=1)  # > i
    found = skipped & (after < length)
    return torch.where(found, items.gather(1, after.clamp(max=length - 1)), pad_index)


def pnfrec_contrastive(
    query: Tensor, item_weight: Tensor, targets: Tensor, skipped: Tensor, *, pad_index: int = 0,
    reduction: str = "mean",
) -> Tensor:
    """The contrastive term (module docstring).

    Args:
        query: ``[B, T, d]`` query of each prediction.
        item_weight: ``[V, d]`` item embeddings.
        targets: ``[B, T]`` kept target of each prediction (``pad_index`` = none).
        skipped: ``[B, M]`` the items of the row's skipped plays (``pad_index`` = none).
        reduction: ``"mean"`` over the predictions with a target, ``"sum"`` or ``"none"`` (``[B, T]``).
    """
    dtype = torch.promote_types(query.dtype, torch.float32)  # bf16 autocast outputs: sum in float32
    query = query.to(dtype)
    valid = targets != pad_index
    positive = (query * gather_rows(item_weight, targets).to(dtype)).sum(-1)  # [B, T]
    negative = torch.einsum("btd,bmd->btm", query, gather_rows(item_weight, skipped).to(dtype))
    unused = (skipped[:, None, :] == pad_index) | (skipped[:, None, :] == targets[..., None])
    # the positive logit is always a candidate: no row is all -inf (no NaN gradient)
    logits = torch.cat([positive[..., None], negative.masked_fill(unused, float("-inf"))], dim=-1)
    per_row = (torch.logsumexp(logits, dim=-1) - positive) * valid
    return reduce_rows(per_row, valid, reduction)
