"""SINE (Pan et al., RecSys 2023): the kept-play layout, sub-interests and fusion, the
multi-task loss and distance correlation against loops written from the formulas, SINE's
evaluation protocol (any model) against hand-computed values and loops, and a tiny run."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from run_folders import tiny
from test_evaluation import FixedScores, dataset
from test_training import popularity_hr10

from negrec_fast.batch_recommend import read_sessions, recommend_sessions
from negrec_fast.config import Config, EvalConfig, LossConfig
from negrec_fast.data import load_dataset
from negrec_fast.errors import ConfigError
from negrec_fast.evaluation import evaluate, evaluate_model
from negrec_fast.export import export
from negrec_fast.losses.sine import distance_correlation, interest_dcor, kept_plays, passed_over, sine_rank_loss
from negrec_fast.metrics import SkipCandidateAccumulator, pooled_auc
from negrec_fast.models import SINE, build_model
from negrec_fast.objective import BatchTensors, Objective
from negrec_fast.recommend import Recommender
from negrec_fast.training import train

V, MAX_LEN, D = 30, 8, 16
NEG = float("-inf")


pytestmark = pytest.mark.usefixtures("one_thread")

def make(**options) -> SINE:
    torch.manual_seed(0)
    return build_model("sine", V, max_len=MAX_LEN, d_model=D, n_heads=2, d_ff=32, n_layers=1, **options).eval()


def left_pad(seq: list[int], length: int) -> list[int]:
    return [0] * (length - len(seq)) + seq


# rows of (item, skipped): skips before the first kept play, between kept plays, after the last
# one, a skipped repeat of the next target (5), a row without kept plays, one with a single kept
ROWS = [
    [(0, 0), (9, 1), (2, 0), (7, 1), (8, 1), (3, 0), (5, 1), (5, 0), (6, 1)],
    [(4, 0), (6, 0), (7, 1), (7, 1), (2, 0), (3, 0), (9, 1), (4, 0), (11, 0)],
    [(0, 0), (0, 0), (0, 0), (0, 0), (0, 0), (12, 1), (13, 1), (14, 1), (15, 1)],
    [(0, 0), (0, 0), (0, 0), (0, 0), (0, 0), (0, 0), (16, 1), (17, 0), (18, 1)],
]


def batch_rows(rows) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([[i for i, _ in r] for r in rows]), torch.tensor([[s for _, s in r] for r in rows]).bool()


def random_rows(seed: int, b: int = 12, length: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    items = torch.randint(2, 10, (b, length), generator=gen)
    skips = torch.rand(b, length, generator=gen) < 0.4
    pad = torch.randint(0, length + 1, (b,), generator=gen)
    items[torch.arange(length)[None, :] < pad[:, None]] = 0
    return items, skips & (items != 0)


# ---- the kept-play layout ---------------------------------------------------------------


def layout_loop(items, skips):
    """Per row: the kept plays right-aligned; per skipped play with a kept play before and
    after it: (row, index of the first kept play after it among the kept plays - 1 + the row's
    padding of kept plays, item)."""
    length = len(items[0])
    kept_rows, pairs = [], []
    for b, (row, flags) in enumerate(zip(items, skips)):
        kept_pos = [p for p in range(length) if row[p] != 0 and not flags[p]]
        kept_rows.append(left_pad([row[p] for p in kept_pos], length))
        pad = length - len(kept_pos)
        for p in range(length):
            if row[p] == 0 or not flags[p]:
                continue
            after = [n for n, q in enumerate(kept_pos) if q > p]
            if after and after[0] >= 1:  # a kept play before and one after
                pairs.append((b, pad + after[0] - 1, row[p]))
    return kept_rows, sorted(pairs)


@pytest.mark.parametrize("seed", [None, 0, 1, 2])
def test_kept_plays_and_passed_over_match_a_loop(seed):
    items, skips = batch_rows(ROWS) if seed is None else random_rows(seed)
    want_kept, want_pairs = layout_loop(items.tolist(), skips.tolist())
    assert kept_plays(items, skips).tolist() == want_kept
    skipped, cols = passed_over(items, skips)
    rows, positions = (skipped != 0).nonzero(as_tuple=True)
    assert sorted(zip(rows.tolist(), cols[rows, positions].tolist(), skipped[rows, positions].tolist())) == want_pairs
    assert cols[skipped == 0].eq(0).all()
    assert kept_plays(items, None).tolist() == items.tolist()  # left-padded rows stay as they are
    if seed is None:  # by hand: row 0 keeps 2 3 5 (targets 3 and 5 in columns 6 and 7 of kept[:, 1:])
        assert want_kept[0] == [0, 0, 0, 0, 0, 0, 2, 3, 5] and want_kept[1] == [0, 0, 0, 4, 6, 2, 3, 4, 11]
        assert want_pairs == [(0, 6, 7), (0, 6, 8), (0, 7, 5), (1, 4, 7), (1, 4, 7), (1, 6, 9)]


# ---- sub-interests and fusion -----------------------------------------------------------


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def published_scores(hidden: list[float], interests, w_h, w_v, b: float, items) -> list[float]:
    """Score of every item from the paper's formulas, one candidate at a time: h_k = h +
    sigmoid(h * e_k) * h; w = softmax_k(W [h_k; v] + b), W = [w_h; w_v]; score = (sum_k w_k h_k) . v."""
    d = len(hidden)
    sub = [[hidden[c] + sigmoid(hidden[c] * e[c]) * hidden[c] for c in range(d)] for e in interests]
    scores = []
    for v in items:
        logits = [sum(w_h[c] * h_k[c] for c in range(d)) + sum(w_v[c] * v[c] for c in range(d)) + b for h_k in sub]
        top = max(logits)
        z = sum(math.exp(x - top) for x in logits)
        weights = [math.exp(x - top) / z for x in logits]
        user = [sum(weights[k] * sub[k][c] for k in range(len(sub))) for c in range(d)]
        scores.append(sum(user[c] * v[c] for c in range(d)))
    return scores


@pytest.mark.parametrize("n_interests", [2, 3])
def test_full_catalogue_scores_match_the_published_fusion_per_candidate(n_interests):
    """The item half of the published Linear([h_k; v]) cancels in the softmax over k: any w_v
    and bias give the scores of the model's one matrix product."""
    model = make(n_interests=n_interests)
    items, skips = batch_rows(ROWS[:2] + ROWS[3:])
    scores = model.score_all(model.next_query(items[:, 1:], skips[:, 1:]))
    gen = torch.Generator().manual_seed(1)
    w_v, bias = torch.randn(D, generator=gen).tolist(), 0.7
    table = model.item_weight.tolist()
    for b, (row, flags) in enumerate(zip(items[:, 1:].tolist(), skips[:, 1:].tolist())):
        kept = [i for i, s in zip(row, flags) if i and not s]
        hidden = model.encode(torch.tensor([left_pad(kept, MAX_LEN)]))[0, -1].tolist()
        want = published_scores(hidden, model.interests.tolist(), model.fusion.weight[0].tolist(), w_v, bias,
                                table[2:])
        np.testing.assert_allclose(scores[b, 2:].detach().numpy(), want, rtol=1e-5, atol=1e-5)
        assert torch.isneginf(scores[b, :2]).all()


