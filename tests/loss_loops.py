"""Loop-based references of the losses, written from their formulas (not from the vectorised code).

Every function walks rows / positions / candidates with plain Python loops over float64
torch scalars, so torch autograd of these loops gives reference gradients too. Each returns
``(per_row, mean)``: the per-row (or per-position) losses as nested lists of 0-dim tensors
(0 where a row carries no loss) and the mean the formula defines.
"""

from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-8  # F.normalize's floor on the norm


def lse(values: list[Tensor]) -> Tensor:
    """log(sum(exp(v))) of a list of scalars, shifted by their (constant) maximum."""
    m = max(float(v.detach()) for v in values)
    total = values[0].new_zeros(())
    for v in values:
        total = total + torch.exp(v - m)
    return m + torch.log(total)


def dot(u: Tensor, v: Tensor) -> Tensor:
    total = u.new_zeros(())
    for k in range(u.shape[0]):
        total = total + u[k] * v[k]
    return total


def norm(u: Tensor) -> Tensor:
    return torch.sqrt(dot(u, u))


def mean_of(values: list[Tensor], count: int) -> Tensor:
    total = values[0].new_zeros(()) if values else torch.zeros((), dtype=torch.float64)
    for v in values:
        total = total + v
    return total / max(count, 1)


def sampled_softmax(query, weight, targets, negatives, *, neg_logq=None, target_logq=None,
                    temperature=1.0, ignore_index=0):
    """Row n (target t_n != ignore_index) scores the batch's targets and the shared negatives:
    logit(c) = q_n . w_c / T - logQ(c). Left out: padding targets, other rows whose target is
    t_n, negatives equal to t_n. loss_n = logsumexp(kept logits) - logit(row n's own target)."""
    targets, negatives = [int(t) for t in targets], [int(c) for c in negatives]
    per_row, valid = [], 0
    for n, t in enumerate(targets):
        if t == ignore_index:
            per_row.append(query.new_zeros(()))
            continue
        valid += 1
        logits, positive = [], None
        for m, c in enumerate(targets):
            logit = dot(query[n], weight[c]) / temperature
            if target_logq is not None:
                logit = logit - target_logq[m]
            if m == n:
                positive = logit
                logits.append(logit)
            elif c != ignore_index and c != t:
                logits.append(logit)
        for k, c in enumerate(negatives):
            if c == t:
                continue
            logit = dot(query[n], weight[c]) / temperature
            if neg_logq is not None:
                logit = logit - neg_logq[k]
            logits.append(logit)
        per_row.append(lse(logits) - positive)
    return per_row, mean_of(per_row, valid)


def full_softmax(query, weight, targets, *, temperature=1.0, ignore_index=0, n_reserved=2):
    """Every item id >= n_reserved is a candidate; loss_n = logsumexp - logit(t_n)."""
    per_row, valid = [], 0
    for n, t in enumerate(int(t) for t in targets):
        if t == ignore_index:
            per_row.append(query.new_zeros(()))
            continue
        valid += 1
        logits = [dot(query[n], weight[j]) / temperature for j in range(n_reserved, weight.shape[0])]
        per_row.append(lse(logits) - dot(query[n], weight[t]) / temperature)
    return per_row, mean_of(per_row, valid)


def gbce_beta(n_negatives: int, n_items: int, t: float) -> float:
    """gSASRec (Petrov & Macdonald 2023), eq. 8-9: alpha = k / (|I| - 1), beta = alpha (t (1 - 1/alpha) + 1/alpha)."""
    alpha = n_negatives / (n_items - 1)
    return alpha * (t * (1 - 1 / alpha) + 1 / alpha)


def binary(query, weight, targets, negatives, *, beta=1.0, ignore_index=0):
    """loss_n = -beta log sigmoid(s+) - sum_j log(1 - sigmoid(s-_j)), s = q_n . w; negatives
    ([K] shared or [N][n] per row) equal to t_n or to ignore_index are left out."""
    per_row, valid = [], 0
    for n, t in enumerate(int(t) for t in targets):
        if t == ignore_index:
            per_row.append(query.new_zeros(()))
            continue
        valid += 1
        row_negatives = negatives[n] if negatives.dim() == 2 else negatives
        loss = -beta * torch.log(1 / (1 + torch.exp(-dot(query[n], weight[t]))))
        for c in (int(c) for c in row_negatives):
            if c != t and c != ignore_index:
                loss = loss - torch.log(1 - 1 / (1 + torch.exp(-dot(query[n], weight[c]))))
        per_row.append(loss)
    return per_row, mean_of(per_row, valid)


def skip_infonce(anchors, items, skips, *, candidates=None, temperature=0.1, pad_index=0, normalize="kept"):
    """Session b, kept play i (not padding, not skipped) with a first later kept play j: the
    negatives are the session's skipped plays k whose item differs from item j;
    s(u, v) = u . v / (max(|u|, eps) max(|v|, eps) T) and
    loss = logsumexp(s(a_i, c_j), s(a_i, c_k)...) - s(a_i, c_j) when there is >= 1 negative,
    else 0. Mean: over the kept plays with a later kept play ("kept") or over the plays that
    had >= 1 negative ("anchors")."""
    if candidates is None:
        candidates = anchors
    items, skips = items.tolist(), skips.bool().tolist()
    per_pos, n_kept, n_anchors = [], 0, 0

    def score(u, v):
        return dot(u, v) / (torch.clamp(norm(u), min=EPS) * torch.clamp(norm(v), min=EPS) * temperature)

    for b, row in enumerate(items):
        out = []
        for i, item in enumerate(row):
            zero = anchors.new_zeros((), dtype=torch.float64)
            if item == pad_index or skips[b][i]:
                out.append(zero)
                continue
            later = [j for j in range(i + 1, len(row)) if row[j] != pad_index and not skips[b][j]]
            if not later:
                out.append(zero)
                continue
            n_kept += 1
            j = later[0]
            negatives = [k for k in range(len(row)) if row[k] != pad_index and skips[b][k] and row[k] != row[j]]
            if not negatives:
                out.append(zero)
                continue
            n_anchors += 1
            a = anchors[b, i].double()
            positive = score(a, candidates[b, j].double())
            logits = [positive] + [score(a, candidates[b, k].double()) for k in negatives]
            out.append(lse(logits) - positive)
        per_pos.append(out)
    flat = [x for row in per_pos for x in row]
    return per_pos, mean_of(flat, n_kept if normalize == "kept" else n_anchors)


def stack(per_row) -> Tensor:
    """Nested lists of scalars as one tensor."""
    if per_row and isinstance(per_row[0], list):
        return torch.stack([torch.stack(row) for row in per_row])
    return torch.stack(per_row)
