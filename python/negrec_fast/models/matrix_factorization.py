"""Non-sequential baselines in the session setting (as in Seshadri, Shashaani & Knees, RecSys
2024): BPR-MF and WRMF, with the session as the "user".

At each position the query is built from the session's *kept* plays so far: the prefix, so
training on every position and evaluating on held-out plays are honest. Skipped plays are
negative feedback and never describe what the listener wants (a play's ``skips`` flag is read;
``skips`` None = every play kept). A prefix without a kept play has the query 0. Scores are
dot products with the tied item table; there is no output head (``project`` is the identity).

- :class:`BPRMF`: the query is the mean of the prefix's kept plays' item embeddings (a
  replayed track counts at each play); trained with ``loss.rec = "bpr"``.
- :class:`WRMF` (Hu, Koren & Volinsky 2008): the query is WRMF's closed-form fold-in (the ALS
  user step) over the prefix's distinct kept items ``S``:
  ``u = (Y^T Y + alpha Y_S^T Y_S + l2 I)^-1 (1 + alpha) Y_S^T 1``, ``Y`` the real items' rows;
  trained on the WRMF objective (:meth:`WRMF.objective`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from negrec_fast.losses.wrmf import wrmf_loss
from negrec_fast.models.base import N_RESERVED, SequentialModel


def kept_plays(items: Tensor, skips: Tensor | None, pad_index: int) -> Tensor:
    """``[B, T]`` bool: real plays that were not skipped."""
    kept = items != pad_index
    return kept if skips is None else kept & ~skips.bool()


def first_kept(items: Tensor, skips: Tensor | None, pad_index: int) -> Tensor:
    """``[B, T]`` bool: kept plays whose item was not kept earlier in the row (each item once)."""
    kept = kept_plays(items, skips, pad_index)
    length = items.shape[1]
    earlier = torch.ones(length, length, dtype=torch.bool, device=items.device).tril(-1)  # [j, k]: k < j
    repeat = ((items[:, :, None] == items[:, None, :]) & kept[:, None, :] & earlier).any(dim=2)
    return kept & ~repeat


class MatrixFactorization(SequentialModel):
    """Tied item table and no output head: ``encode`` gives the queries.

    ``max_len`` only bounds the input length; subclasses implement ``session_vectors(items,
    skips) -> [B, T, d]``, the query after each play (0 at padding).
    """

    def __init__(self, vocab_size: int, max_len: int = 20, d_model: int = 128, pad_index: int = 0) -> None:
        super().__init__(vocab_size, max_len, d_model, pad_index)
        del self.head  # the session vector is the query

    def session_vectors(self, items: Tensor, skips: Tensor | None) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode(self, items: Tensor, skips: Tensor | None = None) -> Tensor:
        """``[B, L, d]`` the query after each play, from the kept plays up to it."""
        self.check_items(items)
        return self.session_vectors(items, skips)

    def project(self, hidden: Tensor) -> Tensor:
        """The identity: a session vector is scored against the item table as it is."""
        return hidden


class BPRMF(MatrixFactorization):
    """BPR-MF: the query is the mean item embedding of the prefix's kept plays.

    ``BPRMF(vocab_size, max_len=20, d_model=128, pad_index=0)``.
    """

    def session_vectors(self, items: Tensor, skips: Tensor | None) -> Tensor:
        kept = kept_plays(items, skips, self.pad_index)
        total = (self.item_embedding(items) * kept[..., None]).cumsum(dim=1)
        return total / kept.cumsum(dim=1).clamp(min=1)[..., None]


class WRMF(MatrixFactorization):
    """WRMF: the query is the fold-in of the prefix's distinct kept items (module docstring).

    ``WRMF(vocab_size, max_len=20, d_model=128, alpha=10.0, l2=1.0, pad_index=0)``: ``alpha``
    is the extra confidence of an observed item, ``l2`` (> 0) the L2 weight.

    All prefixes of a row come from one factorisation. With ``P = (Y^T Y + l2 I)^-1`` shared
    by the batch, ``z_j = P y_j`` and ``m_j`` = 1 for a play that adds an item to ``S``,
    Woodbury gives ``u_t = (1 + alpha) Z_t^T (I + alpha K_t)^-1 m_t`` over the plays ``<= t``
    with ``K_jk = m_j m_k y_j^T P y_k``. With the Cholesky factor ``I + alpha K = R R^T`` of
    the whole row, the leading blocks of ``R`` factor every prefix, so forward solves
    ``v = R^-1 m`` and ``Q = R^-1 Z`` serve all of them: ``u_t = (1 + alpha) sum_{j <= t} v_j Q_j``,
    a cumulative sum. ``I + alpha K`` has eigenvalues >= 1 and ``l2 > 0`` makes ``Y^T Y + l2 I``
    positive definite: both factorisations always exist. Cost: one ``[d, d]`` factorisation
    per batch and ``O(T^2 (T + d))`` per row.
    """

    def __init__(
        self, vocab_size: int, max_len: int = 20, d_model: int = 128, alpha: float = 10.0, l2: float = 1.0,
        pad_index: int = 0,
    ) -> None:
        super().__init__(vocab_size, max_len, d_model, pad_index)
        if not alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {alpha!r}")
        if not l2 > 0:
            raise ValueError(f"l2 must be > 0 (it keeps the fold-in well posed), got {l2!r}")
        self.alpha = float(alpha)
        self.l2 = float(l2)

    def session_vectors(self, items: Tensor, skips: Tensor | None) -> Tensor:
        # solves in the table's own precision, never under bf16 autocast
        with torch.autocast(items.device.type, enabled=False):
            weight = self.item_weight
            b, length = items.shape
            d = self.d_model
            y = weight[N_RESERVED:]
            eye_d = torch.eye(d, dtype=weight.dtype, device=weight.device)
            chol = torch.linalg.cholesky_ex(y.T @ y + self.l2 * eye_d).L
            window = self.item_embedding(items)  # [B, T, d]
            z = torch.cholesky_solve(window.reshape(-1, d).T, chol).T.reshape(b, length, d)  # rows P y_j
            m = first_kept(items, skips, self.pad_index).to(weight.dtype)
            k = (window @ z.transpose(1, 2)) * (m[:, :, None] * m[:, None, :])
            eye_t = torch.eye(length, dtype=weight.dtype, device=weight.device)
            r = torch.linalg.cholesky_ex(eye_t + self.alpha * k).L
            solved = torch.linalg.solve_triangular(r, torch.cat([m[..., None], z], dim=2), upper=False)
            return (1 + self.alpha) * (solved[..., :1] * solved[..., 1:]).cumsum(dim=1)

    def objective(self, items: Tensor, skips: Tensor) -> Tensor:
        """The WRMF objective of a batch of training windows ``[B, T]`` (:func:`negrec_fast.losses.wrmf_loss`).

        Every prefix that ends in a kept play with a play before it (the prefixes whose next
        play the sequential models learn) is a user, with its fold-in as user vector: the exact
        minimiser of its term given the items, so the objective is ``F(Y) = sum over users of
        min_x J(x; Y) + l2 |Y|^2`` and, by the envelope theorem, its gradient is that of ``J``
        with the user vectors held fixed (they are computed without gradient). A gradient step
        on ``Y`` is thus a step on the exact WRMF objective with the users at their ALS optimum:
        ALS with the item solve replaced by a gradient step, the same objective and the same
        fixed points.
        """
        with torch.autocast(items.device.type, enabled=False):
            with torch.no_grad():
                users = self.session_vectors(items, skips)
            kept = kept_plays(items, skips, self.pad_index)
            active = kept & torch.nn.functional.pad(items[:, :-1] != self.pad_index, (1, 0))
            return wrmf_loss(users, self.item_weight, items, first_kept(items, skips, self.pad_index), active,
                             alpha=self.alpha, l2=self.l2)
