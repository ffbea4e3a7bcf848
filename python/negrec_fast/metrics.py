"""Ranking metrics for next-item prediction with one relevant item per example.

Ranks are 1-based and computed over the full catalogue by default. Ties count against
the target (pessimistic): ``rank = 1 + #{other items j : score_j >= score_target}``, so a
model that gives every item the same score ranks each target last, not first. Items
scored ``-inf`` (reserved ids, excluded items) never outrank the target, and a NaN target
score gets the worst rank. Sampled-candidate ranks (:func:`sampled_ranks`) are only for
comparison with papers that report them.
"""

from __future__ import annotations

import torch
from torch import Tensor

DEFAULT_KS = (1, 5, 10, 20)


def _check_scores_targets(scores: Tensor, targets: Tensor) -> None:
    if scores.dim() != 2 or targets.dim() != 1 or targets.shape[0] != scores.shape[0]:
        raise ValueError(
            f"expected scores [B, V] and targets [B], got {tuple(scores.shape)} and {tuple(targets.shape)}"
        )


def _rank_of(target_scores: Tensor, candidate_scores: Tensor, not_target: Tensor) -> Tensor:
    """1 + count of candidates (other than the target) scoring >= the target, -inf excluded."""
    outrank = (candidate_scores >= target_scores[:, None]) & ~torch.isneginf(candidate_scores) & not_target
    ranks = 1 + outrank.sum(dim=1)
    worst = 1 + not_target.sum(dim=1)
    return torch.where(torch.isnan(target_scores), worst, ranks)


def target_ranks(scores: Tensor, targets: Tensor, exclude: Tensor | None = None) -> Tensor:
    """``[B]`` int64 1-based rank of ``targets[b]`` among all ``V`` scores of row ``b``.

    ``exclude``: optional ``[B, M]`` ids per row (e.g. the items already in the session,
    padding allowed) whose scores are set to ``-inf`` before ranking, except the row's
    target itself, which is never excluded.
    """
    _check_scores_targets(scores, targets)
    b, v = scores.shape
    rows = torch.arange(b, device=scores.device)
    if b and (targets.min() < 0 or targets.max() >= v):
        raise ValueError(f"targets must be item ids in [0, {v}), got a value out of range")
    if exclude is not None:
        if exclude.dim() != 2 or exclude.shape[0] != b:
            raise ValueError(f"exclude must be [B, M] with B={b}, got shape {tuple(exclude.shape)}")
        drop = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, exclude.long(), True)
        drop[rows, targets] = False
        scores = scores.masked_fill(drop, float("-inf"))
    not_target = torch.ones_like(scores, dtype=torch.bool)
    not_target[rows, targets] = False
    return _rank_of(scores[rows, targets], scores, not_target)


def sampled_ranks(scores: Tensor, targets: Tensor, n_candidates: int, generator: torch.Generator) -> Tensor:
    """``[B]`` rank of each target among itself and ``n_candidates`` sampled negatives.

    Negatives are drawn uniformly without replacement from the non-reserved items (ids >= 2)
    other than the target, from ``generator`` (seed it to fix the candidates across runs).
    Use only when asked to compare with sampled-metric papers: they are biased.
    """
    _check_scores_targets(scores, targets)
    b, v = scores.shape
    if not 1 <= n_candidates <= v - 3:
        raise ValueError(f"n_candidates must be in [1, {v - 3}] for {v} ids, got {n_candidates}")
    keys = torch.rand(b, v, generator=generator, device=generator.device).to(scores.device)
    keys[:, :2] = float("inf")
    rows = torch.arange(b, device=scores.device)
    keys[rows, targets] = float("inf")
    candidates = keys.topk(n_candidates, dim=1, largest=False).indices
    candidate_scores = scores.gather(1, candidates)
    return _rank_of(scores[rows, targets], candidate_scores, torch.ones_like(candidates, dtype=torch.bool))


def hit_rate(ranks: Tensor, k: int) -> Tensor:
    """Per-example HR@k (= recall@k with one relevant item): 1.0 if rank <= k else 0.0."""
    return (ranks <= k).double()


def ndcg(ranks: Tensor, k: int) -> Tensor:
    """Per-example NDCG@k with one relevant item: ``1 / log2(rank + 1)`` if rank <= k else 0."""
    r = ranks.double()
    return torch.where(ranks <= k, 1.0 / torch.log2(r + 1.0), 0.0)


