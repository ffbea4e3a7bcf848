"""The training objective: ``L_rec + lambda * L_nce`` on one batch of left-padded sessions.

- SASRec / GRU4Rec read plays ``[0, L-1)`` and predict each next play; BERT4Rec reads the
  last ``L-1`` plays with random positions masked and predicts the masked ones.
- Only *kept* plays are positives of the recommendation loss: a target that was skipped is
  ignored (``loss.skipped_targets = "include"`` restores plain next-play training).
- The skip-InfoNCE term uses item embeddings of the whole window (``nce_context =
  "embedding"``) or the encoder outputs of the input window (``"encoder"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from negrec_fast.config import LossConfig
from negrec_fast.kernels.dispatch import rec_loss, skip_infonce


@dataclass
class BatchTensors:
    """One training batch on the training device."""

    items: Tensor  # int64 [B, L], left-padded with 0
    skips: Tensor  # bool  [B, L]
    negatives: Tensor  # int64 [K]
    neg_logq: Tensor  # float32 [K]


class Objective:
    """Computes the loss of a model on a batch, as configured by ``[loss]``."""

    def __init__(
        self, loss: LossConfig, model_name: str, *, mask_prob: float, n_items: int, item_log_freq: Tensor | None = None
    ) -> None:
        """``item_log_freq``: ``[V]`` log frequency of each item among training plays (for logQ)."""
        self.cfg = loss
        self.bidirectional = model_name == "bert4rec"
        self.mask_prob = mask_prob
        self.n_items = n_items
        self.item_log_freq = item_log_freq

    def __call__(self, model: torch.nn.Module, batch: BatchTensors, generator: torch.Generator | None = None):
        """Returns ``(total, rec, nce)``; ``nce`` is a zero tensor when the term is off."""
        items, skips = batch.items, batch.skips
        if self.bidirectional:
            inputs, input_skips = items[:, 1:], skips[:, 1:]
            masked, targets = model.mask_items(inputs, self.mask_prob, generator)
            target_skips = input_skips
            hidden = model.encode(masked)
        else:
            inputs, input_skips = items[:, :-1], skips[:, :-1]
            targets, target_skips = items[:, 1:], skips[:, 1:]
            # a session's first play has no context to be predicted from
            targets = targets.masked_fill(inputs == 0, 0)
            hidden = model.encode(inputs)
        if self.cfg.skipped_targets == "ignore":
            targets = targets.masked_fill(target_skips, 0)
        query = model.project(hidden)
        d = query.shape[-1]
        rec = rec_loss(
            self.cfg,
            query.reshape(-1, d),
            model.item_weight,
            targets.reshape(-1),
            batch.negatives,
            batch.neg_logq,
            n_items=self.n_items,
            item_log_freq=self.item_log_freq,
        )
        if self.cfg.nce_weight <= 0:
            return rec, rec, rec.new_zeros(())
        if self.cfg.nce_context == "embedding":
            nce = skip_infonce(
                model.embed(items), items, skips, temperature=self.cfg.nce_temperature, backend=self.cfg.backend
            )
        else:
            nce = skip_infonce(
                hidden, inputs, input_skips, temperature=self.cfg.nce_temperature, backend=self.cfg.backend
            )
        return rec + self.cfg.nce_weight * nce, rec, nce
