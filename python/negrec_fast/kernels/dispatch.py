"""Loss backend dispatch: the Triton kernels on GPU, the pure-torch references elsewhere.

``backend="auto"`` picks Triton for CUDA tensors and the reference otherwise; ``"triton"``
forces the kernels (on CPU only under ``TRITON_INTERPRET=1``); ``"torch"`` forces the
reference. Both paths have the same signature and, within tolerance, the same values.
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor

from negrec_fast import losses
from negrec_fast.config import LossConfig
from negrec_fast.errors import ConfigError


def use_triton(backend: str, tensor: Tensor) -> bool:
    """Whether ``backend`` means the Triton kernels for tensors on ``tensor``'s device."""
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if backend == "torch":
        return False
    if backend == "auto":
        return tensor.is_cuda
    if backend == "triton":
        if not (tensor.is_cuda or interpreted):
            raise ConfigError("loss.backend='triton' needs a CUDA device (or TRITON_INTERPRET=1 on CPU)")
        return True
    raise ConfigError(f"loss.backend must be 'auto', 'triton' or 'torch', got {backend!r}")


def rec_loss(
    cfg: LossConfig,
    query: Tensor,
    item_weight: Tensor,
    targets: Tensor,
    negatives: Tensor,
    neg_logq: Tensor,
    *,
    n_items: int,
    item_log_freq: Tensor | None = None,
    compact: bool | None = None,
) -> Tensor:
    """The main recommendation loss over ``[N, d]`` queries; ``targets == 0`` rows are ignored.

    With ``cfg.logq`` (sampled softmax only), each candidate's logit is reduced by the log of
    its expected count in the candidate set: ``log(K q_c)`` for the K sampled negatives
    (``neg_logq = log q_c``) and ``log(N p_c)`` for the N in-batch targets, ``p_c`` being the
    item's frequency among training targets (``item_log_freq``), the positive included.
    ``compact`` drops padding rows first (default: on CPU only).
    """
    triton = use_triton(cfg.backend, query)
    if compact is None:
        compact = not query.is_cuda
    if compact:
        # On CPU, dropping padding rows up front is free and halves the in-batch work; on GPU
        # the shapes stay static (no host sync, CUDA-graph friendly) and masks do the work.
        keep = targets != 0
        query, targets = query[keep], targets[keep]
    if cfg.rec == "sampled_softmax":
        kwargs: dict = dict(temperature=cfg.temperature)
        if cfg.logq:
            if item_log_freq is None:
                raise ConfigError("loss.logq needs the training item frequencies")
            n_rows = (targets != 0).sum().clamp(min=1).float()
            kwargs["neg_logq"] = neg_logq + math.log(negatives.numel())
            # padding rows keep a finite (masked) term: an infinite one would give NaN gradients
            kwargs["target_logq"] = torch.where(targets != 0, item_log_freq[targets] + n_rows.log(), 0.0)
        if triton:
            from negrec_fast.kernels.sampled_softmax import fused_sampled_softmax_loss

            return fused_sampled_softmax_loss(query, item_weight, targets, negatives, **kwargs)
        return losses.sampled_softmax_loss(query, item_weight, targets, negatives, **kwargs)
    if cfg.rec == "full_softmax":
        if triton:
            from negrec_fast.kernels.linear_cross_entropy import fused_linear_cross_entropy_loss

            return fused_linear_cross_entropy_loss(query, item_weight, targets, temperature=cfg.temperature)
        return losses.full_softmax_loss(query, item_weight, targets, temperature=cfg.temperature)
    if cfg.rec == "bce":
        return losses.bce_loss(query / cfg.temperature, item_weight, targets, negatives)
    if cfg.rec == "gbce":
        return losses.gbce_loss(query / cfg.temperature, item_weight, targets, negatives, n_items=n_items, t=cfg.gbce_t)
    raise ConfigError(f"loss.rec {cfg.rec!r} is not a known loss")


def skip_infonce(anchors: Tensor, items: Tensor, skips: Tensor, *, temperature: float, backend: str) -> Tensor:
    """Skip-informed InfoNCE with the configured backend."""
    if use_triton(backend, anchors):
        from negrec_fast.kernels.skip_infonce import fused_skip_infonce_loss

        return fused_skip_infonce_loss(anchors, items, skips, temperature=temperature)
    return losses.skip_infonce_loss(anchors, items, skips, temperature=temperature)
