"""Sampled softmax over the batch's targets plus K shared sampled negatives (reference).

Row ``n`` scores its query against every target in the batch (in-batch negatives) and the
K shared negatives; its own target is the positive. Masked out of row ``n``:
padding candidates, other rows whose target equals row ``n``'s target (accidental hits,
in-batch), and sampled negatives equal to row ``n``'s target. With logQ correction the log
sampling probability of each candidate is subtracted from its (temperature-scaled) logit.
Rows whose target is ``ignore_index`` contribute nothing.

The Triton kernel in ``negrec_fast.kernels.sampled_softmax`` must match this function.
"""

from __future__ import annotations

import torch
from torch import Tensor

from negrec_fast.losses._reduce import reduce_rows
from negrec_fast.losses._rows import gather_rows


def sampled_softmax_loss(
    query: Tensor,
    item_weight: Tensor,
    targets: Tensor,
    negatives: Tensor,
    *,
    neg_logq: Tensor | None = None,
    target_logq: Tensor | None = None,
    temperature: float = 1.0,
    ignore_index: int = 0,
    reduction: str = "mean",
) -> Tensor:
    """Sampled softmax cross-entropy.

    Args:
        query: ``[N, d]`` output-space query per prediction.
        item_weight: ``[V, d]`` item embedding table (tied output layer).
        targets: ``[N]`` int64 target ids; ``ignore_index`` marks padding rows.
        negatives: ``[K]`` int64 sampled negative ids shared by all rows.
        neg_logq: ``[K]`` log sampling probability of each negative (logQ correction).
        target_logq: ``[N]`` log probability of each target as an in-batch candidate.
        temperature: logits are divided by it before the correction.
        reduction: ``"mean"`` over valid rows, ``"sum"``, or ``"none"`` (``[N]``, 0 on padding).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = targets.shape[0]
    valid = targets != ignore_index
    candidates = torch.cat([targets, negatives])
    logits = (query.float() @ gather_rows(item_weight, candidates).float().T) / temperature  # [N, N+K]
    if target_logq is not None:
        logits[:, :n] = logits[:, :n] - target_logq.float()[None, :]
    if neg_logq is not None:
        logits[:, n:] = logits[:, n:] - neg_logq.float()[None, :]

    eye = torch.eye(n, dtype=torch.bool, device=query.device)
    same_item = targets[:, None] == candidates[None, :]  # [N, N+K]
    same_item[:, :n] &= ~eye  # the diagonal is the positive, not a hit
    masked = same_item
    # Padding candidates; the diagonal stays unmasked so that padding rows stay finite
    # (they are zeroed below) and no row is ever all -inf.
    masked[:, :n] |= ~valid[None, :] & ~eye
    logits = logits.masked_fill(masked, float("-inf"))

    positive = logits.diagonal()[:n] if n else logits.new_zeros(0)
    per_row = torch.logsumexp(logits, dim=1) - positive
    per_row = torch.where(valid, per_row, per_row.new_zeros(()))
    return reduce_rows(per_row, valid, reduction)
