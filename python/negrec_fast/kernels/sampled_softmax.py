"""Fused sampled softmax cross-entropy (Triton), matching ``negrec_fast.losses.sampled_softmax_loss``.

Row ``n`` of ``query[N, d]`` is scored against the candidates ``targets (N, in-batch) ∪
negatives (K, shared)``; the ``[N, N + K]`` logits never reach global memory:

- forward: tiles of rows x candidate blocks, online log-sum-exp (running max and sum) with fp32
  accumulation (fp64 for fp64 inputs); only the per-row LSE is kept for backward.
- backward: logits are recomputed blockwise. ``dQ = sum_c g (p_c - [c = n]) E_c / T`` per row
  tile; ``dE`` per candidate tile (reducing over row tiles, no atomics), then scattered into
  the ``[V, d]`` weight gradient with ``index_add_`` (duplicate ids accumulate); for a table marked
  for sparse row gradients (``negrec_fast.losses._rows``) ``dE`` is returned as a sparse COO
  gradient over the candidate ids instead (``train.optimizer = "sparse_adam"``).

Each kernel's inner loop can be split across programs (grid axis 1) for occupancy; the partial
results are combined with a few small torch ops. Nothing on the host reads tensor values, so
it is safe under CUDA graphs. Masking matches the reference exactly: accidental hits (in-batch
and among negatives, except the row's own diagonal positive), padding candidates, padding rows
(loss and gradients 0), logQ corrections subtracted after the temperature scaling.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from negrec_fast.kernels._common_ss import (
    accumulator,
    block_sizes,
    compute_dtype,
    dot_precision,
    row_grads,
    softmax_grad,
    split_loop,
    use_triton,
)
from negrec_fast.losses import sampled_softmax_loss
from negrec_fast.losses._reduce import reduce_rows
from negrec_fast.losses._rows import has_sparse_rows

_REDUCTIONS = ("mean", "sum", "none")


@triton.jit
def _candidate_tile(w_ptr, cand_ptr, cols, dims, C, D, stride_wv, stride_wd, ignore_index):
    """Ids and embedding rows ``[BLOCK_N, BLOCK_D]`` of candidates ``cols`` (masked past C, D)."""
    col_ok = cols < C
    ids = tl.load(cand_ptr + cols, mask=col_ok, other=ignore_index)
    e = tl.load(
        w_ptr + ids[:, None].to(tl.int64) * stride_wv + dims[None, :] * stride_wd,
        mask=col_ok[:, None] & (dims[None, :] < D),
        other=0.0,
    )
    return ids, e


@triton.jit
def _row_tile(q_ptr, tgt_ptr, rows, dims, N, D, stride_qn, stride_qd, ignore_index):
    """Targets and queries ``[BLOCK_M, BLOCK_D]`` of rows ``rows`` (masked past N, D)."""
    row_ok = rows < N
    tgt = tl.load(tgt_ptr + rows, mask=row_ok, other=ignore_index)
    q = tl.load(
        q_ptr + rows[:, None].to(tl.int64) * stride_qn + dims[None, :] * stride_qd,
        mask=row_ok[:, None] & (dims[None, :] < D),
        other=0.0,
    )
    return tgt, q


@triton.jit
def _masked_logits(
    q, e, rows, cols, tgt, ids, logq_ptr, inv_t, N, C, ignore_index,
    HAS_LOGQ: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
):
    """``[BLOCK_M, BLOCK_N]`` logits with masked entries at -inf, and the diagonal mask."""
    logits = tl.dot(q, tl.trans(e), input_precision=PREC, out_dtype=ACC) * inv_t
    col_ok = cols < C
    if HAS_LOGQ:
        logits -= tl.load(logq_ptr + cols, mask=col_ok, other=0.0)[None, :]
    diag = cols[None, :] == rows[:, None]
    padding = (cols < N) & (ids == ignore_index)
    hit = (ids[None, :] == tgt[:, None]) | padding[None, :]
    drop = (hit & (diag == 0)) | (col_ok == 0)[None, :]
    return tl.where(drop, float("-inf"), logits), diag


@triton.jit
def _fwd_kernel(
    q_ptr, w_ptr, tgt_ptr, cand_ptr, logq_ptr, inv_t_ptr,
    max_ptr, sum_ptr, pos_ptr,
    N, C, D, ignore_index, blocks_per_split,
    stride_qn, stride_qd, stride_wv, stride_wd,
    HAS_LOGQ: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Partial online LSE of one row tile over one split of the candidate blocks."""
    split = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    tgt, q = _row_tile(q_ptr, tgt_ptr, rows, dims, N, D, stride_qn, stride_qd, ignore_index)
    inv_t = tl.load(inv_t_ptr)

    run_max = tl.full([BLOCK_M], -1e30, ACC)  # finite floor: exp(floor - floor) stays 1
    run_sum = tl.zeros([BLOCK_M], ACC)
    pos = tl.zeros([BLOCK_M], ACC)
    start = split * blocks_per_split
    stop = tl.minimum(start + blocks_per_split, tl.cdiv(C, BLOCK_N))
    for blk in range(start, stop):
        cols = blk * BLOCK_N + tl.arange(0, BLOCK_N)
        ids, e = _candidate_tile(w_ptr, cand_ptr, cols, dims, C, D, stride_wv, stride_wd, ignore_index)
        logits, diag = _masked_logits(
            q, e, rows, cols, tgt, ids, logq_ptr, inv_t, N, C, ignore_index, HAS_LOGQ, ACC, PREC
        )
        pos += tl.sum(tl.where(diag, logits, 0.0), axis=1)
        new_max = tl.maximum(run_max, tl.max(logits, axis=1))
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(logits - new_max[:, None]), axis=1)
        run_max = new_max

    row_ok = rows < N
    out = split * N + rows
    tl.store(max_ptr + out, run_max, mask=row_ok)
    tl.store(sum_ptr + out, run_sum, mask=row_ok)
    tl.store(pos_ptr + out, pos, mask=row_ok)


