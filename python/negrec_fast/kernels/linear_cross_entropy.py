"""Fused full-catalogue linear + cross-entropy (Triton), matching ``negrec_fast.losses.full_softmax_loss``.

``query[N, d] @ item_weight[V, d].T / T`` is never materialized:

- forward: per row tile, online log-sum-exp over vocabulary blocks (fp32 accumulation, fp64
  for fp64 inputs) and the target logit; only the per-row LSE is kept for backward.
- backward: logits are recomputed blockwise. ``dQ`` per row tile (reducing over vocabulary
  blocks) and ``dW`` per vocabulary tile (reducing over row tiles): dense, deterministic, no
  atomics. Reserved ids ``< n_reserved`` are never candidates (their ``dW`` rows are 0).

Inner loops are split across programs (grid axis 1) when the outer grid is too small to fill
the GPU; partials are summed with torch. No host synchronisation (CUDA-graph safe).
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
from negrec_fast.losses import full_softmax_loss
from negrec_fast.losses._reduce import reduce_rows

_REDUCTIONS = ("mean", "sum", "none")


@triton.jit
def _tile(ptr, idx, dims, n, D, stride_n, stride_d):
    """Rows ``idx`` of a ``[n, D]`` matrix as a ``[len(idx), BLOCK_D]`` tile (masked, zero-filled)."""
    return tl.load(
        ptr + idx[:, None].to(tl.int64) * stride_n + dims[None, :] * stride_d,
        mask=(idx < n)[:, None] & (dims[None, :] < D),
        other=0.0,
    )


@triton.jit
def _masked_logits(q, w, vocab, V, n_reserved, inv_t, ACC: tl.constexpr, PREC: tl.constexpr):
    """``[BLOCK_M, BLOCK_N]`` logits, -inf on reserved ids and past the vocabulary."""
    logits = tl.dot(q, tl.trans(w), input_precision=PREC, out_dtype=ACC) * inv_t
    keep = (vocab >= n_reserved) & (vocab < V)
    return tl.where(keep[None, :], logits, float("-inf"))


@triton.jit
def _fwd_kernel(
    q_ptr, w_ptr, tgt_ptr, inv_t_ptr, max_ptr, sum_ptr, pos_ptr,
    N, V, D, n_reserved, ignore_index, blocks_per_split,
    stride_qn, stride_qd, stride_wv, stride_wd,
    ACC: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Partial online LSE and target logit of one row tile over one split of the vocabulary."""
    split = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    dims = tl.arange(0, BLOCK_D)
    q = _tile(q_ptr, rows, dims, N, D, stride_qn, stride_qd)
    tgt = tl.load(tgt_ptr + rows, mask=row_ok, other=ignore_index)
    inv_t = tl.load(inv_t_ptr)

    run_max = tl.full([BLOCK_M], -1e30, ACC)  # finite floor: exp(floor - floor) stays 1
    run_sum = tl.zeros([BLOCK_M], ACC)
    pos = tl.zeros([BLOCK_M], ACC)
    start = split * blocks_per_split
    stop = tl.minimum(start + blocks_per_split, tl.cdiv(V, BLOCK_N))
    for blk in range(start, stop):
        vocab = blk * BLOCK_N + tl.arange(0, BLOCK_N)
        w = _tile(w_ptr, vocab, dims, V, D, stride_wv, stride_wd)
        logits = _masked_logits(q, w, vocab, V, n_reserved, inv_t, ACC, PREC)
        pos += tl.sum(tl.where(vocab[None, :] == tgt[:, None], logits, 0.0), axis=1)
        new_max = tl.maximum(run_max, tl.max(logits, axis=1))
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(logits - new_max[:, None]), axis=1)
        run_max = new_max

    out = split * N + rows
    tl.store(max_ptr + out, run_max, mask=row_ok)
    tl.store(sum_ptr + out, run_sum, mask=row_ok)
    tl.store(pos_ptr + out, pos, mask=row_ok)