def test_skipped_plays_are_not_read_and_padding_is_zero():
    model = make()
    items, skips = batch_rows(ROWS)
    query = model.next_query(items[:, 1:], skips[:, 1:])
    other = items.clone()
    other[skips] = 19  # change every skipped play
    torch.testing.assert_close(model.next_query(other[:, 1:], skips[:, 1:]), query)
    kept = kept_plays(items[:, 1:], skips[:, 1:])
    torch.testing.assert_close(model.next_query(kept), query)
    assert query[2].abs().max() == 0  # no kept play: zero user vector, every item ties
    with torch.no_grad():
        sasrec_part = model.encode(items[:, 1:], skips[:, 1:])
    assert sasrec_part.shape == (4, MAX_LEN, D) and torch.isfinite(sasrec_part).all()
    assert model.item_weight[0].abs().max() == 0 and "head.weight" not in model.state_dict()


def test_batch_of_one_and_constructor_errors():
    model = make()
    one = torch.tensor([[0, 0, 3, 4, 5]])
    assert model.next_query(one).shape == (1, D)
    assert model.fusion_weights(model.sub_interests(model.encode(one))).shape == (1, 5, 2)
    two = torch.tensor([[0, 0, 3, 4, 5], [2, 3, 4, 5, 6]])
    torch.testing.assert_close(model.next_query(one), model.next_query(two)[:1])
    with pytest.raises(ValueError, match="n_interests must be an integer >= 2, got 1"):
        make(n_interests=1)
    with pytest.raises(ValueError, match="skip_inputs does not apply"):
        make(skip_inputs=True)


