"""Ranking metrics: hand-computed cases, ties against brute force over all tie-breaking orders,
agreement with ranx, the skip-aware accumulator."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from negrec_fast.metrics import MetricAccumulator, Ranks, hit_rate, mrr, ndcg, sampled_ranks, target_ranks

NEG = float("-inf")


def test_target_ranks_hand_computed_with_ties():
    scores = torch.tensor([[NEG, NEG, 0.3, 0.9, 0.3, 0.1]] * 3)
    ranks = target_ranks(scores, torch.tensor([2, 3, 5]))
    # item 2: item 3 scores higher and item 4 ties -> rank 2 or 3; -inf ids never compete
    assert ranks.best.tolist() == [2, 1, 4] and ranks.ties.tolist() == [1, 0, 0]
    assert hit_rate(ranks, 2).tolist() == [0.5, 1.0, 0.0]
    assert mrr(ranks, 10).tolist() == pytest.approx([(1 / 2 + 1 / 3) / 2, 1.0, 0.25])
    flat = torch.zeros(2, 6)
    flat[:, :2] = NEG
    ranks = target_ranks(flat, torch.tensor([2, 5]))  # a constant model: rank uniform on 1..4
    assert ranks.best.tolist() == [1, 1] and ranks.ties.tolist() == [3, 3]


def test_target_ranks_excludes_session_items_and_an_excluded_target_is_a_miss():
    scores = torch.tensor([[NEG, NEG, 0.3, 0.9, 0.3, 0.1], [NEG, NEG, 0.3, 0.9, 0.3, 0.1]])
    exclude = torch.tensor([[0, 3, 4], [2, 3, 4]])  # padding 0 allowed
    ranks = target_ranks(scores, torch.tensor([2, 5]), exclude=exclude)
    assert ranks.best.tolist() == [1, 1] and ranks.ties.tolist() == [0, 0]
    # a target that is excluded can never be recommended: worst rank, no ties
    ranks = target_ranks(scores, torch.tensor([3, 5]), exclude=torch.tensor([[3], [3]]))
    assert ranks.best.tolist() == [6, 3] and ranks.ties.tolist() == [0, 0]
    assert scores[0, 3] == 0.9  # the caller's scores are not modified


def test_target_ranks_nan_target_is_worst_and_errors():
    scores = torch.tensor([[NEG, NEG, float("nan"), 0.9, 0.3]])
    assert target_ranks(scores, torch.tensor([2])).best.tolist() == [5]
    assert target_ranks(scores, torch.tensor([4])).best.tolist() == [2]  # NaN items never outrank
    shapes = r"expected scores \[B, V\] and targets \[B\], got \(1, 5\) and \(2,\)"
    with pytest.raises(ValueError, match=shapes):
        target_ranks(scores, torch.tensor([2, 3]))
    with pytest.raises(ValueError, match=r"targets must be item ids in \[0, 5\)"):
        target_ranks(scores, torch.tensor([5]))
    with pytest.raises(ValueError, match=r"exclude must be \[B, M\] with B=1, got shape \(3,\)"):
        target_ranks(scores, torch.tensor([2]), exclude=torch.tensor([1, 2, 3]))


def test_constant_model_gets_k_over_n_for_kept_and_skipped_targets():
    """All items scored alike: every metric is its mean over ranks 1..n, for kept targets and
    skipped ones alike, so skip_MRR@10 is not the best possible value (0)."""
    n = 40
    scores = torch.zeros(6, n + 2)
    scores[:, :2] = NEG
    ranks = target_ranks(scores, torch.tensor([2, 7, 9, 20, 30, 41]))
    acc = MetricAccumulator(ks=(1, 5, 10, 20))
    acc.add(ranks, target_skipped=torch.tensor([0, 0, 0, 1, 1, 1]))
    out = acc.compute()
    for k in (1, 5, 10, 20):
        assert out[f"HR@{k}"] == pytest.approx(k / n)
        assert out[f"MRR@{k}"] == pytest.approx(sum(1 / r for r in range(1, k + 1)) / n)
        assert out[f"NDCG@{k}"] == pytest.approx(sum(1 / math.log2(r + 1) for r in range(1, k + 1)) / n)
    assert out["HR@10_skipped"] == pytest.approx(10 / n) and out["HR@10_gap"] == pytest.approx(0.0)
    assert out["skip_MRR@10"] == pytest.approx(out["MRR@10"]) and out["skip_MRR@10"] > 0.05


@pytest.mark.parametrize("seed", range(6))
def test_ties_match_the_mean_over_all_tie_breaking_orders(seed):
    """Brute force: average each metric over every order of the real items (ids >= 2), each
    order breaking ties between equal scores; -inf items never compete, excluded items get
    -inf, an excluded target is ranked behind every other item."""
    gen = torch.Generator().manual_seed(seed)
    v = 7
    scores = torch.randint(0, 3, (4, v), generator=gen).float()  # few values: many ties
    scores[:, :2] = NEG
    scores[1, 4] = NEG
    targets = torch.tensor([2, 3, 5, 6])
    exclude = torch.tensor([[0, 2], [6, 2], [5, 5], [0, 0]])  # rows 0 and 2: the target is excluded
    for ex in (None, exclude):
        ranks = target_ranks(scores, targets, exclude=ex)
        for b in range(4):
            row = scores[b].clone()
            if ex is not None:
                row[ex[b]] = NEG
            sums = {"hr": [0.0] * 7, "ndcg": [0.0] * 7, "mrr": [0.0] * 7}
            orders = list(itertools.permutations(range(2, v)))
            for order in orders:
                tiebreak = {item: i for i, item in enumerate(order)}
                t = int(targets[b])
                if row[t] == NEG:
                    rank = v - 1 + 1  # behind all other items, reserved ones included
                else:
                    rank = 1 + sum(
                        1 for j in range(2, v)
                        if j != t and row[j] != NEG and (row[j] > row[t] or (row[j] == row[t] and tiebreak[j] < tiebreak[t]))
                    )
                for k in range(1, 7):
                    hit = rank <= k
                    sums["hr"][k] += hit
                    sums["ndcg"][k] += hit / math.log2(rank + 1)
                    sums["mrr"][k] += hit / rank
            for k in range(1, 7):
                one = Ranks(ranks.best[b : b + 1], ranks.ties[b : b + 1])
                assert hit_rate(one, k).item() == pytest.approx(sums["hr"][k] / len(orders))
                assert ndcg(one, k).item() == pytest.approx(sums["ndcg"][k] / len(orders))
                assert mrr(one, k).item() == pytest.approx(sums["mrr"][k] / len(orders))


def test_metric_values_hand_computed():
    ranks = torch.tensor([1, 2, 3, 10, 11])
    assert hit_rate(ranks, 10).tolist() == [1, 1, 1, 1, 0]
    assert ndcg(ranks, 10).tolist() == pytest.approx([1, 1 / math.log2(3), 0.5, 1 / math.log2(11), 0])
    assert mrr(ranks, 10).tolist() == pytest.approx([1, 0.5, 1 / 3, 0.1, 0])
    assert mrr(ranks, 2).tolist() == pytest.approx([1, 0.5, 0, 0, 0])
    assert ndcg(ranks, 1).tolist() == [1, 0, 0, 0, 0]


def test_accumulator_means_over_batches():
    acc = MetricAccumulator(ks=(1, 3))
    acc.add(torch.tensor([1, 4]), target_skipped=torch.tensor([False, False]))
    acc.add(torch.tensor([2]), target_skipped=torch.tensor([False]))
    out = acc.compute()
    assert out["n_kept"] == 3 and out["n_skipped"] == 0
    assert out["HR@1"] == pytest.approx(1 / 3)
    assert out["HR@3"] == pytest.approx(2 / 3)
    assert out["MRR@3"] == pytest.approx((1 + 0.5) / 3)
    assert out["NDCG@3"] == pytest.approx((1 + 1 / math.log2(3)) / 3)
    assert out["HR@10_kept"] == pytest.approx(1.0)
    assert "skip_MRR@10" not in out and "HR@10_gap" not in out  # no skipped targets yet
    acc.reset()
    assert acc.compute() == {"n_kept": 0, "n_skipped": 0}


def test_skip_metrics_use_each_targets_own_flag_not_the_last_input():
    """Session 2 3 4 | 5 6: inputs end with a SKIPPED play (4) but the test target 5 is kept;
    the held-out play 6 was skipped. Flags come from the targets' own skip bits."""
    items = torch.tensor([2, 3, 4, 5, 6])
    skips = torch.tensor([False, False, True, False, True])
    inputs_end, heldout = 3, torch.tensor([3, 4])  # test target t = 3 and the skipped play after it
    scores = torch.tensor([[NEG, NEG, 0.0, 0.1, 0.2, 0.8, 0.9]])  # item 6 first, item 5 second
    ranks = target_ranks(scores.expand(2, -1), items[heldout])
    assert ranks.best.tolist() == [2, 1] and ranks.ties.tolist() == [0, 0]
    acc = MetricAccumulator(ks=(1, 10))
    acc.add(ranks, target_skipped=skips[heldout])
    out = acc.compute()
    assert skips[inputs_end - 1]  # the last input was skipped: using it would flip the groups
    assert out["n_kept"] == 1 and out["n_skipped"] == 1
    assert out["MRR@10"] == pytest.approx(0.5) and out["HR@1"] == 0.0  # item 5 (kept) at rank 2
    assert out["skip_MRR@10"] == pytest.approx(1.0)  # item 6 (skipped) at rank 1: bad model
    assert out["HR@10_kept"] == 1.0 and out["HR@10_skipped"] == 1.0 and out["HR@10_gap"] == 0.0
    with pytest.raises(TypeError, match="target_skipped"):
        acc.add(ranks)  # the flag must be passed explicitly