@triton.jit
def _bwd_dq_kernel(
    q_ptr, w_ptr, tgt_ptr, inv_t_ptr, lse_ptr, g_ptr, dq_ptr,
    N, V, D, n_reserved, ignore_index, blocks_per_split,
    stride_qn, stride_qd, stride_wv, stride_wd,
    ACC: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Partial ``dQ`` of one row tile over one split of the vocabulary."""
    split = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    dims = tl.arange(0, BLOCK_D)
    q = _tile(q_ptr, rows, dims, N, D, stride_qn, stride_qd)
    inv_t = tl.load(inv_t_ptr)
    tgt = tl.load(tgt_ptr + rows, mask=row_ok, other=ignore_index)
    lse, g = row_grads(lse_ptr, g_ptr, rows, N, inv_t)

    dq = tl.zeros([BLOCK_M, BLOCK_D], ACC)
    start = split * blocks_per_split
    stop = tl.minimum(start + blocks_per_split, tl.cdiv(V, BLOCK_N))
    for blk in range(start, stop):
        vocab = blk * BLOCK_N + tl.arange(0, BLOCK_N)
        w = _tile(w_ptr, vocab, dims, V, D, stride_wv, stride_wd)
        logits = _masked_logits(q, w, vocab, V, n_reserved, inv_t, ACC, PREC)
        ds = softmax_grad(logits, lse, g, vocab[None, :] == tgt[:, None], ACC)
        dq = tl.dot(ds.to(w.dtype), w, dq, input_precision=PREC, out_dtype=ACC)

    out = split.to(tl.int64) * N * D + rows[:, None].to(tl.int64) * D + dims[None, :]
    tl.store(dq_ptr + out, dq, mask=row_ok[:, None] & (dims[None, :] < D))


@triton.jit
def _bwd_dw_kernel(
    q_ptr, w_ptr, tgt_ptr, inv_t_ptr, lse_ptr, g_ptr, dw_ptr,
    N, V, D, n_reserved, ignore_index, blocks_per_split,
    stride_qn, stride_qd, stride_wv, stride_wd,
    ACC: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Partial ``dW`` of one vocabulary tile over one split of the row tiles."""
    split = tl.program_id(1)
    vocab = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    w = _tile(w_ptr, vocab, dims, V, D, stride_wv, stride_wd)
    inv_t = tl.load(inv_t_ptr)

    dw = tl.zeros([BLOCK_N, BLOCK_D], ACC)
    start = split * blocks_per_split
    stop = tl.minimum(start + blocks_per_split, tl.cdiv(N, BLOCK_M))
    for blk in range(start, stop):
        rows = blk * BLOCK_M + tl.arange(0, BLOCK_M)
        q = _tile(q_ptr, rows, dims, N, D, stride_qn, stride_qd)
        tgt = tl.load(tgt_ptr + rows, mask=rows < N, other=ignore_index)
        lse, g = row_grads(lse_ptr, g_ptr, rows, N, inv_t)
        logits = _masked_logits(q, w, vocab, V, n_reserved, inv_t, ACC, PREC)
        ds = softmax_grad(logits, lse, g, vocab[None, :] == tgt[:, None], ACC)
        dw = tl.dot(tl.trans(ds.to(q.dtype)), q, dw, input_precision=PREC, out_dtype=ACC)

    out = split.to(tl.int64) * V * D + vocab[:, None].to(tl.int64) * D + dims[None, :]
    tl.store(dw_ptr + out, dw, mask=(vocab < V)[:, None] & (dims[None, :] < D))


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """Per-row full-softmax loss ``[N]`` (0 on padding rows); grads for query and item_weight."""

    @staticmethod
    def forward(ctx, query, item_weight, targets, temperature, ignore_index, n_reserved):
        dtype = compute_dtype(query, item_weight)
        q, w = query.to(dtype), item_weight.to(dtype)
        n, d = q.shape
        v = w.shape[0]
        acc, acc_tl = accumulator(dtype)
        inv_t = torch.full((1,), 1.0 / temperature, dtype=acc, device=q.device)
        block_m, block_n, block_d, warps = block_sizes(d, q.device)
        n_row_blocks = triton.cdiv(n, block_m)
        splits, per_split = split_loop(n_row_blocks, triton.cdiv(v, block_n), q.device)

        part_max, part_sum, part_pos = torch.empty((3, splits, n), dtype=acc, device=q.device)
        _fwd_kernel[(n_row_blocks, splits)](
            q, w, targets, inv_t, part_max, part_sum, part_pos,
            n, v, d, n_reserved, ignore_index, per_split,
            q.stride(0), q.stride(1), w.stride(0), w.stride(1),
            ACC=acc_tl, PREC=dot_precision(dtype, q.device),
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=warps,
        )
        top = part_max.max(dim=0).values
        lse = top + torch.log((part_sum * torch.exp(part_max - top)).sum(dim=0))
        valid = targets != ignore_index
        per_row = torch.where(valid, lse - part_pos.sum(dim=0), lse.new_zeros(()))

        ctx.save_for_backward(q, w, targets, inv_t, lse)
        ctx.ints = (ignore_index, n_reserved)
        ctx.dtypes = (query.dtype, item_weight.dtype)
        return per_row

    @staticmethod
    def backward(ctx, grad_rows):
        q, w, targets, inv_t, lse = ctx.saved_tensors
        ignore_index, n_reserved = ctx.ints
        n, d = q.shape
        v = w.shape[0]
        acc = lse.dtype
        g = torch.where(targets != ignore_index, grad_rows.to(acc), lse.new_zeros(())).contiguous()
        block_m, block_n, block_d, warps = block_sizes(d, q.device)
        n_row_blocks, n_vocab_blocks = triton.cdiv(n, block_m), triton.cdiv(v, block_n)
        common = dict(
            ACC=accumulator(q.dtype)[1], PREC=dot_precision(q.dtype, q.device),
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=warps,
        )
        strides = (q.stride(0), q.stride(1), w.stride(0), w.stride(1))

        def run(kernel, n_outer, n_inner, rows, out_dtype):
            # one split writes the gradient directly in its final dtype; several write fp32 partials
            splits, per_split = split_loop(n_outer, n_inner, q.device)
            part = torch.empty((splits, rows, d), dtype=out_dtype if splits == 1 else acc, device=q.device)
            kernel[(n_outer, splits)](
                q, w, targets, inv_t, lse, g, part,
                n, v, d, n_reserved, ignore_index, per_split, *strides, **common,
            )
            return part[0] if splits == 1 else part.sum(dim=0).to(out_dtype)

        grad_query = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_query = run(_bwd_dq_kernel, n_row_blocks, n_vocab_blocks, n, ctx.dtypes[0])
        if ctx.needs_input_grad[1]:
            grad_weight = run(_bwd_dw_kernel, n_vocab_blocks, n_row_blocks, v, ctx.dtypes[1])
        return grad_query, grad_weight, None, None, None, None


def _check_inputs(query, item_weight, targets, temperature, n_reserved, reduction):
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if query.dim() != 2 or item_weight.dim() != 2 or query.shape[1] != item_weight.shape[1]:
        raise ValueError(
            f"expected query [N, d] and item_weight [V, d], got {tuple(query.shape)} and {tuple(item_weight.shape)}"
        )
    if targets.shape != (query.shape[0],):
        raise ValueError(f"targets must have shape [{query.shape[0]}], got {tuple(targets.shape)}")
    if not 0 <= n_reserved < item_weight.shape[0]:
        raise ValueError(f"n_reserved must be in [0, {item_weight.shape[0]}), got {n_reserved}")


@torch.compiler.disable
def fused_linear_cross_entropy_loss(
    query: Tensor,
    item_weight: Tensor,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    ignore_index: int = 0,
    n_reserved: int = 2,
    reduction: str = "mean",
) -> Tensor:
    """Triton full-catalogue softmax; same signature, values and gradients as ``full_softmax_loss``.

    The loss is fp32 (fp64 for fp64 inputs). Runs eagerly under ``torch.compile`` (a graph
    break), with no host synchronisation.
    """
    _check_inputs(query, item_weight, targets, temperature, n_reserved, reduction)
    if query.shape[0] == 0:  # nothing to launch; the reference handles the empty batch
        return full_softmax_loss(
            query, item_weight, targets, temperature=temperature, ignore_index=ignore_index,
            n_reserved=n_reserved, reduction=reduction,
        )
    per_row = _FusedLinearCrossEntropy.apply(
        query, item_weight, targets.long(), float(temperature), int(ignore_index), int(n_reserved)
    )
    return reduce_rows(per_row, targets != ignore_index, reduction)


def full_softmax(
    query: Tensor,
    item_weight: Tensor,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    ignore_index: int = 0,
    n_reserved: int = 2,
    reduction: str = "mean",
    backend: str = "auto",
) -> Tensor:
    """Full-catalogue softmax loss on the chosen backend.

    ``auto``: Triton for CUDA tensors (or CPU tensors when the kernels run under
    ``TRITON_INTERPRET=1``), else the torch reference; ``triton``/``torch`` force one.
    """
    loss = fused_linear_cross_entropy_loss if use_triton(backend, query, _fwd_kernel) else full_softmax_loss
    return loss(
        query, item_weight, targets, temperature=temperature, ignore_index=ignore_index,
        n_reserved=n_reserved, reduction=reduction,
    )
