"""The implicit-feedback WRMF objective (reference; Hu, Koren & Volinsky, ICDM 2008) of
prefix users, summed over the whole catalogue.

User ``(b, t)`` has the vector ``users[b, t]`` and observes the items ``items[b, j]``,
``j <= t``, where ``observed[b, j]`` (each item once). With ``Y`` the real items' rows of
``item_weight`` (ids ``>= n_reserved``) and ``s_i = u . y_i``, the user's term is

    J_u = sum_i c_i (p_i - s_i)^2 + l2 |u|^2,   p_i = 1, c_i = 1 + alpha on observed items,
                                                  p_i = 0, c_i = 1 elsewhere.

The sum over every item is ``u^T (Y^T Y) u`` (the Gram trick) plus, for each observed item,
``(1 + alpha)(1 - s_i)^2 - s_i^2``: one ``[d, d]`` Gram matrix per batch instead of scores
against the catalogue.
"""

from __future__ import annotations

import torch
from torch import Tensor


def wrmf_loss(
    users: Tensor,
    item_weight: Tensor,
    items: Tensor,
    observed: Tensor,
    active: Tensor,
    *,
    alpha: float,
    l2: float,
    n_reserved: int = 2,
) -> Tensor:
    """The batch's WRMF objective over the number of its users:
    ``(sum over active users of J_u + l2 |Y|^2) / n_active``.

    Args:
        users: ``[B, T, d]`` user vectors; items: ``[B, T]`` ids; observed: ``[B, T]`` bool, the
            plays whose item a user ``t >= j`` observes (one play per distinct item);
            active: ``[B, T]`` bool, the users that count.
    """
    if alpha < 0 or l2 <= 0:
        raise ValueError(f"WRMF needs alpha >= 0 and l2 > 0, got alpha={alpha}, l2={l2}")
    y = item_weight[n_reserved:]
    gram = y.T @ y
    length = items.shape[1]
    scores = torch.einsum("btd,bjd->btj", users, item_weight[items])  # [B, T user, T play]
    upto = torch.ones(length, length, dtype=torch.bool, device=items.device).tril()
    seen = observed[:, None, :] & upto  # user t observes play j <= t
    correction = torch.where(seen, (1 + alpha) * (1 - scores) ** 2 - scores**2, 0.0).sum(dim=2)
    per_user = ((users @ gram) * users).sum(dim=2) + correction + l2 * users.pow(2).sum(dim=2)
    n_active = active.sum().clamp(min=1)
    return (torch.where(active, per_user, 0.0).sum() + l2 * y.pow(2).sum()) / n_active
