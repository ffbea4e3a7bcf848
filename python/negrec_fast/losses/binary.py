"""Binary cross-entropy losses over sampled negatives (reference): BCE and gSASRec's gBCE.

Row ``n`` scores its target and its negatives with ``s = query[n] . item_weight[id]``:
``loss_n = -beta * log(sigmoid(s+)) - sum_j log(1 - sigmoid(s-_j))``, summed over the
negatives as in the papers' equations (``beta = 1`` for plain BCE). Negatives equal to the
row's target (accidental hits) or to ``ignore_index`` are left out; rows whose target is
``ignore_index`` contribute nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from negrec_fast.losses._reduce import reduce_rows
from negrec_fast.losses._rows import gather_rows


def _binary_loss(
    query: Tensor,
    item_weight: Tensor,
    targets: Tensor,
    negatives: Tensor,
    beta: float,
    ignore_index: int,
    reduction: str,
) -> Tensor:
    valid = targets != ignore_index
    q = query.float()
    positive = (q * gather_rows(item_weight, targets).float()).sum(dim=1)  # [N]
    if negatives.dim() == 1:  # [K] shared by every row
        negative = q @ gather_rows(item_weight, negatives).float().T  # [N, K]
        negatives = negatives.expand(targets.shape[0], -1)
    elif negatives.dim() == 2 and negatives.shape[0] == targets.shape[0]:
        negative = torch.einsum("nd,nkd->nk", q, gather_rows(item_weight, negatives).float())
    else:
        raise ValueError(
            f"negatives must be [K] shared or [N, n] per row with N={targets.shape[0]}, "
            f"got shape {tuple(negatives.shape)}"
        )
    use = (negatives != targets[:, None]) & (negatives != ignore_index)
    # -log(sigmoid(s)) = softplus(-s);  -log(1 - sigmoid(s)) = softplus(s)
    per_row = beta * F.softplus(-positive) + torch.where(use, F.softplus(negative), 0.0).sum(dim=1)
    per_row = torch.where(valid, per_row, per_row.new_zeros(()))
    return reduce_rows(per_row, valid, reduction)


def bce_loss(
    query: Tensor,
    item_weight: Tensor,
    targets: Tensor,
    negatives: Tensor,
    *,
    ignore_index: int = 0,
    reduction: str = "mean",
) -> Tensor:
    """Binary cross-entropy with logits: the target as positive vs each negative.

    Args:
        query: ``[N, d]``; item_weight: ``[V, d]``; targets: ``[N]`` (``ignore_index`` = padding).
        negatives: ``[K]`` ids shared by all rows or ``[N, n]`` ids per row.
        reduction: ``"mean"`` over valid rows, ``"sum"``, or ``"none"`` (``[N]``, 0 on padding).
    """
    return _binary_loss(query, item_weight, targets, negatives, 1.0, ignore_index, reduction)


def gbce_beta(n_negatives: int, n_items: int, t: float) -> float:
    """gSASRec's ``beta = alpha * (t * (1 - 1/alpha) + 1/alpha)``, ``alpha = n_negatives / (n_items - 1)``."""
    if not 1 <= n_negatives <= n_items - 1:
        raise ValueError(
            f"gBCE needs 1 <= n_negatives <= n_items - 1, got n_negatives={n_negatives}, n_items={n_items}"
        )
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"t must be in [0, 1], got {t!r}")
    alpha = n_negatives / (n_items - 1)
    return alpha * (t * (1 - 1 / alpha) + 1 / alpha)


def gbce_loss(
    query: Tensor,
    item_weight: Tensor,
    targets: Tensor,
    negatives: Tensor,
    *,
    n_items: int,
    t: float = 0.75,
    ignore_index: int = 0,
    reduction: str = "mean",
) -> Tensor:
    """Generalised BCE (gSASRec, Petrov & Macdonald, RecSys 2023).

    The positive term becomes ``-log(sigmoid(s+) ** beta)`` (see :func:`gbce_beta`) to undo
    the overconfidence that negative sampling causes; ``n_items`` is the catalogue size
    the negatives are drawn from and ``n_negatives`` the negatives per row (last dim of
    ``negatives``). ``t = 0`` is plain BCE; ``t = 1`` fully calibrates.
    """
    beta = gbce_beta(negatives.shape[-1], n_items, t)
    return _binary_loss(query, item_weight, targets, negatives, beta, ignore_index, reduction)
