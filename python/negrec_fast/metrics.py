"""Ranking metrics for next-item prediction with one relevant item per example.

Ranks are 1-based and computed over the full catalogue by default.

Tie rule, the same for every metric: a target with ``g`` competitors scoring strictly above
it and ``t`` other competitors tied with it has a rank uniform on ``g + 1 .. g + t + 1``
(uniformly random tie-breaking), and each metric is its exact expected value over that
range, computed in closed form from cumulative sums (no sampling). So a model that gives
every item the same score gets ``HR@k = k / n`` for kept and skipped targets alike (n
competing items): ties neither flatter HR/NDCG/MRR nor the lower-is-better ``skip_MRR@10``.
Items scored ``-inf`` (reserved ids, excluded items) are not competitors; a target scored
NaN or ``-inf`` gets the worst rank (behind every other item, no ties), and NaN items never
outrank a target. Sampled-candidate ranks (:func:`sampled_ranks`) follow the same rule and
are only for comparison with papers that report them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

DEFAULT_KS = (1, 5, 10, 20)


class Ranks(NamedTuple):
    """Ranks under random tie-breaking: example ``b``'s rank is uniform on
    ``best[b] .. best[b] + ties[b]``. Functions taking ranks also accept a plain ``[B]`` int
    tensor of exact ranks (no ties)."""

    best: Tensor  # int64 [B], 1 + competitors scoring strictly above the target
    ties: Tensor  # int64 [B], other competitors scoring exactly the target's score


def _as_ranks(ranks: Ranks | Tensor) -> Ranks:
    if isinstance(ranks, Ranks):
        return ranks
    return Ranks(ranks, torch.zeros_like(ranks))


def _check_scores_targets(scores: Tensor, targets: Tensor) -> None:
    if scores.dim() != 2 or targets.dim() != 1 or targets.shape[0] != scores.shape[0]:
        raise ValueError(
            f"expected scores [B, V] and targets [B], got {tuple(scores.shape)} and {tuple(targets.shape)}"
        )


def _rank_of(target_scores: Tensor, candidate_scores: Tensor, holds_target: bool) -> Ranks:
    """Ranks of the targets among the candidates other than the target, ``-inf`` excluded.

    For a finite target, ``>`` and ``==`` already leave out ``-inf`` and NaN candidates; when
    the candidates hold the target's own column (``holds_target``), that column is the one tie
    taken back. An unrankable (NaN or ``-inf``) target gets the worst rank, after every other
    candidate."""
    target = target_scores[:, None]
    best = 1 + (candidate_scores > target).sum(dim=1)
    ties = (candidate_scores == target).sum(dim=1) - int(holds_target)
    unrankable = torch.isnan(target_scores) | torch.isneginf(target_scores)
    worst = candidate_scores.shape[1] + 1 - int(holds_target)
    return Ranks(torch.where(unrankable, worst, best), torch.where(unrankable, 0, ties))


def target_ranks(scores: Tensor, targets: Tensor, exclude: Tensor | None = None) -> Ranks:
    """:class:`Ranks` of ``targets[b]`` among all ``V`` scores of row ``b``.

    ``exclude``: optional ``[B, M]`` ids per row (e.g. the items already in the session,
    padding allowed) whose scores are set to ``-inf`` before ranking. A target listed there
    is excluded too (it could never be recommended) and gets the worst rank.
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
        scores = scores.masked_fill(drop, float("-inf"))
    return _rank_of(scores[rows, targets], scores, holds_target=True)


def sampled_ranks(scores: Tensor, targets: Tensor, n_candidates: int, generator: torch.Generator) -> Ranks:
    """:class:`Ranks` of each target among itself and ``n_candidates`` sampled negatives.

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
    return _rank_of(scores[rows, targets], candidate_scores, holds_target=False)


def _expected(ranks: Ranks | Tensor, k: int, gain) -> Tensor:
    """Per-example mean of ``gain(r)`` (0 beyond ``k``) over the rank range of each example:
    ``(G(best + ties) - G(best - 1)) / (ties + 1)`` with ``G`` the cumulative gain up to ``k``."""
    best, ties = _as_ranks(ranks)
    r = torch.arange(1, k + 1, dtype=torch.float64, device=best.device)
    cumulative = torch.cat([torch.zeros(1, dtype=torch.float64, device=best.device), gain(r).cumsum(0)])
    hi = cumulative[(best + ties).clamp(max=k)]
    lo = cumulative[(best - 1).clamp(max=k)]
    return (hi - lo) / (ties + 1).double()


def hit_rate(ranks: Ranks | Tensor, k: int) -> Tensor:
    """Per-example expected HR@k (= recall@k with one relevant item): P(rank <= k)."""
    return _expected(ranks, k, torch.ones_like)


def ndcg(ranks: Ranks | Tensor, k: int) -> Tensor:
    """Per-example expected NDCG@k with one relevant item: ``1 / log2(rank + 1)`` if rank <= k else 0."""
    return _expected(ranks, k, lambda r: 1.0 / torch.log2(r + 1.0))


def mrr(ranks: Ranks | Tensor, k: int) -> Tensor:
    """Per-example expected MRR@k: ``1 / rank`` if rank <= k else 0."""
    return _expected(ranks, k, torch.reciprocal)


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

    def add(self, ranks: Ranks | Tensor, *, target_skipped: Tensor) -> None:
        """Add ranks of ``B`` held-out targets (:class:`Ranks` or ``[B]`` exact ranks) with
        each target's own skip flag ``[B]``."""
        best, ties = _as_ranks(ranks)
        if best.dim() != 1 or ties.shape != best.shape or target_skipped.shape != best.shape:
            raise ValueError(
                f"ranks and target_skipped must both be [B], got {tuple(best.shape)} and "
                f"{tuple(target_skipped.shape)}"
            )
        if best.numel() and bool(((best < 1) | (ties < 0)).any()):
            raise ValueError("ranks are 1-based with ties >= 0: got a rank < 1 or negative ties")
        skipped = target_skipped.bool()
        kept_ranks, skipped_ranks = Ranks(best[~skipped], ties[~skipped]), Ranks(best[skipped], ties[skipped])
        self.n_kept += kept_ranks.best.numel()
        self.n_skipped += skipped_ranks.best.numel()
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


