"""Evaluation: full-catalogue ranking of held-out plays, with skip down-ranking.

For every session with a target in the split, the model reads the plays before the target
(the last ``max_len`` of them) and scores the whole catalogue (reserved ids never rank).

- The *kept* target (the split's target play) gives HR@K, NDCG@K and MRR@K.
- The *held-out skipped* tracks (skipped plays from the target up to the next split
  boundary, see docs/design.md) are ranked against the same scores: ``skip_MRR@10`` is their
  MRR@10 (lower is better: skipped tracks should be ranked down), and ``HR@10_kept``,
  ``HR@10_skipped`` and ``HR@10_gap`` compare hit rates of kept and skipped held-out tracks.
  Each held-out track carries its own skip flag; nothing is read from the last input.
- ``exclude_seen`` (default False, as in :meth:`Recommender.recommend`) never ranks the plays
  before the target (all of them, not only the last ``max_len``): a held-out track among them
  is a miss (worst rank), since a recommender that excludes seen items never returns it. Both
  give the same ranking for the same flag.
- Ties follow :mod:`negrec_fast.metrics`: each metric is its expected value under random
  tie-breaking.
- ``sampled_candidates = N`` ranks each held-out track against N negatives fixed by seed
  instead of the whole catalogue (only on explicit request: sampled metrics mislead).
- ``sine_metrics`` adds SINE's protocol (Pan et al., RecSys 2023) from the same scores: each
  kept target against its example's held-out skipped tracks (those of another item; with
  ``exclude_seen``, seen ones score ``-inf``): ``sine_AUC``, ``sine_GAUC``, ``sine_NDCG``
  (:class:`negrec_fast.metrics.SkipCandidateAccumulator`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from negrec_fast.config import EvalConfig
from negrec_fast.metrics import MetricAccumulator, Ranks, SkipCandidateAccumulator, sampled_ranks, target_ranks
from negrec_fast.run_folder import load_run

SKIP_K = 10


@dataclass
class EvalExamples:
    """Held-out examples of one split, as numpy arrays."""

    inputs: np.ndarray  # int64 [E, max_len], left-padded
    input_skips: np.ndarray  # bool [E, max_len], True where the input play was skipped
    targets: np.ndarray  # int64 [E] kept target item
    skipped_example: np.ndarray  # int64 [M] example index of each held-out skipped track
    skipped_items: np.ndarray  # int64 [M] item of each held-out skipped track
    sessions: np.ndarray  # int64 [E] session index
    positions: np.ndarray  # int64 [E] position of the kept target in its session

    def __len__(self) -> int:
        return len(self.targets)


def build_examples(dataset, split: str, max_len: int) -> EvalExamples:
    """Examples of ``split`` ("valid" or "test") from a processed dataset (vectorised)."""
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    pos_all = np.asarray(dataset.valid_target if split == "valid" else dataset.test_target, dtype=np.int64)
    sessions = np.nonzero(pos_all >= 1)[0]
    offsets = np.asarray(dataset.offsets, dtype=np.int64)
    items = np.asarray(dataset.items)
    skips = np.asarray(dataset.skips)
    starts = offsets[sessions]
    pos = pos_all[sessions]
    lengths = offsets[sessions + 1] - starts

    cols = np.arange(max_len)
    first_real = max_len - np.minimum(pos, max_len)
    src = starts[:, None] + pos[:, None] - max_len + cols[None, :]
    real = cols[None, :] >= first_real[:, None]
    inputs = np.where(real, items[np.where(real, src, 0)], 0).astype(np.int64)
    input_skips = real & (skips[np.where(real, src, 0)] != 0)
    targets = items[starts + pos].astype(np.int64)

    end = lengths.copy()
    if split == "valid":
        test = np.asarray(dataset.test_target, dtype=np.int64)[sessions]
        end = np.where(test > pos, test, lengths)
    span = end - pos
    example = np.repeat(np.arange(len(sessions)), span)
    within = np.arange(span.sum()) - np.repeat(np.cumsum(span) - span, span)
    play = np.repeat(starts + pos, span) + within
    is_skip = skips[play] != 0
    return EvalExamples(
        inputs=inputs,
        input_skips=input_skips,
        targets=targets,
        skipped_example=example[is_skip].astype(np.int64),
        skipped_items=items[play[is_skip]].astype(np.int64),
        sessions=sessions.astype(np.int64),
        positions=pos,
    )


def seen_items(dataset, examples: EvalExamples, lo: int, hi: int) -> np.ndarray:
    """``int64 [hi - lo, P]``: all plays before the target of examples ``lo:hi`` (not only the
    last ``max_len``), right-padded with 0: what ``exclude_seen`` never ranks."""
    pos = examples.positions[lo:hi]
    starts = np.asarray(dataset.offsets, dtype=np.int64)[examples.sessions[lo:hi]]
    cols = np.arange(int(pos.max(initial=0)))
    real = cols[None, :] < pos[:, None]
    return np.where(real, np.asarray(dataset.items)[np.where(real, starts[:, None] + cols, 0)], 0).astype(np.int64)


@torch.no_grad()
def evaluate_model(model, dataset, split: str, cfg: EvalConfig, max_len: int, device: torch.device) -> dict[str, float]:
    """Metrics of ``model`` on ``split``: HR/NDCG/MRR@K over kept targets and skip down-ranking.

    ``cfg.exclude_seen`` ranks as ``Recommender.recommend(exclude_seen=...)`` does (input plays
    never recommended, held-out tracks among them included); evaluation has no list of extra
    tracks to exclude like recommend's ``skipped``."""
    examples = build_examples(dataset, split, max_len)
    was_training = model.training
    model.eval()
    acc = MetricAccumulator(tuple(cfg.ks), skip_k=SKIP_K)
    sine = SkipCandidateAccumulator() if cfg.sine_metrics else None
    order = np.argsort(examples.skipped_example, kind="stable")
    skip_ex, skip_items = examples.skipped_example[order], examples.skipped_items[order]
    generator = torch.Generator().manual_seed(cfg.seed)
    for lo in range(0, len(examples), cfg.batch_size):
        hi = min(lo + cfg.batch_size, len(examples))
        inputs = torch.from_numpy(examples.inputs[lo:hi]).to(device)
        input_skips = torch.from_numpy(examples.input_skips[lo:hi]).to(device)
        scores = model.score_all(model.next_query(inputs, input_skips)).float()
        a, b = np.searchsorted(skip_ex, [lo, hi])
        rows = torch.cat([torch.arange(hi - lo), torch.from_numpy(skip_ex[a:b] - lo)]).to(device)
        held_out = torch.from_numpy(np.concatenate([examples.targets[lo:hi], skip_items[a:b]])).to(device)
        skipped = torch.arange(len(held_out), device=device) >= hi - lo
        seen = torch.from_numpy(seen_items(dataset, examples, lo, hi)).to(device)[rows] if cfg.exclude_seen else None
        acc.add(_rank(scores[rows], held_out, seen, cfg, generator), target_skipped=skipped)
        if sine is not None:
            sine.add(*_skip_candidates(scores[rows, held_out], rows, held_out, seen, hi - lo))
    model.train(was_training)
    return acc.compute() | (sine.compute() if sine is not None else {})


