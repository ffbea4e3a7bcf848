"""Held-out example construction and the metrics of a model with known scores: hand-made
sessions, and a prepared synthetic dataset checked against loops written from the split rules."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from negrec_fast.config import Config, EvalConfig
from negrec_fast.data import prepare
from negrec_fast.evaluation import build_examples, evaluate_model
from negrec_fast.recommend import Recommender
from negrec_fast.synthetic import generate_mssd

CPU = torch.device("cpu")


def dataset(sessions: list[list[tuple[int, int]]], valid: list[int], test: list[int]) -> SimpleNamespace:
    """A processed-dataset stand-in from ``[(item, skipped), ...]`` per session."""
    lengths = [len(s) for s in sessions]
    return SimpleNamespace(
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        items=np.array([i for s in sessions for i, _ in s], dtype=np.uint32),
        skips=np.array([k for s in sessions for _, k in s], dtype=np.uint8),
        valid_target=np.array(valid, dtype=np.int32),
        test_target=np.array(test, dtype=np.int32),
    )


# session 0: 2 3s 4 5s 6 7s   -> valid target 4 (pos 2), test target 6 (pos 4)
# session 1: 8 9              -> no valid target, test target 9 (pos 1)
# session 2: 10s 11s          -> no kept play: no targets
DS = dataset(
    [[(2, 0), (3, 1), (4, 0), (5, 1), (6, 0), (7, 1)], [(8, 0), (9, 0)], [(10, 1), (11, 1)]],
    valid=[2, -1, -1],
    test=[4, 1, -1],
)


def test_examples_follow_the_split_rules():
    ex = build_examples(DS, "test", max_len=3)
    assert ex.sessions.tolist() == [0, 1]
    assert ex.inputs.tolist() == [[3, 4, 5], [0, 0, 8]]  # last max_len plays, left-padded
    assert ex.targets.tolist() == [6, 9]
    # held-out skipped of the test example: skipped plays in [t, len)
    assert list(zip(ex.skipped_example.tolist(), ex.skipped_items.tolist())) == [(0, 7)]

    ex = build_examples(DS, "valid", max_len=5)
    assert ex.inputs.tolist() == [[0, 0, 0, 2, 3]] and ex.targets.tolist() == [4]
    # held-out skipped of the validation example: skipped plays in [v, t)
    assert ex.skipped_items.tolist() == [5]
    with pytest.raises(ValueError, match="split must be 'valid' or 'test'"):
        build_examples(DS, "train", max_len=3)


class FixedScores(torch.nn.Module):
    """A model whose next-item scores are a fixed row per last input item."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table

    def next_query(self, items: torch.Tensor, skips: torch.Tensor | None = None) -> torch.Tensor:
        return items[:, -1]

    def score_all(self, last: torch.Tensor) -> torch.Tensor:
        scores = self.table[last].clone()
        scores[:, :2] = float("-inf")
        return scores


def test_metrics_rank_kept_targets_and_held_out_skips():
    v = 12
    table = torch.zeros(v, v)
    # after input ending in 5: target 6 ranked 2nd (behind 3), held-out skipped 7 ranked 1st
    table[5] = torch.linspace(0, 1, v)
    table[5, 7], table[5, 3], table[5, 6] = 10.0, 9.0, 8.0
    # after input ending in 8: target 9 ranked 1st
    table[8, 9] = 5.0
    metrics = evaluate_model(FixedScores(table), DS, "test", EvalConfig(ks=[1, 10]), max_len=3, device=torch.device("cpu"))
    # kept ranks: 3 (7 and 3 outrank 6), 1
    assert metrics["n_kept"] == 2 and metrics["n_skipped"] == 1
    assert metrics["HR@1"] == pytest.approx(0.5)
    assert metrics["MRR@10"] == pytest.approx((1 / 3 + 1) / 2)
    assert metrics["NDCG@10"] == pytest.approx((1 / np.log2(4) + 1) / 2)
    assert metrics["skip_MRR@10"] == pytest.approx(1.0)
    assert metrics["HR@10_gap"] == pytest.approx(0.0)
    # excluding seen items drops 3 (an input item) from the competitors of target 6
    excl = evaluate_model(FixedScores(table), DS, "test", EvalConfig(ks=[1, 10], exclude_seen=True), 3, torch.device("cpu"))
    assert excl["MRR@10"] == pytest.approx((1 / 2 + 1) / 2)


