"""Held-out example construction and the metrics of a model with known scores."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from negrec_fast.config import EvalConfig
from negrec_fast.evaluation import build_examples, evaluate_model


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

    def next_query(self, items: torch.Tensor) -> torch.Tensor:
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