# ---- the loss ---------------------------------------------------------------------------


def softplus(x: torch.Tensor) -> torch.Tensor:
    return torch.log(1 + torch.exp(x))


def dot(u, v) -> torch.Tensor:
    total = u.new_zeros(())
    for c in range(u.shape[0]):
        total = total + u[c] * v[c]
    return total


def dcor_loop(x, y) -> torch.Tensor:
    """Székely et al. (2007): a_ij = |x_i - x_j| double-centred (A, B); dCov^2 = mean(A B);
    dCor = sqrt(dCov^2(x, y) / sqrt(dCov^2(x, x) dCov^2(y, y)))."""
    n = x.shape[0]

    def centred(v):
        a = [[torch.abs(v[i] - v[j]) for j in range(n)] for i in range(n)]
        row = [sum(a[i]) / n for i in range(n)]
        col = [sum(a[i][j] for i in range(n)) / n for j in range(n)]
        grand = sum(row) / n
        return [[a[i][j] - row[i] - col[j] + grand for j in range(n)] for i in range(n)]

    a, b = centred(x), centred(y)

    def dcov2(p, q):
        return sum(p[i][j] * q[i][j] for i in range(n) for j in range(n)) / n**2

    return torch.sqrt(dcov2(a, b) / torch.sqrt(dcov2(a, a) * dcov2(b, b)))


def rank_loss_loop(user, weight, targets, negatives, pairs):
    """Mean over targets t != 0 of softplus(s(n_t) - s(t)); mean over pairs (b, i, k) whose
    item differs from the target of softplus(s(k) - s(t)); s(j) = user . weight[j]."""
    bpr, n_targets, passive, n_pairs = 0.0, 0, 0.0, 0
    for b in range(targets.shape[0]):
        for i in range(targets.shape[1]):
            t = int(targets[b, i])
            if t:
                bpr = bpr + softplus(dot(user[b, i], weight[int(negatives[b, i])]) - dot(user[b, i], weight[t]))
                n_targets += 1
    for b, i, k in pairs:
        t = int(targets[b, i])
        if t and k != t:
            passive = passive + softplus(dot(user[b, i], weight[k]) - dot(user[b, i], weight[t]))
            n_pairs += 1
    return bpr / max(n_targets, 1), passive / max(n_pairs, 1)


def test_rank_loss_values_and_gradients_match_the_loop():
    gen = torch.Generator().manual_seed(0)
    user = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(12, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([[0, 2, 3, 4], [5, 0, 6, 7], [0, 0, 0, 8]])
    negatives = torch.tensor([[9, 10, 11, 9], [10, 10, 11, 9], [9, 9, 9, 11]])
    pairs = [(0, 1, 7), (0, 1, 8), (0, 3, 4), (1, 2, 9), (1, 3, 7), (2, 3, 3)]  # (0, 3, 4): the target itself
    skipped, cols = torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, 4, dtype=torch.long)
    for n, (b, i, k) in enumerate(pairs):  # each pair in a column of its row; the rest is padding
        slot = sum(1 for q in pairs[:n] if q[0] == b)
        skipped[b, slot], cols[b, slot] = k, i
    got = sine_rank_loss(user, weight, targets, negatives, skipped, cols)
    want = rank_loss_loop(user, weight, targets, negatives, pairs)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    grads = torch.autograd.grad(got[0] + 2 * got[1], (user, weight))
    want_grads = torch.autograd.grad(want[0] + 2 * want[1], (user, weight))
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w)
    none = sine_rank_loss(user, weight, targets, negatives, torch.zeros_like(skipped), cols)
    assert none[1].item() == 0 and none[1].requires_grad  # a mean over no pair is 0


