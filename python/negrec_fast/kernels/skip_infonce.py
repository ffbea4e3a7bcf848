"""Fused skip-informed InfoNCE in Triton (forward and backward).

Matches :func:`negrec_fast.losses.skip_infonce_loss` (see there for the definition).

Layout: one program per ``(session, block of rows)``. A program keeps its block of vectors
(all ``d`` features) in registers and streams the other side of the session in blocks,
so the ``[L, L]`` cosine matrix exists only blockwise on chip; nothing ``[B, L, L]`` is
ever written. Norms are computed in-kernel (fp32) and folded into the scores:
``s_ij = (a_i . c_j) * ra_i * rc_j / T`` with ``r = 1 / max(||x||, 1e-8)``, so 16-bit
inputs go through the tensor cores unrounded and fp32 inputs use IEEE fp32 dots.

- forward: online log-sum-exp over {positive} + {the session's skipped plays whose item
  differs from the positive's}, counting those negatives on the way; stores the per-position
  loss, the row LSE and a ``live`` flag (positive and >= 1 negative: an anchor). The flag
  masks the backward and, with ``normalize="anchors"``, counts the ``"mean"`` denominator
  (``"kept"`` counts the host-side ``pos >= 0``), so it stays on device.
- backward: recomputes the scores; rows that are not live get no gradient. With
  ``G_ij = g_i (p_ij - [j = pos_i])``:
  ``dA_i = ra_i/T sum_j G_ij rc_j c_j - ra_i^2 a_i sum_j G_ij s_ij`` and symmetrically for
  ``dC_j`` (the second term is the derivative through the normalisation), computed by
  two deterministic kernels (row blocks for anchors, column blocks for candidates).

Positive indices come from cheap ``[B, L]`` torch ops on the host side (no sync).
On CPU the kernels run only in Triton's interpreter, which must be chosen before triton is
first imported (``TRITON_INTERPRET=1`` in the environment).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from negrec_fast.kernels._common_ss import kernels_interpreted, use_triton
from negrec_fast.losses._reduce import reduce_rows
from negrec_fast.losses.skip_infonce import check_normalize, next_kept_index, skip_infonce_loss

__all__ = ["fused_skip_infonce_loss", "skip_infonce", "triton_available_for"]

_EPS = 1e-8  # as F.normalize
_REDUCTIONS = ("mean", "sum", "none")


@triton.jit
def _load_tile(ptr, b, offs, ok, offs_d, d_ok, stride_b, stride_l, EPS: tl.constexpr, F32_DOT: tl.constexpr):
    """Positions ``offs`` of session ``b`` as a ``[len(offs), BLOCK_D]`` tile (fp32 when F32_DOT),
    its fp32 copy, each row's norm and the reciprocal of the norm floored at EPS (F.normalize)."""
    x = tl.load(ptr + b * stride_b + offs[:, None] * stride_l + offs_d[None, :],
                mask=ok[:, None] & d_ok[None, :], other=0.0)
    if F32_DOT:
        x = x.to(tl.float32)
    xf = x.to(tl.float32)
    norm = tl.sqrt(tl.sum(xf * xf, axis=1))
    return x, xf, norm, 1.0 / tl.maximum(norm, EPS)


@triton.jit
def _dot(x, y, F32_DOT: tl.constexpr):
    """``x @ y``: IEEE fp32 when F32_DOT, else in the inputs' precision (fp32 accumulation)."""
    if F32_DOT:
        out = tl.dot(x, y, input_precision="ieee")
    else:
        out = tl.dot(x, y)
    return out


@triton.jit
def _columns(ITEMS, SKIP, b, L, offs_j, col_ok):
    """Skip flags and items of positions ``offs_j`` (the candidate side)."""
    skip_j = tl.load(SKIP + b * L + offs_j, mask=col_ok, other=0) != 0
    item_j = tl.load(ITEMS + b * L + offs_j, mask=col_ok, other=0)
    return skip_j, item_j