def test_exclude_seen_covers_every_earlier_play_and_a_seen_target_is_a_miss():
    # session 0 is longer than max_len: play 2 (pos 0) is outside the 2-play window of the test
    # target 6 but still a seen item; session 1's test target 8 repeats its first play
    ds = dataset([[(2, 0), (3, 0), (4, 0), (5, 0), (6, 0)], [(8, 0), (9, 0), (8, 0)]], valid=[-1, -1], test=[4, 2])
    table = torch.zeros(12, 12)
    table[5] = torch.linspace(0, 1, 12)
    table[5, 2], table[5, 6] = 9.0, 8.0  # seen item 2 outranks target 6
    table[9] = torch.linspace(0, 1, 12)
    table[9, 8] = 9.0  # the repeated target 8 would be first
    cfg = EvalConfig(ks=[1, 10], exclude_seen=True)
    metrics = evaluate_model(FixedScores(table), ds, "test", cfg, max_len=2, device=torch.device("cpu"))
    assert metrics["HR@1"] == pytest.approx(0.5)  # target 6 first once 2 is excluded; 8 is a miss
    assert metrics["MRR@10"] == pytest.approx(0.5)
    plain = evaluate_model(FixedScores(table), ds, "test", EvalConfig(ks=[1, 10]), 2, torch.device("cpu"))
    assert plain["HR@1"] == pytest.approx(0.5) and plain["MRR@10"] == pytest.approx((1 / 2 + 1) / 2)


def test_constant_model_scores_k_over_n_for_kept_and_skipped_tracks():
    metrics = evaluate_model(FixedScores(torch.zeros(12, 12)), DS, "test", EvalConfig(ks=[1, 10]), 3, torch.device("cpu"))
    assert metrics["HR@1"] == pytest.approx(1 / 10) and metrics["HR@10_skipped"] == pytest.approx(1.0)
    assert metrics["skip_MRR@10"] == pytest.approx(sum(1 / r for r in range(1, 11)) / 10)  # not 0


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    raw = generate_mssd(root / "log.csv", n_sessions=300, n_items=200, seed=4)
    return prepare(raw, root / "ds", format="mssd", progress=False)


