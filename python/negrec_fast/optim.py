"""The training optimizer (``train.optimizer``): dense Adam, or sparse item rows + lazy Adam.

- ``"adam"`` (default): ``torch.optim.Adam`` over every parameter. Each step writes a dense
  ``[V, d]`` gradient for the item table and updates all its rows and both Adam moments, so a
  step costs time and memory traffic in proportion to the catalogue.
- ``"sparse_adam"``: the item table's gradient is a sparse COO tensor over the rows the step
  read (the batch's input plays, its targets, the K sampled negatives, the sessions' skipped
  plays), and :class:`RowAdam` updates only those rows; every other parameter keeps
  ``torch.optim.Adam``. A step's cost no longer depends on the catalogue size
  (``benches/bench_sparse_embeddings.py``).

``RowAdam`` is *lazy* Adam (as TensorFlow's ``LazyAdam`` and ``torch.optim.SparseAdam``): a row
the step did not read keeps its parameters and both moments unchanged, where dense Adam would
decay its moments and keep moving it with its old momentum. A row read at a step gets exactly
``torch.optim.Adam``'s update, with the bias correction of the global step count; a table
whose rows are all read at every step is trained exactly as by dense Adam. ``weight_decay``
(L2 added to the gradient, as Adam's) applies to the rows read at the step only.

Gradient clipping (``train.grad_clip``) works unchanged: the table's sparse gradient is
coalesced (one entry per row) as soon as the backward pass has accumulated it, so
``torch.nn.utils.clip_grad_norm_`` sees the same norm as with a dense gradient and scales
the rows it holds.

Where the sparse gradient comes from (``negrec_fast.losses._rows``): the item embedding is an
``nn.Embedding(sparse=True)`` and every loss reads the table's rows with
:func:`~negrec_fast.losses._rows.gather_rows`; the Triton sampled-softmax kernel returns its
table gradient as sparse rows too. Losses that read the whole table (``full_softmax``,
``wrmf``) are refused by the config, and so is ``torchrun`` (:func:`build_optimizer`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from negrec_fast.errors import ConfigError
from negrec_fast.losses._rows import mark_sparse_rows

OPTIMIZERS = ("adam", "sparse_adam")  # train.optimizer (negrec_fast.config validates it and the losses it allows)


def build_optimizer(train, model: nn.Module, *, world_size: int = 1):
    """The optimizer of ``train.optimizer`` (a :class:`~negrec_fast.config.TrainConfig`) for
    ``model``; with ``"sparse_adam"`` this also switches the model's item table to sparse
    gradients (:func:`use_sparse_item_rows`)."""
    if train.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    if train.optimizer != "sparse_adam":
        raise ConfigError(f"train.optimizer must be one of {', '.join(map(repr, OPTIMIZERS))}, got {train.optimizer!r}")
    if world_size > 1:
        raise ConfigError(
            "train.optimizer='sparse_adam' does not run under torchrun: DDP would all-reduce the item "
            "table's sparse gradient and the sharded step reads the table through a scaled copy; use "
            "train.optimizer='adam' for multi-process training"
        )
    table = use_sparse_item_rows(model)
    dense = [p for p in model.parameters() if p is not table]  # none for BPR-MF: the table is the model
    return SparseItemAdam(
        torch.optim.Adam(dense, lr=train.lr, weight_decay=train.weight_decay) if dense else None,
        RowAdam([table], lr=train.lr, weight_decay=train.weight_decay),
    )


def use_sparse_item_rows(model: nn.Module) -> nn.Parameter:
    """Make ``model.item_embedding``'s gradient sparse; returns its weight. Idempotent.

    The embedding looks its rows up with ``sparse=True``, the losses gather rows with sparse
    gradients (:mod:`negrec_fast.losses._rows`), and a hook coalesces the accumulated gradient
    after each backward pass (one entry per row: what gradient clipping and :class:`RowAdam` read).
    """
    embedding = getattr(model, "item_embedding", None)
    if not isinstance(embedding, nn.Embedding):
        raise ConfigError(f"train.optimizer='sparse_adam' needs a model with an item_embedding table, got {type(model).__name__}")
    embedding.sparse = True
    table = embedding.weight
    mark_sparse_rows(table)
    if not getattr(table, "_negrec_coalesce_hook", False):
        table.register_post_accumulate_grad_hook(_coalesce_grad)
        table._negrec_coalesce_hook = True
    return table


def _coalesce_grad(param: Tensor) -> None:
    grad = param.grad
    if grad is not None and grad.is_sparse and not grad.is_coalesced():
        param.grad = grad.coalesce()


class RowAdam(torch.optim.Optimizer):
    """Lazy Adam for parameters with sparse row gradients (module docstring).

    ``RowAdam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)``. For the rows
    ``r`` of a step's (coalesced) gradient ``g``, at global step ``t`` of the parameter:
    ``g_r += weight_decay * p_r``; ``m_r = b1 m_r + (1 - b1) g_r``; ``v_r = b2 v_r + (1 - b2) g_r^2``;
    ``p_r -= lr / (1 - b1^t) * m_r / (sqrt(v_r) / sqrt(1 - b2^t) + eps)``. Other rows: unchanged.
    The state (``step``, ``exp_avg``, ``exp_avg_sq``) has ``torch.optim.Adam``'s names and shapes.
    A dense gradient is treated as a gradient of every row.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas!r}")
        if not eps >= 0 or not weight_decay >= 0:
            raise ValueError(f"eps and weight_decay must be >= 0, got {eps!r} and {weight_decay!r}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                rows, grad = _rows_of(p.grad)
                if rows.numel() == 0:
                    continue
                _row_adam(p, rows, grad, state["exp_avg"], state["exp_avg_sq"], float(state["step"].item()),
                          lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=decay)
        return loss


def _rows_of(grad: Tensor) -> tuple[Tensor, Tensor]:
    """``(rows [R], values [R, d])`` of a gradient: a sparse one's distinct rows (coalesced), or
    every row of a dense one."""
    if grad.is_sparse:
        if grad.sparse_dim() != 1:
            raise ValueError(f"RowAdam needs sparse row gradients (sparse_dim 1), got sparse_dim {grad.sparse_dim()}")
        grad = grad.coalesce()
        return grad.indices()[0], grad.values()
    return torch.arange(grad.shape[0], device=grad.device), grad


def _row_adam(p: Tensor, rows: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: float, *,
              lr: float, beta1: float, beta2: float, eps: float, weight_decay: float) -> None:
    """Adam on ``p[rows]`` (distinct rows) with ``grad [R, d]``: gathers, updates, scatters."""
    if weight_decay:
        grad = grad.add(p.index_select(0, rows), alpha=weight_decay)
    m = exp_avg.index_select(0, rows).lerp_(grad, 1 - beta1)
    v = exp_avg_sq.index_select(0, rows).mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    exp_avg.index_copy_(0, rows, m)
    exp_avg_sq.index_copy_(0, rows, v)
    step_size = lr / (1 - beta1**step)
    denom = v.sqrt_().div_(math.sqrt(1 - beta2**step)).add_(eps)
    p.index_add_(0, rows, m.div_(denom), alpha=-step_size)


class SparseItemAdam:
    """``torch.optim.Adam`` for the dense parameters and :class:`RowAdam` for the item table,
    behind one optimizer's interface (``step``, ``zero_grad``, ``state_dict``,
    ``load_state_dict``, ``param_groups``: the dense groups, then the table's). ``dense`` is
    None when the table is the model's only parameter."""

    def __init__(self, dense: torch.optim.Optimizer | None, rows: RowAdam) -> None:
        self.dense = dense
        self.rows = rows
        self._parts = [part for part in (dense, rows) if part is not None]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [group for part in self._parts for group in part.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self._parts:
            part.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for part in self._parts:
            part.step()

    def state_dict(self) -> dict[str, Any]:
        return {"dense": None if self.dense is None else self.dense.state_dict(), "rows": self.rows.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"dense", "rows"}:
            raise ConfigError(
                "the checkpoint's optimizer state is not train.optimizer='sparse_adam''s "
                f"(keys {sorted(state)}); resume with the optimizer the run started with"
            )
        if (self.dense is None) != (state["dense"] is None):
            raise ConfigError("the checkpoint's optimizer state does not fit this model's parameters")
        if self.dense is not None:
            self.dense.load_state_dict(state["dense"])
        self.rows.load_state_dict(state["rows"])
