"""The training objective: ``L_rec + lambda * L_nce`` on one batch of left-padded sessions.

- SASRec / GRU4Rec read plays ``[0, L-1)`` and predict each next play; BERT4Rec reads the
  last ``L-1`` plays with random positions masked and predicts the masked ones.
- Only *kept* plays are positives of the recommendation loss: a target that was skipped is
  ignored (``loss.skipped_targets = "include"`` restores plain next-play training).
- The items the session (the batch row) skipped are negatives of every prediction of that
  row (``loss.skip_penalty``; ``negrec_fast.losses.skip_penalty``).
- The skip-InfoNCE term (``negrec_fast.losses.skip_infonce``): anchors are kept plays,
  the positive is the anchor's next kept play, the negatives the session's skipped plays;
  positives and negatives are always item embeddings (``model.embed``). ``nce_context``
  picks the anchor vector of a kept play:

  - ``"embedding"``: its item embedding; the window is the batch's ``items[:, 0:L]``.
  - ``"encoder"``: the model's query at that play, ``model.project(hidden)``, the vector
    that is scored against the item embeddings (as the decoder output in Seshadri & Knees'
    code). SASRec / GRU4Rec read ``items[:, :-1]`` and output ``i`` is the context after
    play ``i`` (it predicts play ``i + 1``), so kept play ``i`` is anchored by output ``i``;
    the window stays ``items[:, 0:L]``: the last play is a positive or negative like any
    other but never an anchor (no play follows it, no output belongs to it). BERT4Rec reads
    ``items[:, 1:]`` (some plays masked) and output ``i`` is the context at play ``i + 1``;
    the window is ``items[:, 1:]``, the plays the model read, with their unmasked embeddings.

WRMF (``loss.rec = "wrmf"``, model ``"wrmf"`` only) replaces the recommendation loss by its own
objective (:meth:`negrec_fast.models.WRMF.objective`): every prefix of the window that ends in a
kept play with a play before it is a user; it sums over the whole catalogue, so the sampled
negatives, logQ, ``skipped_targets`` and ``skip_penalty`` do not apply. The skip-InfoNCE term is added as above.

PNFRec (``model_name = "pnfrec"``, :mod:`negrec_fast.models.pnfrec`) adds two terms to the above:
``model.encode`` gives each column the positive and the negative encoder's state, ``model.project``
fuses them into the query of the main loss (the paper's positive CE). With ``cfg.pnfrec_neg_weight``
(alpha): the main loss (``loss.rec``, its logQ on the training frequencies, no skip penalty) of the
negative encoder's query ``model.project([h-; 0])`` at each skipped input play against the next
skipped play of the window (:func:`negrec_fast.losses.pnfrec.next_skipped`). With
``cfg.pnfrec_contrastive_weight`` (beta): :func:`negrec_fast.losses.pnfrec.pnfrec_contrastive` of the
query against the window's skipped plays. ``(total, rec, nce)`` are ``(rec + nce, L_rec + alpha *
L_neg, beta * L_contrastive + lambda * L_nce)``.

SINE (``model_name = "sine"``) has its own loss path instead (:meth:`Objective.sine_loss`,
:mod:`negrec_fast.losses.sine`): it reads the kept plays, and ``(total, rec, nce)`` are
``(rec + sine_dcor_weight * dcor, bpr + sine_skip_weight * passive, dcor)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from negrec_fast.config import LossConfig
from negrec_fast.kernels.dispatch import rec_loss, skip_infonce
from negrec_fast.losses.pnfrec import next_skipped, pnfrec_contrastive
from negrec_fast.losses.sine import interest_dcor, kept_plays, passed_over, sine_rank_loss
from negrec_fast.losses.skip_penalty import session_skipped_items
from negrec_fast.profiling import StepProfile


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
        self.sine = model_name == "sine"
        self.pnfrec = model_name == "pnfrec"
        self.mask_prob = mask_prob
        self.n_items = n_items
        self.item_log_freq = item_log_freq
        self.profile: StepProfile | None = None  # train.profile: marks the end of the forward pass

    def __call__(self, model: torch.nn.Module, batch: BatchTensors, generator: torch.Generator | None = None):
        """Returns ``(total, rec, nce)``; ``nce`` is a zero tensor when the term is off."""
        if self.sine:
            return self.sine_loss(model, batch, generator)
        items, skips = batch.items, batch.skips
        if self.bidirectional:
            inputs, input_skips = items[:, 1:], skips[:, 1:]
            masked, targets = model.mask_items(inputs, self.mask_prob, generator)
            target_skips = input_skips
            # a masked play's flag would tell whether its target was kept: masks read as kept
            hidden = model.encode(masked, input_skips & (targets == 0))
        else:
            inputs, input_skips = items[:, :-1], skips[:, :-1]
            targets, target_skips = items[:, 1:], skips[:, 1:]
            # a session's first play (with model.read_skipped=false: its first kept play) has
            # no context to be predicted from
            targets = targets.masked_fill(~model.has_context(inputs, input_skips), 0)
            hidden = model.encode(inputs, input_skips)
        if self.cfg.skipped_targets == "ignore":
            targets = targets.masked_fill(target_skips, 0)
        query = model.project(hidden)
        if self.profile is not None:
            self.profile.mark("forward")
        d = query.shape[-1]
        if self.cfg.rec == "wrmf":  # model "wrmf": its own objective, every prefix a user (module docstring)
            rec = model.objective(items, skips)
        else:
            row_negatives = None
            if self.cfg.skip_penalty != "none":
                # [B, L]: every prediction of a row shares them (row_groups = its predictions)
                row_negatives = session_skipped_items(items, skips)
            rec = rec_loss(
                self.cfg,
                query.reshape(-1, d),
                model.item_weight,
                targets.reshape(-1),
                batch.negatives,
                batch.neg_logq,
                n_items=self.n_items,
                item_log_freq=self.item_log_freq,
                row_negatives=row_negatives,
                row_groups=targets.shape[1],
            )
        extra = rec.new_zeros(())
        if self.pnfrec:
            rec, extra = self.pnfrec_terms(model, batch, hidden, query, targets, rec)
        if self.cfg.nce_weight <= 0:
            return rec + extra, rec, extra
        cfg = self.cfg
        nce_args = dict(temperature=cfg.nce_temperature, normalize=cfg.nce_normalize, backend=cfg.backend)
        if self.cfg.nce_context == "embedding":
            nce = skip_infonce(model.embed(items), items, skips, **nce_args)
        elif self.bidirectional:  # query[:, i] is the context at play i + 1 (module docstring)
            nce = skip_infonce(query, inputs, input_skips, candidates=model.embed(inputs), **nce_args)
        else:  # query[:, i] is the context after play i; play L-1 has none and is no anchor
            anchors = torch.nn.functional.pad(query, (0, 0, 0, 1))
            nce = skip_infonce(anchors, items, skips, candidates=model.embed(items), **nce_args)
        if self.pnfrec:  # the third value is the weighted sum of both contrastive terms
            nce = extra + self.cfg.nce_weight * nce
            return rec + nce, rec, nce
        return rec + self.cfg.nce_weight * nce, rec, nce

    def pnfrec_terms(self, model, batch: BatchTensors, hidden: Tensor, query: Tensor, targets: Tensor, rec: Tensor):
        """PNFRec's ``(L_rec + alpha * L_neg, beta * L_contrastive)`` (module docstring); ``hidden``
        ``[B, L-1, 2d]`` and ``query`` of ``items[:, :-1]``, ``targets`` the kept targets."""
        cfg, items, skips = self.cfg, batch.items, batch.skips
        if cfg.pnfrec_neg_weight > 0:
            half = hidden.shape[-1] // 2
            negative = hidden[..., half:]
            neg_query = model.project(torch.cat([negative, torch.zeros_like(negative)], dim=-1))
            neg_targets = next_skipped(items, skips)[:, :-1]
            neg = rec_loss(
                cfg, neg_query.reshape(-1, neg_query.shape[-1]), model.item_weight, neg_targets.reshape(-1),
                batch.negatives, batch.neg_logq, n_items=self.n_items, item_log_freq=self.item_log_freq,
            )
            rec = rec + cfg.pnfrec_neg_weight * neg
        extra = rec.new_zeros(())
        if cfg.pnfrec_contrastive_weight > 0:
            skipped = items.masked_fill(~skips.bool(), 0)  # every skipped play of the window, one term each
            extra = cfg.pnfrec_contrastive_weight * pnfrec_contrastive(query, model.item_weight, targets, skipped)
        return rec, extra

    def sine_loss(self, model: torch.nn.Module, batch: BatchTensors, generator: torch.Generator | None = None):
        """SINE's ``(total, rec, dcor)``: each prediction's random negative is one of the batch's
        shared negatives, drawn uniformly with ``generator``."""
        kept = kept_plays(batch.items, batch.skips)
        inputs = kept[:, :-1]
        targets = kept[:, 1:].masked_fill(inputs == 0, 0)
        picks = torch.randint(len(batch.negatives), targets.shape, generator=generator, device=targets.device)
        hidden = model(inputs)
        if self.profile is not None:
            self.profile.mark("forward")
        bpr, passive = sine_rank_loss(
            hidden, model.item_weight, targets, batch.negatives[picks], *passed_over(batch.items, batch.skips)
        )
        rec = bpr + self.cfg.sine_skip_weight * passive
        dcor = interest_dcor(model.interests)
        return rec + self.cfg.sine_dcor_weight * dcor, rec, dcor