def objective_loop(model, items, skips, negative: int, skip_weight: float, dcor_weight: float):
    """The whole objective from the raw batch: each row's kept plays in order; target = every
    kept play after the first, its user vector the model's query after the kept plays before
    it; its pairs: the skipped plays between the previous kept play and it."""
    weight = model.item_weight
    bpr, n_targets, passive, n_pairs = weight.new_zeros(()), 0, weight.new_zeros(()), 0
    for row, flags in zip(items.tolist(), skips.tolist()):
        kept = [p for p in range(len(row)) if row[p] and not flags[p]]
        for n in range(1, len(kept)):
            context = [row[p] for p in kept[:n]]
            user = model.next_query(torch.tensor([left_pad(context, len(row) - 1)]))[0]
            t = row[kept[n]]
            positive = dot(user, weight[t])
            bpr = bpr + softplus(dot(user, weight[negative]) - positive)
            n_targets += 1
            for p in range(kept[n - 1] + 1, kept[n]):
                if row[p] and flags[p] and row[p] != t:
                    passive = passive + softplus(dot(user, weight[row[p]]) - positive)
                    n_pairs += 1
    e = model.interests
    dcor = sum(dcor_loop(e[i], e[j]) for i in range(len(e)) for j in range(i + 1, len(e)))
    rec = bpr / max(n_targets, 1) + skip_weight * passive / max(n_pairs, 1)
    return rec + dcor_weight * dcor, rec, dcor


@pytest.mark.parametrize("rows", [ROWS, ROWS[:1], ROWS[3:]], ids=["batch", "one-row", "no-target"])
def test_objective_values_and_gradients_match_the_loop(rows):
    model = make(n_interests=3)
    items, skips = batch_rows(rows)
    batch = BatchTensors(items=items, skips=skips, negatives=torch.tensor([19]), neg_logq=torch.zeros(1))
    cfg = LossConfig(sine_skip_weight=1.5, sine_dcor_weight=0.3)
    got = Objective(cfg, "sine", mask_prob=0.2, n_items=V - 2)(model, batch)
    want = objective_loop(model, items, skips, 19, 1.5, 0.3)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    names, params = zip(*model.named_parameters())
    grads = torch.autograd.grad(got[0], params, allow_unused=True)
    want_grads = torch.autograd.grad(want[0], params, allow_unused=True)
    for name, p, g, w in zip(names, params, grads, want_grads):
        zero = torch.zeros_like(p)  # no path to the loss (no target): no gradient either way
        torch.testing.assert_close(zero if g is None else g, zero if w is None else w, rtol=1e-4, atol=1e-6, msg=name)


def test_random_negatives_are_drawn_from_the_batch_negatives_by_the_generator():
    model = make()
    items, skips = batch_rows(ROWS[:2])
    batch = BatchTensors(items=items, skips=skips, negatives=torch.tensor([19, 20, 21]), neg_logq=torch.zeros(3))
    objective = Objective(LossConfig(), "sine", mask_prob=0.2, n_items=V - 2)
    losses = {round(objective(model, batch, torch.Generator().manual_seed(s))[1].item(), 6) for s in range(6)}
    assert len(losses) > 1  # the draw depends on the generator ...
    torch.testing.assert_close(objective(model, batch, torch.Generator().manual_seed(3)),
                               objective(model, batch, torch.Generator().manual_seed(3)))  # ... and only on it
    with torch.no_grad():  # the three negatives alike: every draw gives the loss of negative 19
        model.item_embedding.weight[20:22] = model.item_embedding.weight[19]
    got = objective(model, batch, torch.Generator().manual_seed(0))
    torch.testing.assert_close(got, objective_loop(model, items, skips, 19, 1.0, 1.0))


@pytest.mark.gpu
def test_cuda_matches_cpu():
    model = make()
    items, skips = batch_rows(ROWS)
    batch = BatchTensors(items=items, skips=skips, negatives=torch.tensor([19]), neg_logq=torch.zeros(1))
    objective = Objective(LossConfig(), "sine", mask_prob=0.2, n_items=V - 2)
    want_query, want_loss = model.next_query(items[:, 1:], skips[:, 1:]), objective(model, batch)
    cuda = model.cuda()
    got_query = cuda.next_query(items[:, 1:].cuda(), skips[:, 1:].cuda())
    torch.testing.assert_close(got_query.cpu(), want_query, atol=1e-4, rtol=1e-4)
    on_cuda = BatchTensors(items=items.cuda(), skips=skips.cuda(), negatives=batch.negatives.cuda(),
                           neg_logq=batch.neg_logq.cuda())
    got_loss = objective(cuda, on_cuda, torch.Generator(device="cuda").manual_seed(0))
    for g, w in zip(got_loss, want_loss):
        torch.testing.assert_close(g.cpu(), w, atol=1e-4, rtol=1e-4)