def test_skip_gap_and_errors():
    acc = MetricAccumulator()
    acc.add(torch.tensor([1, 2, 30, 5, 50]), target_skipped=torch.tensor([0, 0, 0, 1, 1]))
    out = acc.compute()
    assert out["HR@10_kept"] == pytest.approx(2 / 3)
    assert out["HR@10_skipped"] == pytest.approx(0.5)
    assert out["HR@10_gap"] == pytest.approx(2 / 3 - 0.5)
    assert out["skip_MRR@10"] == pytest.approx(0.2 / 2)
    shapes = r"ranks and target_skipped must both be \[B\], got \(2,\) and \(3,\)"
    with pytest.raises(ValueError, match=shapes):
        acc.add(torch.tensor([1, 2]), target_skipped=torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="ranks are 1-based with ties >= 0: got a rank < 1"):
        acc.add(torch.tensor([0]), target_skipped=torch.tensor([0]))
    with pytest.raises(ValueError, match="negative ties"):
        acc.add(Ranks(torch.tensor([1]), torch.tensor([-1])), target_skipped=torch.tensor([0]))
    with pytest.raises(ValueError, match=r"ks and skip_k must be positive integers, got ks=\(0, 5\)"):
        MetricAccumulator(ks=(0, 5))


def test_sampled_ranks_fixed_by_seed_and_never_sample_reserved_or_target():
    torch.manual_seed(0)
    scores = torch.randn(16, 40)
    targets = torch.randint(2, 40, (16,))
    a = sampled_ranks(scores, targets, 10, torch.Generator().manual_seed(7))
    b = sampled_ranks(scores, targets, 10, torch.Generator().manual_seed(7))
    assert torch.equal(a.best, b.best) and (a.best >= 1).all() and (a.best <= 11).all() and (a.ties == 0).all()
    assert (a.best <= target_ranks(scores, targets).best).all()  # fewer competitors than the full catalogue
    # all 37 other real items as candidates: same as the full ranking over ids >= 2
    scores[:, :2] = 1e9  # reserved ids would outrank everything if they were drawn
    full = sampled_ranks(scores, targets, 37, torch.Generator().manual_seed(1))
    reference = scores.clone()
    reference[:, :2] = NEG
    expected = target_ranks(reference, targets)
    assert torch.equal(full.best, expected.best) and torch.equal(full.ties, expected.ties)
    # the same tie rule: a constant model ranks the target uniformly among itself and the N candidates
    flat = sampled_ranks(torch.zeros(16, 40), targets, 9, torch.Generator().manual_seed(2))
    assert (flat.best == 1).all() and (flat.ties == 9).all()
    assert hit_rate(flat, 5).tolist() == pytest.approx([0.5] * 16)
    with pytest.raises(ValueError, match=r"n_candidates must be in \[1, 37\] for 40 ids, got 38"):
        sampled_ranks(scores, targets, 38, torch.Generator())