@triton.jit
def _pairs(offs_j, pos, pos_item, anchor, skip_j, item_j):
    """``[I, J]`` masks: ``j`` is row ``i``'s positive; ``j`` is one of its negatives (a skipped
    play of another item than the positive, for anchor rows only)."""
    is_pos = offs_j[None, :] == pos[:, None]
    is_neg = (skip_j[None, :] & (item_j[None, :] != pos_item[:, None])) & anchor[:, None]
    return is_pos, is_neg


@triton.jit
def _anchor_rows(ITEMS, POS, LSE, LIVE, GROW, b, L, offs_i, row_ok):
    """Backward state of positions ``offs_i``: anchor flag, positive index and item, LSE, grad."""
    anchor = tl.load(LIVE + b * L + offs_i, mask=row_ok, other=0) != 0
    pos = tl.load(POS + b * L + offs_i, mask=anchor, other=-1)
    pos_item = tl.load(ITEMS + b * L + pos, mask=anchor, other=0)
    lse = tl.load(LSE + b * L + offs_i, mask=row_ok, other=0.0)
    g = tl.load(GROW + b * L + offs_i, mask=anchor, other=0.0)
    return anchor, pos, pos_item, lse, g


@triton.jit
def _score_grad(s, lse, g, is_pos, is_neg):
    """``dLoss/ds`` of the ``[I, J]`` scores: ``g (softmax - [j is the positive])`` on candidates."""
    p = tl.where(is_pos | is_neg, tl.exp(s - lse[:, None]), 0.0)
    return g[:, None] * (p - is_pos.to(tl.float32))