# ---- distance correlation ---------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 7, 16])
def test_distance_correlation_value_and_gradient_match_the_loop(n):
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(n, generator=gen, dtype=torch.float64, requires_grad=True)
    y = (x.detach() ** 2 + 0.5 * torch.randn(n, generator=gen, dtype=torch.float64)).requires_grad_()
    got, want = distance_correlation(x, y), dcor_loop(x, y)
    torch.testing.assert_close(got, want)
    for g, w in zip(torch.autograd.grad(got, (x, y)), torch.autograd.grad(want, (x, y))):
        torch.testing.assert_close(g, w)


def test_distance_correlation_known_values():
    x = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    # y = |x - 1| is uncorrelated with x (Pearson 0) but dependent: dCor^2 = 1 / sqrt(10) by hand
    y = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    assert distance_correlation(x, y).item() == pytest.approx(10**-0.25)
    gen = torch.Generator().manual_seed(0)
    e = torch.randn(16, generator=gen)
    for same in (e, 3 * e - 1, -e):  # identical, or an affine copy
        assert distance_correlation(e, same).item() == pytest.approx(1.0, abs=1e-6)
    # an empirical product distribution: independent, dCor exactly 0 (with a finite gradient)
    a = torch.tensor([0.0, 0.0, 1.0, 1.0], requires_grad=True)
    b = torch.tensor([0.0, 1.0, 0.0, 1.0], requires_grad=True)
    zero = distance_correlation(a, b)
    assert zero.item() == 0.0
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(zero, (a, b)))
    const = torch.full((5,), 2.0, requires_grad=True)
    assert distance_correlation(const, e[:5]).item() == 0.0  # a constant sample: 0 by convention
    assert torch.isfinite(torch.autograd.grad(distance_correlation(const, e[:5]), const)[0]).all()
    with pytest.raises(ValueError, match="must be \\[n\\] tensors of one shape"):
        distance_correlation(e, e[:3])


def test_interest_penalty_sums_every_pair():
    gen = torch.Generator().manual_seed(2)
    e = torch.randn(4, 8, generator=gen, dtype=torch.float64)
    want = sum(dcor_loop(e[i], e[j]) for i, j in itertools.combinations(range(4), 2))
    torch.testing.assert_close(interest_dcor(e), want)
    assert interest_dcor(torch.stack([e[0], 2 * e[0]])).item() == pytest.approx(1.0)


# ---- SINE's evaluation protocol (every model) --------------------------------------------


def test_protocol_hand_computed_with_ties():
    acc = SkipCandidateAccumulator()
    # example 0: target 0.5 vs 0.9, 0.5 (tie), 0.1 -> rank 2 or 3; example 1: 2.0 vs 1.0 -> rank 1;
    # example 2: no skipped candidate (pooled AUC only)
    acc.add(torch.tensor([0.5, 2.0, 1.0]), torch.tensor([0, 0, 0, 1]), torch.tensor([0.9, 0.5, 0.1, 1.0]))
    out = acc.compute()
    assert out["n_sine_examples"] == 2
    assert out["sine_GAUC"] == pytest.approx((1.5 / 3 + 1.0) / 2)
    assert out["sine_NDCG"] == pytest.approx(((1 / math.log2(3) + 1 / math.log2(4)) / 2 + 1) / 2)
    assert out["sine_AUC"] == pytest.approx((1.5 + 4 + 3.5) / 12)  # positives 0.5, 2.0, 1.0 vs 4 negatives
    # an unrankable target is behind everything; -inf / NaN candidates never outrank a target
    acc = SkipCandidateAccumulator()
    acc.add(torch.tensor([NEG, 1.0]), torch.tensor([0, 1, 1]), torch.tensor([NEG, NEG, float("nan")]))
    out = acc.compute()
    assert out["sine_GAUC"] == pytest.approx(0.5) and out["sine_NDCG"] == pytest.approx((1 / math.log2(3) + 1) / 2)
    assert out["sine_AUC"] == pytest.approx(3 / 6)
    assert SkipCandidateAccumulator().compute() == {"n_sine_examples": 0}
    with pytest.raises(ValueError, match="at least one positive and one negative"):
        pooled_auc(torch.ones(2), torch.ones(0))