class WindowScores(torch.nn.Module):
    """Scores that depend on every input play and its position, in exact integer arithmetic
    (a row scores the same alone or in a batch)."""

    def __init__(self, vocab_size: int, max_len: int, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.table = torch.randint(-10_000, 10_000, (vocab_size, vocab_size), generator=gen).double()
        self.weight = torch.arange(1, max_len + 1, dtype=torch.float64)

    def next_query(self, items: torch.Tensor, skips: torch.Tensor | None = None) -> torch.Tensor:
        return (self.table[items] * self.weight[:, None]).sum(dim=1)

    def score_all(self, query: torch.Tensor) -> torch.Tensor:
        scores = query.clone()
        scores[:, :2] = float("-inf")
        return scores


def split_positions(skips: np.ndarray) -> tuple[int | None, int | None]:
    """docs/design.md, leave-last-out: test target t = last kept play with t >= 1, validation
    target v = last kept play before t with v >= 1 (None when there is none)."""
    kept = [i for i in range(1, len(skips)) if not skips[i]]
    t = kept[-1] if kept else None
    v = kept[-2] if len(kept) >= 2 else None
    return v, t


def loop_examples(ds, split: str, max_len: int) -> list[tuple]:
    """(session, left-padded inputs, kept target, held-out skipped items) per example: the
    held-out skipped tracks are the skipped plays in [v, t) for validation, [t, len) for test."""
    out = []
    for s in range(len(ds)):
        items, skips = (np.asarray(a, dtype=np.int64) for a in ds.session(s))
        v, t = split_positions(skips)
        assert (ds.valid_target[s], ds.test_target[s]) == (-1 if v is None else v, -1 if t is None else t)
        pos, end = (v, t) if split == "valid" else (t, len(items))
        if pos is None:
            continue
        window = items[:pos].tolist()[-max_len:]
        held = [int(items[i]) for i in range(pos, end) if skips[i]]
        out.append((s, [0] * (max_len - len(window)) + window, int(items[pos]), held))
    return out


@pytest.mark.parametrize("split", ["valid", "test"])
def test_examples_match_a_loop_over_the_dataset(prepared, split):
    expected = loop_examples(prepared, split, max_len=5)
    ex = build_examples(prepared, split, max_len=5)
    got = [
        (int(s), ex.inputs[e].tolist(), int(ex.targets[e]), ex.skipped_items[ex.skipped_example == e].tolist())
        for e, s in enumerate(ex.sessions)
    ]
    assert got == expected
    assert len(expected) > 50 and sum(len(h) for *_, h in expected) > 20  # not a vacuous comparison


def loop_metrics(scores: torch.Tensor, item: int, ks=(1, 10)) -> dict[str, float]:
    """HR/NDCG/MRR@k of ``item`` averaged over every rank a random tie-break can give it."""
    competitors = [float(scores[j]) for j in range(2, len(scores)) if j != item]
    above = sum(x > float(scores[item]) for x in competitors)
    tied = sum(x == float(scores[item]) for x in competitors)
    ranks = range(above + 1, above + tied + 2)
    out = {}
    for k in ks:
        out[f"HR@{k}"] = sum(r <= k for r in ranks) / len(ranks)
        out[f"NDCG@{k}"] = sum(1 / np.log2(r + 1) for r in ranks if r <= k) / len(ranks)
        out[f"MRR@{k}"] = sum(1 / r for r in ranks if r <= k) / len(ranks)
    return out


def test_validation_metrics_match_a_loop(prepared):
    max_len = 5
    model = WindowScores(prepared.vocab_size, max_len, seed=0)
    cfg = EvalConfig(ks=[1, 10], batch_size=7)  # many batches
    metrics = evaluate_model(model, prepared, "valid", cfg, max_len, CPU)
    kept, skipped = [], []
    for _, inputs, target, held in loop_examples(prepared, "valid", max_len):
        scores = model.score_all(model.next_query(torch.tensor([inputs])))[0].float()
        kept.append(loop_metrics(scores, target))
        skipped += [loop_metrics(scores, item) for item in held]
    assert metrics["n_kept"] == len(kept) and metrics["n_skipped"] == len(skipped)
    for name in ("HR@1", "HR@10", "NDCG@10", "MRR@10"):
        assert metrics[name] == pytest.approx(np.mean([m[name] for m in kept]))
    assert metrics["skip_MRR@10"] == pytest.approx(np.mean([m["MRR@10"] for m in skipped]))
    assert metrics["HR@10_skipped"] == pytest.approx(np.mean([m["HR@10"] for m in skipped]))
    assert 0 < metrics["HR@10"] < 1


def test_sampled_candidates(prepared):
    model = WindowScores(prepared.vocab_size, 5, seed=2)
    full = evaluate_model(model, prepared, "test", EvalConfig(ks=[1, 10]), 5, CPU)
    # every other real item as a candidate: the full ranking
    every = EvalConfig(ks=[1, 10], sampled_candidates=prepared.n_items - 1)
    assert evaluate_model(model, prepared, "test", every, 5, CPU) == pytest.approx(full)
    sampled = [evaluate_model(model, prepared, "test", EvalConfig(ks=[1, 10], sampled_candidates=20, seed=seed), 5, CPU)
               for seed in (3, 3, 4)]
    assert sampled[0] == sampled[1] and sampled[0] != sampled[2]  # candidates fixed by eval.seed
    for name in ("HR@1", "HR@10", "NDCG@10", "MRR@10", "skip_MRR@10", "HR@10_skipped"):
        assert sampled[0][name] >= full[name]  # fewer competitors than the whole catalogue
    assert (sampled[0]["n_kept"], sampled[0]["n_skipped"]) == (full["n_kept"], full["n_skipped"])
    # ties among the candidates follow the same rule: a constant model ranks uniformly in 1..20
    flat = FixedScores(torch.zeros(prepared.vocab_size, prepared.vocab_size))
    out = evaluate_model(flat, prepared, "test", EvalConfig(ks=[1, 10], sampled_candidates=19), 5, CPU)
    assert out["HR@1"] == pytest.approx(1 / 20) and out["HR@10"] == pytest.approx(0.5)
    assert out["HR@10_skipped"] == pytest.approx(0.5)


@pytest.mark.parametrize("exclude_seen", [False, True])
def test_recommend_ranks_as_evaluation_does(prepared, exclude_seen):
    """The rank evaluation gives a target is its position in recommend()'s list for the same
    session and flag (a seen target: absent from the list, a miss in evaluation)."""
    max_len, ds = 5, prepared
    model = WindowScores(ds.vocab_size, max_len, seed=1)
    config = Config()
    config.data.max_len = max_len
    rec = Recommender(model, ds, config, CPU)
    k_all = ds.vocab_size - 1  # MRR@k_all = 1 / rank, 0 for an excluded target
    cfg = EvalConfig(ks=[k_all], exclude_seen=exclude_seen)
    ex = build_examples(ds, "test", max_len)
    for e in range(0, len(ex), 20):
        t = int(ex.positions[e])
        items = np.asarray(ds.session(int(ex.sessions[e]))[0], dtype=np.int64)
        out = rec.recommend(ds.decode(items[:t]), k=ds.n_items, exclude_seen=exclude_seen)
        assert exclude_seen or len(out.items) == ds.n_items
        for target in (int(items[t]), int(items[0])):  # the real target, and a repeat of a seen play
            one = dataset([[(int(i), 0) for i in items[:t]] + [(target, 0)]], valid=[-1], test=[t])
            got = evaluate_model(model, one, "test", cfg, max_len, CPU)[f"MRR@{k_all}"]
            name = ds.decode([target])[0]
            assert got == pytest.approx(1 / (out.items.index(name) + 1) if name in out.items else 0.0)
