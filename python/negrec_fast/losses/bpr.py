"""Bayesian personalised ranking over sampled negatives (reference; Rendle et al., UAI 2009).

Row ``n`` scores its target and its negatives with ``s = query[n] . item_weight[id]``:
``loss_n = sum_j w_j * -log(sigmoid(s+ - s_j)) / sum_j w_j``, the weighted mean over the
row's negatives ``j``: the K shared ``negatives`` (weight 1) and the row's own
``row_negatives`` (weight ``row_weight``; e.g. the items its session skipped). The mean is
the expectation of BPR's one-negative-per-step term under the sampling, so the scale does
not grow with K. Negatives equal to the row's target or to ``ignore_index`` are left out (a
row left without any has loss 0); rows whose target is ``ignore_index`` contribute nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from negrec_fast.losses._reduce import reduce_rows
from negrec_fast.losses._rows import gather_rows
from negrec_fast.losses.skip_penalty import row_negative_logits


def bpr_loss(
    query: Tensor,
    item_weight: Tensor,
    targets: Tensor,
    negatives: Tensor,
    *,
    row_negatives: Tensor | None = None,
    row_weight: float = 1.0,
    ignore_index: int = 0,
    reduction: str = "mean",
) -> Tensor:
    """BPR loss, the weighted mean of ``softplus(s_j - s+)`` over each row's negatives.

    Args:
        query: ``[N, d]``; item_weight: ``[V, d]``; targets: ``[N]`` (``ignore_index`` = padding).
        negatives: ``[K]`` ids shared by all rows.
        row_negatives: ``[N, M]`` extra ids per row (0 = none), each weighing ``row_weight``.
        reduction: ``"mean"`` over valid rows, ``"sum"``, or ``"none"`` (``[N]``, 0 on padding).
    """
    if negatives.dim() != 1:
        raise ValueError(f"negatives must be [K] ids shared by every row, got shape {tuple(negatives.shape)}")
    if row_weight <= 0:
        raise ValueError(f"row_weight must be > 0, got {row_weight}")
    valid = targets != ignore_index
    q = query.float()
    positive = (q * gather_rows(item_weight, targets).float()).sum(dim=1)  # [N]
    use = (negatives[None, :] != targets[:, None]) & (negatives[None, :] != ignore_index)  # [N, K]
    # -log(sigmoid(s+ - s-)) = softplus(s- - s+)
    terms = F.softplus(q @ gather_rows(item_weight, negatives).float().T - positive[:, None])
    total = torch.where(use, terms, 0.0).sum(dim=1)
    count = use.sum(dim=1).float()
    if row_negatives is not None:
        row_scores = row_negative_logits(q, item_weight, targets, row_negatives)  # -inf: id 0 or the target
        row_use = ~torch.isneginf(row_scores)
        total = total + row_weight * torch.where(row_use, F.softplus(row_scores - positive[:, None]), 0.0).sum(dim=1)
        count = count + row_weight * row_use.sum(dim=1)
    per_row = torch.where(valid & (count > 0), total / count.clamp(min=1e-12), 0.0)
    return reduce_rows(per_row, valid, reduction)