@triton.jit
def _bwd_dq_kernel(
    q_ptr, w_ptr, tgt_ptr, cand_ptr, logq_ptr, inv_t_ptr, lse_ptr, g_ptr, dq_ptr,
    N, C, D, ignore_index, blocks_per_split,
    stride_qn, stride_qd, stride_wv, stride_wd,
    HAS_LOGQ: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Partial ``dQ`` of one row tile over one split of the candidate blocks."""
    split = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < N
    tgt, q = _row_tile(q_ptr, tgt_ptr, rows, dims, N, D, stride_qn, stride_qd, ignore_index)
    inv_t = tl.load(inv_t_ptr)
    lse, g = row_grads(lse_ptr, g_ptr, rows, N, inv_t)

    dq = tl.zeros([BLOCK_M, BLOCK_D], ACC)
    start = split * blocks_per_split
    stop = tl.minimum(start + blocks_per_split, tl.cdiv(C, BLOCK_N))
    for blk in range(start, stop):
        cols = blk * BLOCK_N + tl.arange(0, BLOCK_N)
        ids, e = _candidate_tile(w_ptr, cand_ptr, cols, dims, C, D, stride_wv, stride_wd, ignore_index)
        logits, diag = _masked_logits(
            q, e, rows, cols, tgt, ids, logq_ptr, inv_t, N, C, ignore_index, HAS_LOGQ, ACC, PREC
        )
        ds = softmax_grad(logits, lse, g, diag, ACC)
        dq = tl.dot(ds.to(e.dtype), e, dq, input_precision=PREC, out_dtype=ACC)

    out = split.to(tl.int64) * N * D + rows[:, None].to(tl.int64) * D + dims[None, :]
    tl.store(dq_ptr + out, dq, mask=row_ok[:, None] & (dims[None, :] < D))


@triton.jit
def _bwd_de_kernel(
    q_ptr, w_ptr, tgt_ptr, cand_ptr, logq_ptr, inv_t_ptr, lse_ptr, g_ptr, de_ptr,
    N, C, D, ignore_index, blocks_per_split,
    stride_qn, stride_qd, stride_wv, stride_wd,
    HAS_LOGQ: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Partial gradient of one candidate tile's embeddings over one split of the row blocks."""
    split = tl.program_id(1)
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    ids, e = _candidate_tile(w_ptr, cand_ptr, cols, dims, C, D, stride_wv, stride_wd, ignore_index)
    inv_t = tl.load(inv_t_ptr)

    de = tl.zeros([BLOCK_N, BLOCK_D], ACC)
    start = split * blocks_per_split
    stop = tl.minimum(start + blocks_per_split, tl.cdiv(N, BLOCK_M))
    for blk in range(start, stop):
        rows = blk * BLOCK_M + tl.arange(0, BLOCK_M)
        tgt, q = _row_tile(q_ptr, tgt_ptr, rows, dims, N, D, stride_qn, stride_qd, ignore_index)
        lse, g = row_grads(lse_ptr, g_ptr, rows, N, inv_t)
        logits, diag = _masked_logits(
            q, e, rows, cols, tgt, ids, logq_ptr, inv_t, N, C, ignore_index, HAS_LOGQ, ACC, PREC
        )
        ds = softmax_grad(logits, lse, g, diag, ACC)
        de = tl.dot(tl.trans(ds.to(q.dtype)), q, de, input_precision=PREC, out_dtype=ACC)

    out = split.to(tl.int64) * C * D + cols[:, None].to(tl.int64) * D + dims[None, :]
    tl.store(de_ptr + out, de, mask=(cols < C)[:, None] & (dims[None, :] < D))


class _FusedSampledSoftmax(torch.autograd.Function):
    """Per-row sampled softmax loss ``[N]`` (0 on padding rows); grads for query and item_weight."""

    @staticmethod
    def forward(ctx, query, item_weight, targets, negatives, logq, temperature, ignore_index, sparse_grad):
        dtype = compute_dtype(query, item_weight)
        q, w = query.to(dtype), item_weight.to(dtype)
        n, d = q.shape
        cand = torch.cat([targets, negatives])
        c = cand.shape[0]
        acc, acc_tl = accumulator(dtype)
        inv_t = torch.full((1,), 1.0 / temperature, dtype=acc, device=q.device)
        logq = logq.to(acc).contiguous() if logq is not None else None
        block_m, block_n, block_d, warps = block_sizes(d, q.device)
        n_row_blocks = triton.cdiv(n, block_m)
        splits, per_split = split_loop(n_row_blocks, triton.cdiv(c, block_n), q.device)

        part_max, part_sum, part_pos = torch.empty((3, splits, n), dtype=acc, device=q.device)
        _fwd_kernel[(n_row_blocks, splits)](
            q, w, targets, cand, logq if logq is not None else inv_t, inv_t,
            part_max, part_sum, part_pos,
            n, c, d, ignore_index, per_split,
            q.stride(0), q.stride(1), w.stride(0), w.stride(1),
            HAS_LOGQ=logq is not None, ACC=acc_tl, PREC=dot_precision(dtype, q.device),
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=warps,
        )
        top = part_max.max(dim=0).values
        lse = top + torch.log((part_sum * torch.exp(part_max - top)).sum(dim=0))
        valid = targets != ignore_index
        per_row = torch.where(valid, lse - part_pos.sum(dim=0), lse.new_zeros(()))

        ctx.save_for_backward(q, w, targets, cand, logq, inv_t, lse)
        ctx.ignore_index = ignore_index
        ctx.sparse_grad = sparse_grad
        ctx.dtypes = (query.dtype, item_weight.dtype)
        return per_row

    @staticmethod
    def backward(ctx, grad_rows):
        q, w, targets, cand, logq, inv_t, lse = ctx.saved_tensors
        n, d = q.shape
        c = cand.shape[0]
        acc = lse.dtype
        acc_tl = accumulator(q.dtype)[1]
        g = torch.where(targets != ctx.ignore_index, grad_rows.to(acc), lse.new_zeros(())).contiguous()
        block_m, block_n, block_d, warps = block_sizes(d, q.device)
        n_row_blocks, n_col_blocks = triton.cdiv(n, block_m), triton.cdiv(c, block_n)
        common = dict(
            HAS_LOGQ=logq is not None, ACC=acc_tl, PREC=dot_precision(q.dtype, q.device),
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=warps,
        )
        args = (q, w, targets, cand, logq if logq is not None else inv_t, inv_t, lse, g)
        scalars = (q.stride(0), q.stride(1), w.stride(0), w.stride(1))

        grad_query = grad_weight = None
        if ctx.needs_input_grad[0]:
            splits, per_split = split_loop(n_row_blocks, n_col_blocks, q.device)
            part = torch.empty((splits, n, d), dtype=acc, device=q.device)
            _bwd_dq_kernel[(n_row_blocks, splits)](
                *args, part, n, c, d, ctx.ignore_index, per_split, *scalars, **common
            )
            grad_query = part.sum(dim=0).to(ctx.dtypes[0])
        if ctx.needs_input_grad[1]:
            splits, per_split = split_loop(n_col_blocks, n_row_blocks, q.device)
            part = torch.empty((splits, c, d), dtype=acc, device=q.device)
            _bwd_de_kernel[(n_col_blocks, splits)](
                *args, part, n, c, d, ctx.ignore_index, per_split, *scalars, **common
            )
            rows = part.sum(dim=0).to(ctx.dtypes[1])
            if ctx.sparse_grad:  # the candidates' rows only (duplicates are summed when coalesced)
                grad_weight = torch.sparse_coo_tensor(cand[None], rows, w.shape, check_invariants=False)
            else:
                grad_weight = torch.zeros(w.shape, dtype=ctx.dtypes[1], device=w.device)
                grad_weight.index_add_(0, cand, rows)
        return grad_query, grad_weight, None, None, None, None, None, None


def _check_inputs(query, item_weight, targets, negatives, neg_logq, target_logq, temperature, reduction):
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if query.dim() != 2 or item_weight.dim() != 2 or query.shape[1] != item_weight.shape[1]:
        raise ValueError(
            f"expected query [N, d] and item_weight [V, d], got {tuple(query.shape)} and {tuple(item_weight.shape)}"
        )
    n = query.shape[0]
    if targets.shape != (n,):
        raise ValueError(f"targets must have shape [{n}], got {tuple(targets.shape)}")
    if negatives.dim() != 1:
        raise ValueError(f"negatives must be 1-D [K], got {tuple(negatives.shape)}")
    if neg_logq is not None and neg_logq.shape != negatives.shape:
        raise ValueError(f"neg_logq must have shape {tuple(negatives.shape)}, got {tuple(neg_logq.shape)}")
    if target_logq is not None and target_logq.shape != (n,):
        raise ValueError(f"target_logq must have shape [{n}], got {tuple(target_logq.shape)}")


@torch.compiler.disable
def fused_sampled_softmax_loss(
    query: Tensor,
    item_weight: Tensor,
    targets: Tensor,
    negatives: Tensor,
    *,
    neg_logq: Tensor | None = None,
    target_logq: Tensor | None = None,
    temperature: float = 1.0,
    ignore_index: int = 0,
    reduction: str = "mean",
) -> Tensor:
    """Triton sampled softmax; same signature, values and gradients as ``sampled_softmax_loss``.

    The loss is fp32 (fp64 for fp64 inputs). ``neg_logq``/``target_logq`` get no gradient.
    Runs eagerly under ``torch.compile`` (a graph break), with no host synchronisation.
    """
    _check_inputs(query, item_weight, targets, negatives, neg_logq, target_logq, temperature, reduction)
    if query.shape[0] == 0:  # nothing to launch; the reference handles the empty batch
        return sampled_softmax_loss(
            query, item_weight, targets, negatives, temperature=temperature, ignore_index=ignore_index,
            reduction=reduction,
        )
    logq = None
    if neg_logq is not None or target_logq is not None:
        zeros = query.new_zeros((), dtype=torch.float32)
        logq = torch.cat([
            (target_logq if target_logq is not None else zeros.expand(targets.shape[0])).float(),
            (neg_logq if neg_logq is not None else zeros.expand(negatives.shape[0])).float(),
        ])
    per_row = _FusedSampledSoftmax.apply(
        query, item_weight, targets.long(), negatives.long(), logq, float(temperature), int(ignore_index),
        has_sparse_rows(item_weight),
    )
    return reduce_rows(per_row, targets != ignore_index, reduction)


def sampled_softmax(
    query: Tensor,
    item_weight: Tensor,
    targets: Tensor,
    negatives: Tensor,
    *,
    neg_logq: Tensor | None = None,
    target_logq: Tensor | None = None,
    temperature: float = 1.0,
    ignore_index: int = 0,
    reduction: str = "mean",
    backend: str = "auto",
) -> Tensor:
    """Sampled softmax loss on the chosen backend.

    ``auto``: Triton for CUDA tensors (or CPU tensors when the kernels run under
    ``TRITON_INTERPRET=1``), else the torch reference; ``triton``/``torch`` force one.
    """
    loss = fused_sampled_softmax_loss if use_triton(backend, query, _fwd_kernel) else sampled_softmax_loss
    return loss(
        query, item_weight, targets, negatives, neg_logq=neg_logq, target_logq=target_logq,
        temperature=temperature, ignore_index=ignore_index, reduction=reduction,
    )
