"""The training objective's loss wiring: logQ correction and skipped targets."""

from __future__ import annotations

import math

import pytest
import torch

from negrec_fast.config import LossConfig
from negrec_fast.kernels.dispatch import rec_loss
from negrec_fast.losses import sampled_softmax_loss
from negrec_fast.models import build_model
from negrec_fast.objective import BatchTensors, Objective


def test_logq_subtracts_the_log_expected_count_of_every_candidate():
    torch.manual_seed(0)
    q, w = torch.randn(5, 8), torch.randn(12, 8)
    targets = torch.tensor([2, 3, 0, 3, 7])  # one padding row: 4 real rows
    negatives = torch.tensor([4, 5, 9])
    neg_logq = torch.log(torch.tensor([0.1, 0.2, 0.05]))
    log_freq = torch.log(torch.linspace(0.01, 0.2, 12))
    got = rec_loss(LossConfig(logq=True), q, w, targets, negatives, neg_logq, n_items=10, item_log_freq=log_freq)
    keep = targets != 0
    want = sampled_softmax_loss(
        q[keep], w, targets[keep], negatives,
        neg_logq=neg_logq + math.log(3),  # K q_c
        target_logq=log_freq[targets[keep]] + math.log(4),  # N p_c over the 4 real rows
    )
    torch.testing.assert_close(got, want)
    plain = rec_loss(LossConfig(logq=False), q, w, targets, negatives, neg_logq, n_items=10)
    assert not torch.isclose(plain, got)


def test_skipped_targets_are_not_positives_unless_asked():
    torch.manual_seed(0)
    model = build_model("sasrec", 20, max_len=4, d_model=8, n_heads=2, n_layers=1, d_ff=8, dropout=0.0)
    items = torch.tensor([[0, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    skips = torch.tensor([[0, 0, 1, 0, 1], [0, 1, 1, 1, 1]]).bool()
    batch = BatchTensors(items=items, skips=skips, negatives=torch.tensor([11, 12]), neg_logq=torch.zeros(2))
    cfg = LossConfig(nce_weight=0.0, logq=False)
    _, rec, _ = Objective(cfg, "sasrec", mask_prob=0.2, n_items=18)(model, batch)
    # by hand: the kept targets are 4 (after 2 3) in row 0 only
    query = model.project(model.encode(items[:, :-1]))
    want = sampled_softmax_loss(query[0, 2:3], model.item_weight, torch.tensor([4]), batch.negatives)
    torch.testing.assert_close(rec, want)
    cfg_all = LossConfig(nce_weight=0.0, logq=False, skipped_targets="include")
    _, rec_all, _ = Objective(cfg_all, "sasrec", mask_prob=0.2, n_items=18)(model, batch)
    assert not torch.isclose(rec_all, rec)


@pytest.mark.parametrize("context", ["embedding", "encoder"])
def test_nce_term_is_added_with_its_weight(context):
    torch.manual_seed(0)
    model = build_model("sasrec", 20, max_len=4, d_model=8, n_heads=2, n_layers=1, d_ff=8, dropout=0.0)
    items = torch.tensor([[2, 3, 4, 5, 6]])
    skips = torch.tensor([[0, 1, 0, 0, 1]]).bool()
    batch = BatchTensors(items=items, skips=skips, negatives=torch.tensor([11, 12]), neg_logq=torch.zeros(2))
    cfg = LossConfig(nce_weight=0.5, nce_context=context, logq=False)
    total, rec, nce = Objective(cfg, "sasrec", mask_prob=0.2, n_items=18)(model, batch)
    assert nce > 0
    torch.testing.assert_close(total, rec + 0.5 * nce)