def mrr(ranks: Tensor, k: int) -> Tensor:
    """Per-example MRR@k: ``1 / rank`` if rank <= k else 0."""
    return torch.where(ranks <= k, 1.0 / ranks.double(), 0.0)


class MetricAccumulator:
    """Sums per-example metrics over batches of held-out targets.

    Each held-out target carries ITS OWN skip flag (``target_skipped``), passed explicitly
    by the caller: never derive it from the last input play. Kept targets give
    ``HR@k``, ``NDCG@k``, ``MRR@k`` for every k in ``ks``. Skipped targets (held-out
    tracks the user skipped; the model should rank them low) give ``skip_MRR@{skip_k}``
    (mean MRR@skip_k over skipped targets, lower is better), ``HR@{skip_k}_skipped``, and
    with kept targets too ``HR@{skip_k}_kept`` and ``HR@{skip_k}_gap`` (kept - skipped).
    Metrics of a group with no targets are left out of :meth:`compute`; ``n_kept`` and
    ``n_skipped`` are always there.
    """

    def __init__(self, ks: tuple[int, ...] = DEFAULT_KS, skip_k: int = 10) -> None:
        if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in (*ks, skip_k)):
            raise ValueError(f"ks and skip_k must be positive integers, got ks={ks!r}, skip_k={skip_k!r}")
        self.ks = tuple(ks)
        self.skip_k = skip_k
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.n_kept = 0
        self.n_skipped = 0

    def add(self, ranks: Tensor, *, target_skipped: Tensor) -> None:
        """Add ``[B]`` ranks of held-out targets with each target's own skip flag ``[B]``."""
        if ranks.dim() != 1 or target_skipped.shape != ranks.shape:
            raise ValueError(
                f"ranks and target_skipped must both be [B], got {tuple(ranks.shape)} and "
                f"{tuple(target_skipped.shape)}"
            )
        if ranks.numel() and int(ranks.min()) < 1:
            raise ValueError("ranks are 1-based: got a rank < 1")
        skipped = target_skipped.bool()
        kept_ranks, skipped_ranks = ranks[~skipped], ranks[skipped]
        self.n_kept += kept_ranks.numel()
        self.n_skipped += skipped_ranks.numel()
        k = self.skip_k
        values = {f"HR@{k}_kept": hit_rate(kept_ranks, k)}
        for j in self.ks:
            values[f"HR@{j}"] = hit_rate(kept_ranks, j)
            values[f"NDCG@{j}"] = ndcg(kept_ranks, j)
            values[f"MRR@{j}"] = mrr(kept_ranks, j)
        values[f"HR@{k}_skipped"] = hit_rate(skipped_ranks, k)
        values[f"skip_MRR@{k}"] = mrr(skipped_ranks, k)
        sums = torch.stack([v.sum() for v in values.values()]).tolist()  # one device sync
        for name, total in zip(values, sums):
            self.sums[name] = self.sums.get(name, 0.0) + total

    def compute(self) -> dict[str, float | int]:
        """Means so far, e.g. ``{"HR@10": ..., "NDCG@10": ..., "skip_MRR@10": ...}``."""
        k = self.skip_k
        out: dict[str, float | int] = {"n_kept": self.n_kept, "n_skipped": self.n_skipped}
        if self.n_kept:
            for name in [f"{m}@{j}" for j in self.ks for m in ("HR", "NDCG", "MRR")]:
                out[name] = self.sums[name] / self.n_kept
            out[f"HR@{k}_kept"] = self.sums[f"HR@{k}_kept"] / self.n_kept
        if self.n_skipped:
            out[f"skip_MRR@{k}"] = self.sums[f"skip_MRR@{k}"] / self.n_skipped
            out[f"HR@{k}_skipped"] = self.sums[f"HR@{k}_skipped"] / self.n_skipped
        if self.n_kept and self.n_skipped:
            out[f"HR@{k}_gap"] = out[f"HR@{k}_kept"] - out[f"HR@{k}_skipped"]
        return out


__all__ = [
    "DEFAULT_KS",
    "MetricAccumulator",
    "hit_rate",
    "mrr",
    "ndcg",
    "sampled_ranks",
    "target_ranks",
]
