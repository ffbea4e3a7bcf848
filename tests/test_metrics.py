"""Ranking metrics: hand-computed cases, agreement with ranx, the skip-aware accumulator."""

from __future__ import annotations

import math

import pytest
import torch

from negrec_fast.metrics import MetricAccumulator, hit_rate, mrr, ndcg, sampled_ranks, target_ranks

NEG = float("-inf")


def test_target_ranks_hand_computed_with_pessimistic_ties():
    scores = torch.tensor([[NEG, NEG, 0.3, 0.9, 0.3, 0.1]] * 3)
    ranks = target_ranks(scores, torch.tensor([2, 3, 5]))
    # item 2: item 3 scores higher and item 4 ties -> rank 3; -inf ids never outrank
    assert ranks.tolist() == [3, 1, 4]
    flat = torch.zeros(2, 6)
    assert target_ranks(flat, torch.tensor([2, 5])).tolist() == [6, 6]  # a constant model ranks last


def test_target_ranks_excludes_session_items_but_never_the_target():
    scores = torch.tensor([[NEG, NEG, 0.3, 0.9, 0.3, 0.1], [NEG, NEG, 0.3, 0.9, 0.3, 0.1]])
    exclude = torch.tensor([[0, 3, 2], [2, 3, 4]])  # padding 0 allowed; row 0 lists its target
    ranks = target_ranks(scores, torch.tensor([2, 5]), exclude=exclude)
    assert ranks.tolist() == [2, 1]
    assert scores[0, 3] == 0.9  # the caller's scores are not modified


def test_target_ranks_nan_target_is_worst_and_errors():
    scores = torch.tensor([[NEG, NEG, float("nan"), 0.9, 0.3]])
    assert target_ranks(scores, torch.tensor([2])).tolist() == [5]
    assert target_ranks(scores, torch.tensor([4])).tolist() == [2]  # NaN items never outrank
    shapes = r"expected scores \[B, V\] and targets \[B\], got \(1, 5\) and \(2,\)"
    with pytest.raises(ValueError, match=shapes):
        target_ranks(scores, torch.tensor([2, 3]))
    with pytest.raises(ValueError, match=r"targets must be item ids in \[0, 5\)"):
        target_ranks(scores, torch.tensor([5]))
    with pytest.raises(ValueError, match=r"exclude must be \[B, M\] with B=1, got shape \(3,\)"):
        target_ranks(scores, torch.tensor([2]), exclude=torch.tensor([1, 2, 3]))


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
    assert ranks.tolist() == [2, 1]
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
    with pytest.raises(ValueError, match="ranks are 1-based: got a rank < 1"):
        acc.add(torch.tensor([0]), target_skipped=torch.tensor([0]))
    with pytest.raises(ValueError, match=r"ks and skip_k must be positive integers, got ks=\(0, 5\)"):
        MetricAccumulator(ks=(0, 5))


def test_sampled_ranks_fixed_by_seed_and_never_sample_reserved_or_target():
    torch.manual_seed(0)
    scores = torch.randn(16, 40)
    targets = torch.randint(2, 40, (16,))
    a = sampled_ranks(scores, targets, 10, torch.Generator().manual_seed(7))
    b = sampled_ranks(scores, targets, 10, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and (a >= 1).all() and (a <= 11).all()
    assert (a <= target_ranks(scores, targets)).all()  # fewer competitors than the full catalogue
    # all 37 other real items as candidates: same as the full ranking over ids >= 2
    scores[:, :2] = 1e9  # reserved ids would outrank everything if they were drawn
    full = sampled_ranks(scores, targets, 37, torch.Generator().manual_seed(1))
    reference = scores.clone()
    reference[:, :2] = NEG
    assert torch.equal(full, target_ranks(reference, targets))
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
    assert torch.equal(cuda.cpu(), cpu)
    sampled = sampled_ranks(scores.cuda(), targets.cuda(), 10, torch.Generator().manual_seed(3))
    assert torch.equal(sampled.cpu(), sampled_ranks(scores, targets, 10, torch.Generator().manual_seed(3)))