def test_agrees_with_ranx_on_random_rankings():
    ranx = pytest.importorskip("ranx")
    gen = torch.Generator().manual_seed(5)
    b, v, ks = 40, 60, (1, 5, 10, 20)
    scores = torch.rand(b, v, generator=gen, dtype=torch.float64)
    scores[:, :2] = NEG
    targets = torch.randint(2, v, (b,), generator=gen)
    ranks = target_ranks(scores, targets)
    assert (ranks.ties == 0).all()  # untied: ranx's order is the only one
    qrels = ranx.Qrels({f"q{i:03d}": {f"d{int(t)}": 1} for i, t in enumerate(targets)})
    run = ranx.Run({f"q{i:03d}": {f"d{j}": float(scores[i, j]) for j in range(2, v)} for i in range(b)})
    names = [f"{m}@{k}" for k in ks for m in ("hit_rate", "ndcg", "mrr")]
    expected = ranx.evaluate(qrels, run, names, return_mean=False)
    acc = MetricAccumulator(ks=ks)
    acc.add(ranks, target_skipped=torch.zeros(b, dtype=torch.bool))
    means = acc.compute()
    ours = {"hit_rate": hit_rate, "ndcg": ndcg, "mrr": mrr}
    short = {"hit_rate": "HR", "ndcg": "NDCG", "mrr": "MRR"}
    for k in ks:
        for metric, fn in ours.items():
            per_query = torch.as_tensor(expected[f"{metric}@{k}"], dtype=torch.float64)
            torch.testing.assert_close(fn(ranks, k), per_query)
            assert means[f"{short[metric]}@{k}"] == pytest.approx(float(per_query.mean()))
    assert 0 < means["HR@10"] < 1  # the comparison covers hits and misses


@pytest.mark.gpu
def test_cuda_ranks_match_cpu():
    gen = torch.Generator().manual_seed(2)
    scores = torch.rand(8, 50, generator=gen)
    targets = torch.randint(2, 50, (8,), generator=gen)
    exclude = torch.randint(0, 50, (8, 5), generator=gen)
    cpu = target_ranks(scores, targets, exclude=exclude)
    cuda = target_ranks(scores.cuda(), targets.cuda(), exclude=exclude.cuda())
    assert all(torch.equal(c.cpu(), r) for c, r in zip(cuda, cpu))
    sampled = sampled_ranks(scores.cuda(), targets.cuda(), 10, torch.Generator().manual_seed(3))
    reference = sampled_ranks(scores, targets, 10, torch.Generator().manual_seed(3))
    assert all(torch.equal(c.cpu(), r) for c, r in zip(sampled, reference))