def protocol_loop(targets: list[float], candidates: list[list[float]]) -> dict[str, float]:
    """GAUC / NDCG by averaging over every order of each example's target and candidates that
    sorts them by score (random tie-breaking); pooled AUC over every (target, candidate) pair."""
    gauc, ndcg_sum, n = 0.0, 0.0, 0
    for t, cands in zip(targets, candidates):
        if not cands:
            continue
        n += 1
        scores = [t] + cands
        orders = [o for o in itertools.permutations(range(len(scores)))
                  if all(scores[o[i]] >= scores[o[i + 1]] for i in range(len(o) - 1))]
        ranks = [o.index(0) + 1 for o in orders]
        gauc += sum((len(cands) - (r - 1)) / len(cands) for r in ranks) / len(ranks)
        ndcg_sum += sum(1 / math.log2(r + 1) for r in ranks) / len(ranks)
    negatives = [c for cands in candidates for c in cands]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in targets for q in negatives)
    return {"sine_AUC": wins / (len(targets) * len(negatives)), "sine_GAUC": gauc / n, "sine_NDCG": ndcg_sum / n}


@pytest.mark.parametrize("seed", range(4))
def test_protocol_matches_the_loop_over_batches(seed):
    rng = random.Random(seed)
    targets = [float(rng.randint(0, 3)) for _ in range(9)]  # few values: many ties
    candidates = [[float(rng.randint(0, 3)) for _ in range(rng.randint(0, 4))] for _ in targets]
    acc = SkipCandidateAccumulator()
    for lo in range(0, 9, 4):  # three batches
        part = candidates[lo : lo + 4]
        example = torch.tensor([e for e, c in enumerate(part) for _ in c], dtype=torch.long)
        acc.add(torch.tensor(targets[lo : lo + 4]), example, torch.tensor([x for c in part for x in c]))
    out, want = acc.compute(), protocol_loop(targets, candidates)
    assert out["n_sine_examples"] == sum(1 for c in candidates if c)
    for name, value in want.items():
        assert out[name] == pytest.approx(value), name


def test_evaluation_ranks_targets_among_their_held_out_skips():
    """Any model: test target 5 of session 0 against its held-out skipped 6 and 7 (the skipped
    repeat of 5 is no candidate); 9 of session 1 against 10. Item 6 was also played before."""
    ds = dataset([[(6, 0), (3, 0), (4, 1), (5, 0), (6, 1), (7, 1), (5, 1)], [(8, 0), (9, 0), (10, 1)]],
                 valid=[1, -1], test=[3, 1])
    table = torch.zeros(12, 12)
    table[4, 5], table[4, 6], table[4, 7] = 2.0, 3.0, 1.0  # after 4: 6 > 5 > 7
    table[8, 9], table[8, 10] = 1.0, 0.5
    cfg = EvalConfig(ks=[1, 10], sine_metrics=True)
    out = evaluate_model(FixedScores(table), ds, "test", cfg, max_len=3, device=torch.device("cpu"))
    assert out["n_sine_examples"] == 2 and out["n_kept"] == 2
    assert out["sine_GAUC"] == pytest.approx((0.5 + 1.0) / 2)
    assert out["sine_NDCG"] == pytest.approx((1 / math.log2(3) + 1) / 2)
    assert out["sine_AUC"] == pytest.approx((2 + 1.5) / 6)  # 2.0 and 1.0 vs 3.0, 1.0 (a tie), 0.5
    assert "HR@10" in out and "skip_MRR@10" in out  # next to full ranking
    seen = evaluate_model(FixedScores(table), ds, "test", EvalConfig(ks=[1, 10], sine_metrics=True, exclude_seen=True),
                          max_len=3, device=torch.device("cpu"))
    assert seen["sine_GAUC"] == pytest.approx(1.0)  # 6 was played before: never recommended
    assert seen["sine_AUC"] == pytest.approx((3 + 2.5) / 6)
    plain = evaluate_model(FixedScores(table), ds, "test", EvalConfig(ks=[1, 10]), 3, torch.device("cpu"))
    assert not any(k.startswith(("sine_", "n_sine")) for k in plain)


# ---- config -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"model": {"sine_interests": 1}}, "model.sine_interests must be >= 2, got 1"),
        ({"loss": {"sine_dcor_weight": -1.0}}, "loss.sine_dcor_weight must be >= 0"),
        ({"loss": {"sine_skip_weight": -0.5}}, "loss.sine_skip_weight must be >= 0"),
        ({"model": {"name": "sine", "skip_inputs": True}}, "model.skip_inputs does not apply to model.name = 'sine'"),
        ({"model": {"name": "sine"}, "loss": {"skipped_targets": "include"}}, "loss.skipped_targets must be 'ignore'"),
        ({"model": {"name": "sine"}, "loss": {"rec": "bce"}}, "loss.rec does not apply, leave it 'sampled_softmax'"),
        ({"train": {"early_stopping_metric": "sine_AUC"}}, "or, with eval.sine_metrics, one of sine_AUC"),
    ],
)
def test_bad_sine_config_is_a_config_error(values, message):
    with pytest.raises(ConfigError, match=message.replace("(", "\\(").replace(")", "\\)")):
        Config.from_dict(values)


