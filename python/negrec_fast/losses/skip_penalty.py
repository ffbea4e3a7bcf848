"""The session's skipped plays in the main loss (reference): what the listener skipped goes down.

Each prediction row ``n`` has its session's skipped items as *row negatives* (``[N, M]`` ids,
``0`` = none; an id equal to the row's target is ignored). Two ways to use them:

- ``"negatives"``: they join the softmax denominator as candidates that are always present
  (inclusion probability 1, so no logQ term):
  ``loss_n = log(exp(LSE_n) + sum_m exp(s_nm)) - pos_n``, where ``LSE_n - pos_n`` is the main
  softmax loss of the row and ``pos_n`` its (corrected) positive logit. For the binary losses
  they are extra negatives of the row.
- ``"unlikelihood"``: the not-to-recommend term of Wang et al. (RecSys 2023),
  ``-sum_m log(1 - p_nm)`` with ``p_nm = exp(s_nm - LSE_n)`` the softmax probability of the
  skipped item under the main loss's normaliser, added to the main loss.

A skipped item that is also among the row's sampled or in-batch candidates counts in both.
"""

from __future__ import annotations

import torch
from torch import Tensor

from negrec_fast.losses._rows import gather_rows


def session_skipped_items(items: Tensor, skips: Tensor, pad_index: int = 0) -> Tensor:
    """``[B, L]`` the skipped items of each row (session window), each item once, 0 elsewhere."""
    skipped = torch.where(skips.bool() & (items != pad_index), items, torch.zeros_like(items))
    # drop a repeat of an item already skipped earlier in the row
    earlier = torch.ones(items.shape[1], items.shape[1], dtype=torch.bool, device=items.device).tril(-1)
    repeat = ((skipped[:, :, None] == skipped[:, None, :]) & earlier).any(dim=2)
    return skipped.masked_fill(repeat, 0)


def row_negative_logits(
    query: Tensor, item_weight: Tensor, targets: Tensor, row_negatives: Tensor, groups: int = 1
) -> Tensor:
    """``[N, M]`` logits ``query[n] . item_weight[row_negatives[n, m]]``; ``-inf`` where the id is
    0 or the row's target.

    With ``groups > 1``, ``row_negatives`` is ``[N / groups, M]``: each run of ``groups``
    consecutive rows shares one set (a session's predictions share its skipped items), whose
    embeddings are gathered once and scored with one batched matmul instead of once per row.
    """
    n, d = query.shape
    table = gather_rows(item_weight, row_negatives).float()  # [N / groups, M, d]
    logits = torch.bmm(query.float().reshape(-1, groups, d), table.transpose(1, 2)).reshape(n, -1)
    ids = row_negatives.repeat_interleave(groups, dim=0) if groups > 1 else row_negatives
    unused = (ids == 0) | (ids == targets[:, None])
    return logits.masked_fill(unused, float("-inf"))


def with_skip_negatives(per_row: Tensor, positive: Tensor, skip_logits: Tensor) -> Tensor:
    """Softmax rows with the skip logits added to the denominator (``"negatives"``).

    ``per_row``: ``[N]`` main loss ``LSE_n - pos_n``; ``positive``: ``[N]`` the logit ``pos_n``
    it was computed with; ``skip_logits``: ``[N, M]`` (``-inf`` = unused).
    """
    extra = torch.logsumexp(skip_logits, dim=1) - positive
    return torch.logaddexp(per_row, extra)


def unlikelihood(per_row: Tensor, positive: Tensor, skip_logits: Tensor) -> Tensor:
    """``[N]`` ``-sum_m log(1 - p_nm)`` with ``log p_nm = s_nm - (per_row + positive)``."""
    log_p = skip_logits - (per_row + positive)[:, None]
    # p < 1 always in exact arithmetic; the clamp keeps log1p finite in floating point
    log_p = log_p.clamp(max=-1e-6)
    return -torch.where(torch.isneginf(log_p), 0.0, torch.log1p(-log_p.exp())).sum(dim=1)