@triton.jit
def _fwd_kernel(
    A, C, ITEMS, SKIP, POS, LOSS, LSE, LIVE,
    L, D, stride_ab, stride_al, stride_cb, stride_cl, inv_temp,
    EPS: tl.constexpr, F32_DOT: tl.constexpr,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    offs_i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_i < L
    d_ok = offs_d < D
    a, _, _, ra = _load_tile(A, b, offs_i, row_ok, offs_d, d_ok, stride_ab, stride_al, EPS, F32_DOT)
    pos = tl.load(POS + b * L + offs_i, mask=row_ok, other=-1)
    anchor = pos >= 0
    pos_item = tl.load(ITEMS + b * L + pos, mask=anchor, other=0)

    m = tl.full([BLOCK_I], float("-inf"), tl.float32)
    acc = tl.zeros([BLOCK_I], tl.float32)
    s_pos = tl.zeros([BLOCK_I], tl.float32)
    n_neg = tl.zeros([BLOCK_I], tl.int32)
    for j0 in range(0, L, BLOCK_J):
        offs_j = j0 + tl.arange(0, BLOCK_J)
        col_ok = offs_j < L
        c, _, _, rc = _load_tile(C, b, offs_j, col_ok, offs_d, d_ok, stride_cb, stride_cl, EPS, F32_DOT)
        s = _dot(a, tl.trans(c), F32_DOT) * ra[:, None] * rc[None, :] * inv_temp
        skip_j, item_j = _columns(ITEMS, SKIP, b, L, offs_j, col_ok)
        is_pos, is_neg = _pairs(offs_j, pos, pos_item, anchor, skip_j, item_j)
        s_pos += tl.sum(tl.where(is_pos, s, 0.0), axis=1)
        n_neg += tl.sum(is_neg.to(tl.int32), axis=1)
        sm = tl.where(is_pos | is_neg, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(sm, axis=1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        acc = acc * tl.exp(m - m_ref) + tl.sum(tl.exp(sm - m_ref[:, None]), axis=1)
        m = m_new
    live = anchor & (n_neg > 0)
    lse = tl.where(live, m + tl.log(tl.where(live, acc, 1.0)), 0.0)
    loss = tl.where(live, lse - s_pos, 0.0)
    tl.store(LOSS + b * L + offs_i, loss, mask=row_ok)
    tl.store(LSE + b * L + offs_i, lse, mask=row_ok)
    tl.store(LIVE + b * L + offs_i, live.to(tl.int8), mask=row_ok)


@triton.jit
def _bwd_anchor_kernel(
    A, C, ITEMS, SKIP, POS, LSE, LIVE, GROW, DA,
    L, D, stride_ab, stride_al, stride_cb, stride_cl, inv_temp, stride_gb, stride_gl,
    EPS: tl.constexpr, F32_DOT: tl.constexpr,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    offs_i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_i < L
    d_ok = offs_d < D
    a, af, norm_a, ra = _load_tile(A, b, offs_i, row_ok, offs_d, d_ok, stride_ab, stride_al, EPS, F32_DOT)
    anchor, pos, pos_item, lse, g = _anchor_rows(ITEMS, POS, LSE, LIVE, GROW, b, L, offs_i, row_ok)

    grad = tl.zeros([BLOCK_I, BLOCK_D], tl.float32)
    gs = tl.zeros([BLOCK_I], tl.float32)
    for j0 in range(0, L, BLOCK_J):
        offs_j = j0 + tl.arange(0, BLOCK_J)
        col_ok = offs_j < L
        c, _, _, rc = _load_tile(C, b, offs_j, col_ok, offs_d, d_ok, stride_cb, stride_cl, EPS, F32_DOT)
        s = _dot(a, tl.trans(c), F32_DOT) * ra[:, None] * rc[None, :] * inv_temp
        skip_j, item_j = _columns(ITEMS, SKIP, b, L, offs_j, col_ok)
        is_pos, is_neg = _pairs(offs_j, pos, pos_item, anchor, skip_j, item_j)
        gmat = _score_grad(s, lse, g, is_pos, is_neg)
        gs += tl.sum(gmat * s, axis=1)
        grad += _dot((gmat * rc[None, :]).to(c.dtype), c, F32_DOT)
    through_norm = tl.where(norm_a >= EPS, ra * ra * gs, 0.0)
    grad = grad * (ra * inv_temp)[:, None] - through_norm[:, None] * af
    tl.store(DA + b * stride_gb + offs_i[:, None] * stride_gl + offs_d[None, :],
             grad.to(DA.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _bwd_candidate_kernel(
    A, C, ITEMS, SKIP, POS, LSE, LIVE, GROW, DC,
    L, D, stride_ab, stride_al, stride_cb, stride_cl, inv_temp, stride_gb, stride_gl,
    EPS: tl.constexpr, F32_DOT: tl.constexpr,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    offs_j = tl.program_id(1) * BLOCK_J + tl.arange(0, BLOCK_J)
    offs_d = tl.arange(0, BLOCK_D)
    col_ok = offs_j < L
    d_ok = offs_d < D
    c, cf, norm_c, rc = _load_tile(C, b, offs_j, col_ok, offs_d, d_ok, stride_cb, stride_cl, EPS, F32_DOT)
    skip_j, item_j = _columns(ITEMS, SKIP, b, L, offs_j, col_ok)

    grad = tl.zeros([BLOCK_J, BLOCK_D], tl.float32)
    gs = tl.zeros([BLOCK_J], tl.float32)
    for i0 in range(0, L, BLOCK_I):
        offs_i = i0 + tl.arange(0, BLOCK_I)
        row_ok = offs_i < L
        a, _, _, ra = _load_tile(A, b, offs_i, row_ok, offs_d, d_ok, stride_ab, stride_al, EPS, F32_DOT)
        anchor, pos, pos_item, lse, g = _anchor_rows(ITEMS, POS, LSE, LIVE, GROW, b, L, offs_i, row_ok)
        s = _dot(a, tl.trans(c), F32_DOT) * ra[:, None] * rc[None, :] * inv_temp
        is_pos, is_neg = _pairs(offs_j, pos, pos_item, anchor, skip_j, item_j)
        gmat = _score_grad(s, lse, g, is_pos, is_neg)
        gs += tl.sum(gmat * s, axis=0)
        grad += _dot(tl.trans(gmat * ra[:, None]).to(a.dtype), a, F32_DOT)
    through_norm = tl.where(norm_c >= EPS, rc * rc * gs, 0.0)
    grad = grad * (rc * inv_temp)[:, None] - through_norm[:, None] * cf
    tl.store(DC + b * stride_gb + offs_j[:, None] * stride_gl + offs_d[None, :],
             grad.to(DC.dtype.element_ty), mask=col_ok[:, None] & d_ok[None, :])


def triton_available_for(x: Tensor) -> bool:
    """True when the Triton kernels can run on ``x``'s device (CUDA, or CPU when interpreted)."""
    return x.is_cuda or (x.device.type == "cpu" and kernels_interpreted(_fwd_kernel))


def _config(length: int, dim: int) -> dict:
    """Block sizes: the whole feature dim in registers, blocks of positions sized to fit."""
    block_d = max(16, triton.next_power_of_2(dim))
    block = 64 if block_d <= 64 else 32 if block_d <= 256 else 16
    block = min(block, max(16, triton.next_power_of_2(length)))
    warps = 4 if block * block_d < 4096 else 8
    return dict(BLOCK_I=block, BLOCK_J=block, BLOCK_D=block_d, num_warps=warps)


def _common_args(a: Tensor, c: Tensor, inv_temp: float) -> tuple:
    _, length, dim = a.shape
    return (length, dim, a.stride(0), a.stride(1), c.stride(0), c.stride(1), inv_temp)


class _SkipInfoNCE(torch.autograd.Function):
    """Per-position losses ``[B, L]`` (fp32, 0 off anchors) with gradients for both vectors,
    and the ``[B, L]`` bool anchor flag (non-differentiable)."""

    @staticmethod
    def forward(ctx, anchors, candidates, items, skipped, pos, inv_temp):
        b, length, dim = anchors.shape
        loss = torch.empty((b, length), device=anchors.device, dtype=torch.float32)
        lse = torch.empty_like(loss)
        live = torch.empty((b, length), device=anchors.device, dtype=torch.int8)
        cfg = _config(length, dim)
        f32 = anchors.dtype in (torch.float32, torch.float64)
        _fwd_kernel[(b, triton.cdiv(length, cfg["BLOCK_I"]))](
            anchors, candidates, items, skipped, pos, loss, lse, live,
            *_common_args(anchors, candidates, inv_temp), EPS=_EPS, F32_DOT=f32, **cfg)
        ctx.save_for_backward(anchors, candidates, items, skipped, pos, lse, live)
        ctx.inv_temp = inv_temp
        is_anchor = live.bool()
        ctx.mark_non_differentiable(is_anchor)
        return loss, is_anchor

    @staticmethod
    def backward(ctx, grad_loss, _grad_is_anchor):
        anchors, candidates, items, skipped, pos, lse, live = ctx.saved_tensors
        b, length, dim = anchors.shape
        grow = grad_loss.float().contiguous()
        cfg = _config(length, dim)
        f32 = anchors.dtype in (torch.float32, torch.float64)
        grid = (b, triton.cdiv(length, cfg["BLOCK_I"]))
        args = _common_args(anchors, candidates, ctx.inv_temp)
        d_anchors = d_candidates = None
        if ctx.needs_input_grad[0]:
            d_anchors = torch.empty(anchors.shape, dtype=anchors.dtype, device=anchors.device)
            _bwd_anchor_kernel[grid](
                anchors, candidates, items, skipped, pos, lse, live, grow, d_anchors, *args,
                d_anchors.stride(0), d_anchors.stride(1), EPS=_EPS, F32_DOT=f32, **cfg)
        if ctx.needs_input_grad[1]:
            d_candidates = torch.empty(candidates.shape, dtype=candidates.dtype,
                                       device=candidates.device)
            _bwd_candidate_kernel[grid](
                anchors, candidates, items, skipped, pos, lse, live, grow, d_candidates, *args,
                d_candidates.stride(0), d_candidates.stride(1), EPS=_EPS, F32_DOT=f32, **cfg)
        return d_anchors, d_candidates, None, None, None, None


def _check(anchors: Tensor, items: Tensor, skips: Tensor, candidates: Tensor,
           temperature: float, reduction: str) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if anchors.dim() != 3:
        raise ValueError(f"anchors must be [B, L, d], got shape {tuple(anchors.shape)}")
    if candidates.shape != anchors.shape:
        raise ValueError(f"candidates must have the anchors' shape {tuple(anchors.shape)}, "
                         f"got {tuple(candidates.shape)}")
    for name, t in (("items", items), ("skips", skips)):
        if t.shape != anchors.shape[:2]:
            raise ValueError(f"{name} must be [B, L] = {tuple(anchors.shape[:2])}, got {tuple(t.shape)}")
    for name, t in (("anchors", anchors), ("candidates", candidates)):
        if t.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise ValueError(f"{name} must be fp16/bf16/fp32/fp64, got {t.dtype}")
    devices = {anchors.device, candidates.device, items.device, skips.device}
    if len(devices) != 1:
        raise ValueError(f"all inputs must be on one device, got {sorted(map(str, devices))}")
    if not triton_available_for(anchors):
        raise ValueError(f"the Triton skip-InfoNCE kernel needs CUDA tensors (or TRITON_INTERPRET=1 "
                         f"for CPU tensors), got device {anchors.device}")


def fused_skip_infonce_loss(
    anchors: Tensor,
    items: Tensor,
    skips: Tensor,
    *,
    candidates: Tensor | None = None,
    temperature: float = 0.1,
    pad_index: int = 0,
    reduction: str = "mean",
    normalize: str = "kept",
) -> Tensor:
    """Triton version of :func:`negrec_fast.losses.skip_infonce_loss` (same arguments and result).

    The loss is fp32 whatever the input dtype; gradients reach ``anchors`` and ``candidates``
    (summed when ``candidates`` is None, i.e. the same tensor). Mixed input dtypes are
    promoted to a common one first (as under autocast).
    """
    cand = anchors if candidates is None else candidates
    _check(anchors, items, skips, cand, temperature, reduction)
    check_normalize(normalize)
    if cand.dtype != anchors.dtype:
        common = torch.promote_types(anchors.dtype, cand.dtype)
        anchors, cand = anchors.to(common), cand.to(common)
    real = items != pad_index
    skip = skips.bool()
    skipped = real & skip
    kept = real & ~skip
    nxt = next_kept_index(kept)
    pos = torch.where(kept, nxt, -1).to(torch.int32).contiguous()  # -1: no positive
    if anchors.stride(-1) != 1:
        anchors = anchors.contiguous()
    if cand.stride(-1) != 1:
        cand = cand.contiguous()
    if anchors.numel() == 0:  # empty batch, session or feature dim: nothing to launch
        per_pos = (anchors.float().sum(-1) + cand.float().sum(-1)) * 0.0
        is_anchor = torch.zeros(items.shape, dtype=torch.bool, device=items.device)
    else:  # the kernel decides which positions are anchors (a positive and >= 1 negative)
        per_pos, is_anchor = _SkipInfoNCE.apply(anchors, cand, items.contiguous(),
                                     skipped.to(torch.int8).contiguous(), pos, 1.0 / temperature)
    counted = pos >= 0 if normalize == "kept" else is_anchor  # kept with a later kept play
    return reduce_rows(per_pos if reduction == "none" else per_pos.flatten(),
                       counted.flatten(), reduction)


def skip_infonce(
    anchors: Tensor,
    items: Tensor,
    skips: Tensor,
    *,
    candidates: Tensor | None = None,
    temperature: float = 0.1,
    pad_index: int = 0,
    reduction: str = "mean",
    normalize: str = "kept",
    backend: str = "auto",
) -> Tensor:
    """Skip-informed InfoNCE with a choice of implementation.

    ``backend``: ``"triton"`` (fused kernel), ``"torch"`` (the reference), or ``"auto"``:
    Triton for CUDA tensors (and CPU tensors under ``TRITON_INTERPRET=1``), else the reference.
    """
    fn = fused_skip_infonce_loss if use_triton(backend, anchors, _fwd_kernel) else skip_infonce_loss
    return fn(anchors, items, skips, candidates=candidates, temperature=temperature,
              pad_index=pad_index, reduction=reduction, normalize=normalize)
