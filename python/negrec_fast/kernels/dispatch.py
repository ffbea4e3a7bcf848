"""Loss backend dispatch: the Triton kernels on GPU, the pure-torch references elsewhere.

``backend="auto"`` picks Triton for CUDA tensors and the reference otherwise; ``"triton"``
forces the kernels (on CPU only under ``TRITON_INTERPRET=1``); ``"torch"`` forces the
reference. Both paths have the same signature and, within tolerance, the same values.
"""

from __future__ import annotations

import math

import os

import torch
import torch.nn.functional as F
from torch import Tensor

from negrec_fast import losses
from negrec_fast.losses import skip_penalty
from negrec_fast.losses._reduce import reduce_rows
from negrec_fast.losses._rows import gather_rows
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
    row_negatives: Tensor | None = None,
    row_groups: int = 1,
    compact: bool | None = None,
) -> Tensor:
    """The main recommendation loss over ``[N, d]`` queries; ``targets == 0`` rows are ignored.

    With ``cfg.logq`` (sampled softmax only), each candidate's logit is reduced by the log of
    its expected count in the candidate set: ``neg_logq = log pi_c`` for the K sampled negatives
    (``pi_c``: inclusion probability) and ``log(N p_c)`` for the N in-batch targets, ``p_c`` being the
    item's frequency among training targets (``item_log_freq``), the positive included.
    ``row_negatives``: ``[N, M]`` each row's session-skipped items (0 = none), used as
    ``cfg.skip_penalty`` says (``negrec_fast.losses.skip_penalty``); with ``row_groups = G`` it is
    ``[N / G, M]``, one set per run of G consecutive rows (a session's predictions).
    ``compact`` drops padding rows first (default: on CPU only).
    """
    triton = use_triton(cfg.backend, query)
    if compact is None:
        compact = not query.is_cuda
    penalty = "none" if row_negatives is None else cfg.skip_penalty
    skip_logits = None  # [N, M], scored while each session's rows are still consecutive
    if penalty != "none" and cfg.rec != "bpr":
        skip_logits = skip_penalty.row_negative_logits(query, item_weight, targets, row_negatives, row_groups)
    if row_negatives is not None and row_groups > 1:
        row_negatives = row_negatives.repeat_interleave(row_groups, dim=0)
    if compact:
        # On CPU, dropping padding rows up front is free and halves the in-batch work; on GPU
        # the shapes stay static (no host sync, CUDA-graph friendly) and masks do the work.
        keep = targets != 0
        query, targets = query[keep], targets[keep]
        if row_negatives is not None:
            row_negatives = row_negatives[keep]
        if skip_logits is not None:
            skip_logits = skip_logits[keep]
    reduction = "mean" if penalty == "none" else "none"
    target_logq = None
    if cfg.rec == "sampled_softmax":
        kwargs: dict = dict(temperature=cfg.temperature)
        if cfg.logq:
            if item_log_freq is None:
                raise ConfigError("loss.logq needs the training item frequencies")
            n_rows = (targets != 0).sum().clamp(min=1).float()
            kwargs["neg_logq"] = neg_logq
            # padding rows keep a finite (masked) term: an infinite one would give NaN gradients
            kwargs["target_logq"] = target_logq = torch.where(
                targets != 0, item_log_freq[targets] + n_rows.log(), 0.0
            )
        if triton:
            from negrec_fast.kernels.sampled_softmax import fused_sampled_softmax_loss

            per_row = fused_sampled_softmax_loss(query, item_weight, targets, negatives, reduction=reduction, **kwargs)
        else:
            per_row = losses.sampled_softmax_loss(query, item_weight, targets, negatives, reduction=reduction, **kwargs)
        return _skip_penalty(cfg, penalty, per_row, query, item_weight, targets, skip_logits, target_logq)
    if cfg.rec == "full_softmax":
        kwargs = dict(temperature=cfg.temperature, reduction=reduction)
        if triton:
            from negrec_fast.kernels.linear_cross_entropy import fused_linear_cross_entropy_loss

            per_row = fused_linear_cross_entropy_loss(query, item_weight, targets, **kwargs)
        else:
            per_row = losses.full_softmax_loss(query, item_weight, targets, **kwargs)
        return _skip_penalty(cfg, penalty, per_row, query, item_weight, targets, skip_logits, None)
    if cfg.rec == "bce":
        per_row = losses.bce_loss(query / cfg.temperature, item_weight, targets, negatives, reduction=reduction)
        return _skip_penalty(cfg, penalty, per_row, query, item_weight, targets, skip_logits, None)
    if cfg.rec == "gbce":
        per_row = losses.gbce_loss(
            query / cfg.temperature, item_weight, targets, negatives, n_items=n_items, t=cfg.gbce_t, reduction=reduction
        )
        return _skip_penalty(cfg, penalty, per_row, query, item_weight, targets, skip_logits, None)
    if cfg.rec == "bpr":  # both penalties make the skipped items extra negatives of the row, as for BCE
        return losses.bpr_loss(
            query / cfg.temperature,
            item_weight,
            targets,
            negatives,
            row_negatives=None if penalty == "none" else row_negatives,
            row_weight=cfg.skip_weight,
        )
    if cfg.rec == "wrmf":
        raise ConfigError("loss.rec 'wrmf' is the objective of model 'wrmf' (WRMF.objective), not a loss of queries")
    raise ConfigError(f"loss.rec {cfg.rec!r} is not a known loss")


def _skip_penalty(cfg, penalty, per_row, query, item_weight, targets, skip_logits, target_logq) -> Tensor:
    """Mean loss over valid rows, with the row negatives (their logits ``skip_logits``) used as
    ``penalty`` says, each weighing ``cfg.skip_weight``."""
    if penalty == "none":
        return per_row
    valid = targets != 0
    skip_logits = skip_logits / cfg.temperature
    if cfg.rec in ("bce", "gbce"):  # both penalties are the same for a binary loss: more negatives
        extra = torch.where(torch.isneginf(skip_logits), 0.0, F.softplus(skip_logits)).sum(dim=1)
        return reduce_rows(torch.where(valid, per_row + cfg.skip_weight * extra, 0.0), valid, "mean")
    positive = (query.float() * gather_rows(item_weight, targets).float()).sum(dim=1) / cfg.temperature
    if target_logq is not None:
        positive = positive - target_logq
    has = torch.isfinite(skip_logits).any(dim=1) & valid
    # rows without a usable negative get finite placeholders (no NaN gradients through -inf rows)
    safe = torch.where(has[:, None], skip_logits, 0.0)
    if penalty == "negatives":  # each skipped item counts skip_weight times in the denominator
        extra = skip_penalty.with_skip_negatives(per_row, positive, safe + math.log(cfg.skip_weight))
    else:
        extra = per_row + cfg.skip_weight * skip_penalty.unlikelihood(per_row, positive, safe)
    per_row = torch.where(has, extra, per_row)
    return reduce_rows(per_row, valid, "mean")


def skip_infonce(
    anchors: Tensor,
    items: Tensor,
    skips: Tensor,
    *,
    candidates: Tensor | None = None,
    temperature: float,
    normalize: str = "kept",
    backend: str,
) -> Tensor:
    """Skip-informed InfoNCE with the configured backend (``candidates`` defaults to ``anchors``)."""
    kwargs = dict(candidates=candidates, temperature=temperature, normalize=normalize)
    if use_triton(backend, anchors):
        from negrec_fast.kernels.skip_infonce import fused_skip_infonce_loss

        return fused_skip_infonce_loss(anchors, items, skips, **kwargs)
    return losses.skip_infonce_loss(anchors, items, skips, **kwargs)