# ---- training, evaluation, recommendation ------------------------------------------------


@pytest.fixture(scope="module")
def sine_run(dataset_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("sine") / "run"
    result = train(overrides=tiny(dataset_dir, run, "model.name=sine", "train.lr=0.01", "train.epochs=6",
                                  "eval.sine_metrics=true", "train.early_stopping_metric=sine_AUC"))
    return run, result


def test_tiny_run_beats_popularity_and_selects_on_validation(sine_run, dataset_dir):
    run, result = sine_run
    assert result.completed and result.test["n_kept"] > 0 and result.test["n_sine_examples"] > 0
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert result.history[-1]["valid"]["HR@10"] > popularity_hr10(dataset_dir)
    scores = [h["valid"]["sine_AUC"] for h in result.history]
    assert result.best_epoch == 1 + scores.index(max(scores))  # chosen on validation, never on test
    assert result.history[-1]["valid"]["sine_AUC"] > 0.55  # kept targets above their skipped tracks
    best = torch.load(run / "best.pt", weights_only=True)["model"]
    assert best["item_embedding.weight"][0].abs().max() == 0  # the padding row stays zero
    assert evaluate(run, "test") == result.test


def test_recommend_and_batch_recommend_a_trained_run(sine_run, dataset_dir, tmp_path):
    run, _ = sine_run
    rec = Recommender.load(run)
    ds = load_dataset(dataset_dir)
    items, skips = ds.session(0)
    session = ds.decode(items)
    skipped = [t for t, s in zip(session, skips.tolist()) if s]
    out = rec.recommend(session, skipped=skipped, k=5)
    assert len(out.items) == 5 and not set(out.items) & set(skipped)
    lines = ["session_id,item_id,skipped"]
    keys = []
    for s in range(30):
        items, skips = ds.session(s)
        names = ds.decode(items)
        if {n for n, k in zip(names, skips) if k} & {n for n, k in zip(names, skips) if not k}:
            continue  # recommend(skipped=...) flags by track, the batch by play: same only without mixes
        keys.append(f"s{s}")
        lines += [f"s{s},{n},{str(bool(k)).lower()}" for n, k in zip(names, skips)]
    path = tmp_path / "sessions.csv"
    path.write_text("\n".join(lines) + "\n")
    sessions = read_sessions(path, ds.vocab, skip_column="skipped")
    rows = [r for batch in recommend_sessions(rec, sessions, k=5, batch_size=1) for r in batch.to_pylist()]
    assert sorted(r["session"] for r in rows) == sorted(keys) and len(keys) > 10
    for row in rows:
        s = int(row["session"][1:])
        items, skips = ds.session(s)
        names = ds.decode(items)
        single = rec.recommend(names, skipped=[n for n, k in zip(names, skips) if k], k=5)
        assert row["items"] == single.items
        np.testing.assert_allclose(row["scores"], single.scores, rtol=1e-5)
    with pytest.raises(ConfigError, match="export is not supported for model 'sine'"):
        export(run, tmp_path / "out")


def test_training_with_batches_of_one(dataset_dir, tmp_path):
    result = train(overrides=tiny(dataset_dir, tmp_path / "one", "model.name=sine", "train.epochs=1",
                                  "eval.batch_size=1", "eval.sine_metrics=true", batch_size=1))
    assert result.completed and math.isfinite(result.history[0]["train_loss"])
    assert result.test["n_kept"] > 0 and 0 <= result.test["sine_GAUC"] <= 1


def test_cli_trains_sine(dataset_dir, tmp_path):
    from negrec_fast.cli import main

    run = tmp_path / "cli"
    assert main(["train", *tiny(dataset_dir, run, "model.name=sine", "train.epochs=1")]) == 0
    assert (run / "test_metrics.json").is_file()
    assert Path(run / "config.toml").read_text().count('name = "sine"') == 1