def _skip_candidates(held_scores, rows, held_out, seen, n_targets: int):
    """``(target_scores, example, candidate_scores)`` for SINE's protocol from the held-out
    tracks (the ``n_targets`` kept targets first): skipped tracks of the target's own item are
    no candidates; ``seen`` items (``exclude_seen``) score ``-inf``."""
    if seen is not None:
        held_scores = held_scores.masked_fill((seen == held_out[:, None]).any(dim=1), float("-inf"))
    example = rows[n_targets:]
    other = held_out[n_targets:] != held_out[:n_targets][example]
    return held_scores[:n_targets], example[other], held_scores[n_targets:][other]


def _rank(scores: torch.Tensor, held_out: torch.Tensor, seen: torch.Tensor | None, cfg: EvalConfig, generator) -> Ranks:
    """Rank of each held-out item in its row: full catalogue (``seen`` items excluded when
    given), or sampled candidates on request."""
    if cfg.sampled_candidates:
        return sampled_ranks(scores, held_out, cfg.sampled_candidates, generator)
    return target_ranks(scores, held_out, exclude=seen)


def evaluate(run_dir, split: str = "test", *, checkpoint: str = "best", device: str = "cpu") -> dict[str, float]:
    """Metrics of a finished run's checkpoint on ``split``; also written to ``RUN_DIR/eval_<split>.json``."""
    run = load_run(run_dir, checkpoint=checkpoint, device=device)
    cfg = run.config
    metrics = evaluate_model(run.model, run.dataset, split, cfg.eval, cfg.data.max_len, run.device)
    out = Path(run_dir) / f"eval_{split}.json"
    out.write_text(json.dumps({"split": split, "checkpoint": checkpoint, "metrics": metrics}, indent=2) + "\n")
    return metrics


def format_table(metrics: dict[str, float]) -> str:
    """Two-column text table of a metrics dict."""
    width = max(len(k) for k in metrics)
    return "\n".join(
        f"{k:<{width}}  {int(v) if k.startswith('n_') else f'{v:.4f}'}" for k, v in metrics.items()
    )
