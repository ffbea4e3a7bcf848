"""SINE's multi-task loss (Pan et al., RecSys 2023), reference: BPR against a random
negative, a pairwise loss of each kept target against the plays skipped just before it, and
a distance-correlation penalty that keeps the sub-interest embeddings apart.

SINE reads a session's *kept* plays only. :func:`kept_plays` moves them to the right of each
row (most recent last, left-padded); the model reads ``kept[:, :-1]`` and predicts
``kept[:, 1:]``. A skipped play belongs to the prediction of the first kept play after it
when a kept play precedes it (:func:`passed_over`): the tracks skipped between two kept plays
are the ones the second was chosen over. With user vector ``u`` (the fused sub-interests)
and item embeddings ``v``, ``s(i) = u . v_i`` and

- ``bpr = mean over targets t of -log sigmoid(s(t) - s(n_t))``, ``n_t`` a random negative;
- ``passive = mean over (t, k) pairs of -log sigmoid(s(t) - s(k))``, ``k`` a play skipped
  between the previous kept play and ``t`` (pairs whose skipped item is ``t``'s are left out);
- ``dcor = sum over pairs i < j of dCor(e_i, e_j)``, the sample distance correlation of two
  interest embeddings, their ``d`` coordinates taken as ``d`` paired observations.

A mean over nothing is 0, still attached to the graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from negrec_fast.losses._reduce import reduce_rows
from negrec_fast.losses._rows import gather_rows


def kept_plays(items: Tensor, skips: Tensor | None, pad_index: int = 0) -> Tensor:
    """``[B, L]`` each row's kept (real, not skipped) plays in play order, right-aligned and
    left-padded with ``pad_index``; ``skips`` None keeps every real play."""
    keep = items != pad_index
    if skips is not None:
        keep = keep & ~skips.bool()
    order = torch.sort(keep.to(torch.uint8), dim=1, stable=True).indices  # dropped plays first
    return torch.where(keep.gather(1, order), items.gather(1, order), torch.full_like(items, pad_index))


def passed_over(items: Tensor, skips: Tensor, pad_index: int = 0) -> tuple[Tensor, Tensor]:
    """``(skipped, cols)``, both ``[B, L]``: the item of each skipped play with a kept play before
    and after it (``pad_index`` elsewhere), and the column of the prediction it belongs to in
    ``kept_plays(items, skips)[:, 1:]`` (that of the first kept play after it; 0 elsewhere)."""
    real = items != pad_index
    keep = real & ~skips.bool()
    before = keep.long().cumsum(dim=1)  # kept plays at or before each position
    n_kept = before[:, -1:]
    usable = real & skips.bool() & (before >= 1) & (before < n_kept)
    # kept play number `before` (0-based) sits in column L - n_kept + before of kept_plays
    cols = torch.where(usable, items.shape[1] - n_kept + before - 1, 0)
    return torch.where(usable, items, pad_index), cols


def sine_rank_loss(
    user: Tensor,
    item_weight: Tensor,
    targets: Tensor,
    negatives: Tensor,
    skipped: Tensor,
    skip_cols: Tensor,
    *,
    pad_index: int = 0,
) -> tuple[Tensor, Tensor]:
    """``(bpr, passive)`` means (module docstring).

    Args:
        user: ``[B, T, d]`` user vector of each prediction.
        item_weight: ``[V, d]`` item embeddings.
        targets: ``[B, T]`` kept target of each prediction (``pad_index`` = none).
        negatives: ``[B, T]`` random negative of each prediction.
        skipped, skip_cols: ``[B, M]`` skipped items (``pad_index`` = none) and the column of
            the prediction of the same row each belongs to (:func:`passed_over`).
    """
    dtype = torch.promote_types(user.dtype, torch.float32)  # bf16 autocast outputs: sum in float32
    user = user.to(dtype)
    valid = targets != pad_index
    positive = (user * gather_rows(item_weight, targets).to(dtype)).sum(-1)
    negative = (user * gather_rows(item_weight, negatives).to(dtype)).sum(-1)
    bpr = reduce_rows(F.softplus(negative - positive) * valid, valid, "mean")
    pair_targets = targets.gather(1, skip_cols)
    used = (skipped != pad_index) & (pair_targets != pad_index) & (skipped != pair_targets)
    pair_user = user.gather(1, skip_cols[..., None].expand(-1, -1, user.shape[-1]))
    pair_scores = (pair_user * gather_rows(item_weight, skipped).to(dtype)).sum(-1)
    per_pair = F.softplus(pair_scores - positive.gather(1, skip_cols)) * used
    return bpr, reduce_rows(per_pair, used, "mean")


def _sqrt_or_zero(x: Tensor) -> Tensor:
    """``sqrt(x)`` for ``x > 0``, else 0, with a finite gradient (0) at and below 0."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, 1.0).sqrt(), 0.0)


def distance_correlation(x: Tensor, y: Tensor) -> Tensor:
    """Sample distance correlation (Székely et al. 2007) of paired scalar observations
    ``x[n]``, ``y[n]``: ``dCov(x, y) / sqrt(dCov(x, x) dCov(y, y))`` from double-centred
    distance matrices (V-statistics); 0 when either sample is constant."""
    if x.dim() != 1 or x.shape != y.shape:
        raise ValueError(f"x and y must be [n] tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")

    def centred(v: Tensor) -> Tensor:
        a = (v[:, None] - v[None, :]).abs()
        return a - a.mean(dim=0, keepdim=True) - a.mean(dim=1, keepdim=True) + a.mean()

    a, b = centred(x), centred(y)
    dcov2_xy, dcov2_xx, dcov2_yy = (a * b).mean(), (a * a).mean(), (b * b).mean()
    denominator = _sqrt_or_zero(dcov2_xx * dcov2_yy)
    ratio = dcov2_xy / torch.where(denominator > 0, denominator, 1.0)
    return _sqrt_or_zero(torch.where(denominator > 0, ratio, 0.0))


def interest_dcor(interests: Tensor) -> Tensor:
    """``sum over i < j of dCor(interests[i], interests[j])`` for ``[K, d]`` interest embeddings."""
    total = interests.new_zeros(())
    for i in range(interests.shape[0]):
        for j in range(i + 1, interests.shape[0]):
            total = total + distance_correlation(interests[i], interests[j])
    return total
