"""The session's skipped plays in the main loss, against loops written from the formulas."""

from __future__ import annotations

import math

import pytest
import torch

from negrec_fast.config import LossConfig
from negrec_fast.kernels.dispatch import rec_loss
from negrec_fast.losses.skip_penalty import session_skipped_items
from negrec_fast.models import build_model
from negrec_fast.objective import BatchTensors, Objective


def test_session_skipped_items_lists_each_skipped_item_once():
    items = torch.tensor([[0, 5, 6, 5, 7, 6], [2, 3, 4, 3, 3, 9]])
    skips = torch.tensor([[1, 1, 0, 1, 1, 1], [0, 1, 0, 1, 0, 0]]).bool()
    got = session_skipped_items(items, skips)
    for row, want in zip(got.tolist(), ({5, 7, 6}, {3})):
        assert sorted(i for i in row if i) == sorted(want)


def _loop_loss(query, weight, targets, row_negs, penalty, w, n_reserved=2):
    """Full softmax over items >= n_reserved; plus the row's distinct skipped items (not the target)."""
    total, rows = 0.0, 0
    for n in range(len(targets)):
        t = int(targets[n])
        if t == 0:
            continue
        logit = {c: sum(float(query[n, k]) * float(weight[c, k]) for k in range(query.shape[1]))
                 for c in range(n_reserved, weight.shape[0])}
        z = sum(math.exp(v) for v in logit.values())
        extra = sorted({int(m) for m in row_negs[n] if int(m) not in (0, t)})
        if penalty == "negatives":
            loss = math.log(z + w * sum(math.exp(logit[m]) for m in extra)) - logit[t]
        else:  # unlikelihood: -log p(target) - w * sum log(1 - p(skipped))
            loss = math.log(z) - logit[t] - w * sum(math.log(1 - math.exp(logit[m]) / z) for m in extra)
        total, rows = total + loss, rows + 1
    return total / rows


@pytest.mark.parametrize("w", [1.0, 4.0])
@pytest.mark.parametrize("penalty", ["negatives", "unlikelihood"])
def test_full_softmax_with_skip_penalty_matches_the_loop(penalty, w):
    torch.manual_seed(0)
    query, weight = torch.randn(6, 4, dtype=torch.float64), torch.randn(12, 4, dtype=torch.float64)
    targets = torch.tensor([2, 3, 0, 5, 7, 7])
    row_negs = torch.tensor([[4, 5, 0], [3, 9, 10], [4, 0, 0], [5, 0, 0], [0, 0, 0], [8, 11, 9]])
    cfg = LossConfig(rec="full_softmax", skip_penalty=penalty, skip_weight=w, backend="torch")
    got = rec_loss(cfg, query, weight, targets, torch.zeros(0, dtype=torch.long), torch.zeros(0),
                   n_items=10, row_negatives=row_negs)
    assert got.item() == pytest.approx(_loop_loss(query, weight, targets, row_negs, penalty, w), rel=1e-6)  # float32 logits
    plain = rec_loss(LossConfig(rec="full_softmax", skip_penalty="none"), query, weight, targets,
                     torch.zeros(0, dtype=torch.long), torch.zeros(0), n_items=10, row_negatives=row_negs)
    assert got.item() > plain.item()


