"""Skip-informed InfoNCE (reference): pull an anchor towards the next kept track of its
session and push it away from the tracks that session skipped.

For session ``b`` and position ``i``:

- The *positive* of a kept play ``i`` (not padding, not skipped) is the first kept play
  ``j > i`` of the same session; there is no fallback to position 0 when none exists.
- Its *negatives* are the skipped plays of the **same** session ``b`` (never another
  session's), except those whose item equals the positive's item (an accidental hit).
  Padding is in neither numerator nor denominator.
- ``i`` is an *anchor* when it has a positive and at least one negative. Other positions
  contribute nothing (loss 0, no gradient).
- ``s(u, v) = cos(u, v) / temperature`` and
  ``loss_i = -log(exp(s(a_i, c_j)) / (exp(s(a_i, c_j)) + sum_neg exp(s(a_i, c_neg))))``
  with ``a = anchors`` and ``c = candidates`` (defaults to the anchors' tensor, e.g. item
  embeddings or encoder outputs).

``reduction="mean"`` divides the sum of the anchors' losses by a count set by ``normalize``:

- ``"kept"`` (default): the kept plays that have a later kept play, whether or not their
  session skipped anything. A kept play without a usable negative enters the mean with loss
  0, as in the papers' loss, so ``lambda`` weighs the term the same whatever share of a
  batch's sessions has skips.
- ``"anchors"``: the anchors only (a positive and >= 1 negative); the term's scale then
  grows as skips get rarer in a batch.

The Triton kernel in ``negrec_fast.kernels.skip_infonce`` must match this function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from negrec_fast.losses._reduce import reduce_rows


NORMALIZE = ("kept", "anchors")


def check_normalize(normalize: str) -> None:
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be 'kept' or 'anchors', got {normalize!r}")


def next_kept_index(kept: Tensor) -> Tensor:
    """``[B, L]`` index of the first kept position strictly after each position, or -1."""
    b, length = kept.shape
    positions = torch.arange(length, device=kept.device).expand(b, length)
    sentinel = torch.full_like(positions, length)
    idx = torch.where(kept, positions, sentinel)
    # suffix minimum over positions > i: shift left by one, then reverse cumulative min
    shifted = torch.cat([idx[:, 1:], sentinel[:, :1]], dim=1)
    suffix_min = shifted.flip(1).cummin(dim=1).values.flip(1)
    return torch.where(suffix_min < length, suffix_min, torch.full_like(suffix_min, -1))


def skip_infonce_loss(
    anchors: Tensor,
    items: Tensor,
    skips: Tensor,
    *,
    candidates: Tensor | None = None,
    temperature: float = 0.1,
    pad_index: int = 0,
    reduction: str = "mean",
    normalize: str = "kept",
) -> Tensor:
    """Skip-informed InfoNCE over ``[B, L]`` sessions.

    Args:
        anchors: ``[B, L, d]`` context at each position.
        items: ``[B, L]`` item ids (``pad_index`` = padding).
        skips: ``[B, L]`` bool, True where the play was skipped.
        candidates: ``[B, L, d]`` vectors of positives/negatives; defaults to ``anchors``.
        temperature: cosine similarities are divided by it.
        reduction: ``"mean"``, ``"sum"``, or ``"none"`` (``[B, L]``, 0 off anchors).
        normalize: the mean's denominator: ``"kept"`` plays with a later kept play, or ``"anchors"``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    check_normalize(normalize)
    if candidates is None:
        candidates = anchors
    real = items != pad_index
    skipped = real & skips.bool()
    kept = real & ~skips.bool()
    nxt = next_kept_index(kept)

    a = F.normalize(anchors.float(), dim=-1, eps=1e-8)
    c = F.normalize(candidates.float(), dim=-1, eps=1e-8)
    sim = torch.einsum("bid,bjd->bij", a, c) / temperature  # [B, L, L]

    pos_idx = nxt.clamp(min=0)
    pos_logit = sim.gather(2, pos_idx.unsqueeze(-1)).squeeze(-1)  # [B, L]
    pos_item = items.gather(1, pos_idx)  # [B, L]
    neg_mask = skipped[:, None, :] & (items[:, None, :] != pos_item[:, :, None])  # [B, L, L]
    is_anchor = kept & (nxt >= 0) & neg_mask.any(dim=-1)  # [B, L]
    neg_logits = sim.masked_fill(~neg_mask, float("-inf"))
    logits = torch.cat([pos_logit.unsqueeze(-1), neg_logits], dim=-1)  # [B, L, 1+L]
    per_pos = torch.logsumexp(logits, dim=-1) - pos_logit
    per_pos = torch.where(is_anchor, per_pos, per_pos.new_zeros(()))
    if reduction == "none":
        return per_pos
    counted = kept & (nxt >= 0) if normalize == "kept" else is_anchor
    return reduce_rows(per_pos.flatten(), counted.flatten(), reduction)
