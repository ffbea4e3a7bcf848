"""Full-catalogue softmax cross-entropy (reference): every item is a candidate.

Reserved ids (padding, mask: ``id < n_reserved``) are never candidates. The fused Triton
linear + cross-entropy in ``negrec_fast.kernels.linear_cross_entropy`` must match this.
"""

from __future__ import annotations

import torch
from torch import Tensor

from negrec_fast.losses._reduce import reduce_rows


def full_softmax_loss(
    query: Tensor,
    item_weight: Tensor,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    ignore_index: int = 0,
    n_reserved: int = 2,
    reduction: str = "mean",
) -> Tensor:
    """Cross-entropy of ``query[N, d] @ item_weight[V, d].T / temperature`` against ``targets[N]``."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    valid = targets != ignore_index
    logits = (query.float() @ item_weight.float().T) / temperature
    logits[:, :n_reserved] = float("-inf")
    safe_targets = torch.where(valid, targets, torch.full_like(targets, n_reserved))
    per_row = torch.logsumexp(logits, dim=1) - logits.gather(1, safe_targets[:, None]).squeeze(1)
    per_row = torch.where(valid, per_row, per_row.new_zeros(()))
    return reduce_rows(per_row, valid, reduction)