@pytest.mark.parametrize("rec", ["full_softmax", "sampled_softmax", "bce"])
@pytest.mark.parametrize("penalty", ["negatives", "unlikelihood"])
def test_a_set_shared_by_each_sessions_rows_matches_the_loop(rec, penalty):
    # row_groups = 3: rows 0-2 share session 0's set, rows 3-5 session 1's; the loop sees one set per row
    torch.manual_seed(1)
    query = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(12, 4, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([2, 4, 0, 5, 7, 9])
    sessions = torch.tensor([[4, 5, 0], [9, 11, 0]])
    cfg = LossConfig(rec=rec, skip_penalty=penalty, skip_weight=2.0, logq=False, backend="torch")
    negatives, neg_logq = torch.tensor([3, 6, 8]), torch.zeros(3)
    per_row = sessions.repeat_interleave(3, dim=0)
    if rec == "full_softmax":
        assert rec_loss(cfg, query, weight, targets, negatives, neg_logq, n_items=10, row_negatives=sessions,
                        row_groups=3).item() == pytest.approx(_loop_loss(query, weight, targets, per_row, penalty, 2.0),
                                                              rel=1e-6)
    grads = []
    for kwargs in (dict(row_negatives=sessions, row_groups=3), dict(row_negatives=per_row)):
        loss = rec_loss(cfg, query, weight, targets, negatives, neg_logq, n_items=10, **kwargs)
        grads.append((loss.detach(), *torch.autograd.grad(loss, (query, weight))))
    for shared, expanded in zip(*grads):
        torch.testing.assert_close(shared, expanded)


def test_binary_losses_add_weighted_softplus_of_the_skipped_items():
    torch.manual_seed(0)
    query, weight = torch.randn(2, 4, dtype=torch.float64), torch.randn(12, 4, dtype=torch.float64)
    targets, negatives = torch.tensor([2, 3]), torch.tensor([8, 9])
    row_negs = torch.tensor([[5, 2, 0], [6, 7, 0]])  # row 0: 2 is its own target, left out

    def s(n, c):
        return sum(float(query[n, k]) * float(weight[c, k]) for k in range(4))

    def softplus(x):
        return math.log1p(math.exp(x))

    want = 0.0
    for n, t in enumerate(targets.tolist()):
        want += softplus(-s(n, t)) + sum(softplus(s(n, c)) for c in negatives.tolist())
        want += 2.5 * sum(softplus(s(n, c)) for c in row_negs[n].tolist() if c not in (0, t))
    cfg = LossConfig(rec="bce", skip_penalty="negatives", skip_weight=2.5)
    got = rec_loss(cfg, query, weight, targets, negatives, torch.zeros(2), n_items=10, row_negatives=row_negs)
    assert got.item() == pytest.approx(want / 2, rel=1e-6)


def test_rows_without_skips_keep_finite_gradients():
    torch.manual_seed(0)
    query = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(12, 4, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([2, 3, 4])
    row_negs = torch.tensor([[0, 0], [3, 0], [5, 6]])  # none, only the target, two
    for rec in ("sampled_softmax", "full_softmax", "bce"):
        cfg = LossConfig(rec=rec, skip_penalty="negatives", logq=False)
        loss = rec_loss(cfg, query, weight, targets, torch.tensor([8, 9]), torch.zeros(2), n_items=10,
                        row_negatives=row_negs)
        query.grad = weight.grad = None
        loss.backward()
        assert torch.isfinite(query.grad).all() and torch.isfinite(weight.grad).all(), rec
        assert weight.grad[5].abs().sum() > 0 and weight.grad[6].abs().sum() > 0, rec


def test_objective_pushes_down_the_items_the_session_skipped():
    """One SGD step with the penalty lowers the skipped item's score for that session's queries
    more than a step without it (the skipped item is in no other candidate set)."""
    items = torch.tensor([[2, 3, 9, 4, 5]])
    skips = torch.tensor([[0, 0, 1, 0, 0]]).bool()
    batch = BatchTensors(items=items, skips=skips, negatives=torch.tensor([11, 12]), neg_logq=torch.zeros(2))

    def skipped_score_after_step(penalty):
        torch.manual_seed(0)
        model = build_model("sasrec", 20, max_len=4, d_model=8, n_heads=2, n_layers=1, d_ff=8, dropout=0.0)
        cfg = LossConfig(nce_weight=0.0, logq=False, skip_penalty=penalty)
        _, rec, _ = Objective(cfg, "sasrec", mask_prob=0.2, n_items=18)(model, batch)
        rec.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.5 * p.grad
            return model.score_all(model.next_query(items[:, :-1]))[0, 9].item()

    assert skipped_score_after_step("negatives") < skipped_score_after_step("none") - 1e-3
    assert skipped_score_after_step("unlikelihood") < skipped_score_after_step("none") - 1e-3


@pytest.mark.parametrize("name", ["sasrec", "bert4rec", "gru4rec"])
def test_objective_feeds_input_skip_flags_and_hides_those_of_masked_plays(name):
    torch.manual_seed(0)
    extra = {} if name == "gru4rec" else dict(n_heads=2, d_ff=8)
    model = build_model(name, 20, max_len=4, d_model=8, n_layers=1, dropout=0.0, skip_inputs=True, **extra)
    items = torch.tensor([[2, 3, 9, 4, 5], [6, 7, 8, 10, 11]])
    skips = torch.tensor([[0, 1, 1, 0, 0], [1, 1, 0, 1, 0]]).bool()
    seen = []
    encode = model.encode
    model.encode = lambda x, flags=None: seen.append((x.clone(), flags.clone())) or encode(x, flags)
    batch = BatchTensors(items=items, skips=skips, negatives=torch.tensor([12, 13]), neg_logq=torch.zeros(2))
    cfg = LossConfig(nce_weight=0.0, logq=False)
    Objective(cfg, name, mask_prob=0.5, n_items=18)(model, batch, torch.Generator().manual_seed(1))
    (x, flags), = seen
    if name == "bert4rec":
        masked = x == 1
        assert masked.any()
        assert torch.equal(flags, skips[:, 1:] & ~masked)
    else:
        assert torch.equal(x, items[:, :-1]) and torch.equal(flags, skips[:, :-1])