def candidate_ranks(target_scores: Tensor, example: Tensor, candidate_scores: Tensor) -> tuple[Ranks, Tensor]:
    """:class:`Ranks` of each target ``[E]`` among its own candidates (candidate ``m`` belongs to
    target ``example[m]``; the target itself is not a candidate), and each target's candidate
    count ``[E]``. The tie rule of the module: NaN and ``-inf`` candidates never outrank a
    target; a NaN or ``-inf`` target is behind all its candidates."""
    e = target_scores.shape[0]
    own = target_scores[example]
    above = torch.zeros(e, dtype=torch.long, device=target_scores.device).index_add_(
        0, example, (candidate_scores > own).long()
    )
    tied = torch.zeros_like(above).index_add_(0, example, (candidate_scores == own).long())
    n = torch.bincount(example, minlength=e)
    unrankable = torch.isnan(target_scores) | torch.isneginf(target_scores)
    return Ranks(torch.where(unrankable, n + 1, above + 1), torch.where(unrankable, 0, tied)), n


def pooled_auc(positive: Tensor, negative: Tensor) -> float:
    """P(a random positive scores above a random negative), a tie counting 1/2 (the expected
    value under random tie-breaking); a NaN or ``-inf`` positive is below every negative and a
    NaN negative below every other positive. Needs at least one of each."""
    if not positive.numel() or not negative.numel():
        raise ValueError("pooled_auc needs at least one positive and one negative score")
    neg = negative.double()
    neg = torch.where(torch.isnan(neg), float("-inf"), neg).sort().values
    pos = positive.double()
    below = torch.searchsorted(neg, pos, right=False)
    wins = below + 0.5 * (torch.searchsorted(neg, pos, right=True) - below)
    wins = torch.where(torch.isnan(pos) | torch.isneginf(pos), 0.0, wins)
    return float(wins.sum()) / (pos.numel() * neg.numel())


class SkipCandidateAccumulator:
    """SINE's protocol (Pan et al., RecSys 2023): each kept target ranked among its example's
    held-out skipped tracks (label 1 for the target, 0 for the skipped tracks).

    - ``sine_GAUC``: mean over examples with >= 1 skipped candidate of the example's AUC, the
      share of its candidates ranked below the target (every example weighs the same);
    - ``sine_NDCG``: over the same examples, ``1 / log2(rank + 1)`` of the target among its
      candidates (no cut-off);
    - ``sine_AUC``: the AUC of all targets against all skipped candidates pooled over examples
      (:func:`pooled_auc`; the targets of examples without a skipped candidate count too).

    Ties follow the module's rule (expected values under random tie-breaking). Metrics without
    examples are left out of :meth:`compute`; ``n_sine_examples`` is always there.
    """

    def __init__(self) -> None:
        self.gauc_sum = 0.0
        self.ndcg_sum = 0.0
        self.n_examples = 0
        self.positives: list[Tensor] = []
        self.negatives: list[Tensor] = []

    def add(self, target_scores: Tensor, example: Tensor, candidate_scores: Tensor) -> None:
        """Targets ``[E]`` and their skipped candidates: ``candidate_scores[m]`` belongs to target
        ``example[m]``."""
        if target_scores.dim() != 1 or example.shape != candidate_scores.shape or example.dim() != 1:
            raise ValueError(
                f"expected target_scores [E] and example, candidate_scores [M], got {tuple(target_scores.shape)}, "
                f"{tuple(example.shape)} and {tuple(candidate_scores.shape)}"
            )
        ranks, n = candidate_ranks(target_scores, example, candidate_scores)
        has = n > 0
        best, ties, n = ranks.best[has], ranks.ties[has], n[has].double()
        if n.numel():
            self.gauc_sum += float(((n - best + 1 - ties / 2) / n).sum())
            self.ndcg_sum += float(ndcg(Ranks(best, ties), int(n.max()) + 1).sum())
        self.n_examples += int(n.numel())
        self.positives.append(target_scores.detach().double().cpu())
        self.negatives.append(candidate_scores.detach().double().cpu())

    def compute(self) -> dict[str, float | int]:
        """``{"n_sine_examples": ..., "sine_AUC": ..., "sine_GAUC": ..., "sine_NDCG": ...}``."""
        out: dict[str, float | int] = {"n_sine_examples": self.n_examples}
        if self.n_examples:
            out["sine_AUC"] = pooled_auc(torch.cat(self.positives), torch.cat(self.negatives))
            out["sine_GAUC"] = self.gauc_sum / self.n_examples
            out["sine_NDCG"] = self.ndcg_sum / self.n_examples
        return out


__all__ = [
    "DEFAULT_KS",
    "MetricAccumulator",
    "Ranks",
    "SkipCandidateAccumulator",
    "candidate_ranks",
    "hit_rate",
    "mrr",
    "ndcg",
    "pooled_auc",
    "sampled_ranks",
    "target_ranks",
]
