"""Backend choice and launch settings shared by the fused kernels (sampled softmax, linear
cross-entropy, skip-InfoNCE).

Everything here depends only on shapes, dtypes, devices and global settings, never on tensor
values, so the host code stays free of device synchronisation (CUDA-graph and compile safe).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

BACKENDS = ("auto", "triton", "torch")


def kernels_interpreted(kernel: object) -> bool:
    """True when ``kernel`` was decorated under ``TRITON_INTERPRET=1`` (runs on CPU tensors)."""
    return isinstance(kernel, InterpretedFunction)


def use_triton(backend: str, tensor: torch.Tensor, kernel: object) -> bool:
    """Resolve ``backend``: ``auto`` picks Triton for CUDA tensors, or on CPU under the interpreter."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    if backend == "torch":
        return False
    runnable = tensor.is_cuda or (tensor.device.type == "cpu" and kernels_interpreted(kernel))
    if backend == "triton" and not runnable:
        raise ValueError(
            f"backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 set before triton is "
            f"imported, for CPU tensors), got tensors on {tensor.device}"
        )
    return runnable


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """Common floating dtype of the embedding inputs (fp16, bf16, fp32 or fp64)."""
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors))
    if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"expected floating-point query and item_weight, got {dtype}")
    return dtype


def accumulator(dtype: torch.dtype) -> tuple[torch.dtype, tl.dtype]:
    """Accumulation dtype (torch, triton): fp64 for fp64 inputs, fp32 otherwise."""
    return (torch.float64, tl.float64) if dtype == torch.float64 else (torch.float32, tl.float32)


def dot_precision(dtype: torch.dtype, device: torch.device) -> str | None:
    """``tl.dot`` input precision: IEEE for fp64, and for fp32 unless torch's matmul setting allows
    TF32 on CUDA; ``None`` (Triton's default) for 16-bit inputs, where it does not apply."""
    if dtype in (torch.float16, torch.bfloat16):
        return None
    if dtype == torch.float32 and device.type == "cuda" and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return "ieee"


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def split_loop(n_outer: int, n_inner: int, device: torch.device) -> tuple[int, int]:
    """``(splits, blocks_per_split)``: how many programs share one outer block's loop over
    ``n_inner`` inner blocks (grid axis 1), none of them empty.

    On CUDA: enough splits for about two programs per SM. On CPU (interpreter): two, so the
    split path is always exercised by the tests.
    """
    if n_inner <= 1:
        return 1, max(n_inner, 1)
    if device.type != "cuda":
        splits = 2
    else:
        target = 2 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())
        splits = max(1, min(n_inner, triton.cdiv(target, max(n_outer, 1))))
    per_split = triton.cdiv(n_inner, splits)
    return triton.cdiv(n_inner, per_split), per_split


def block_sizes(d: int, device: torch.device) -> tuple[int, int, int, int]:
    """``(BLOCK_M, BLOCK_N, BLOCK_D, num_warps)``: row tile, candidate tile, padded ``d``, warps.

    The whole embedding dimension lives in one tile (``BLOCK_D = next_pow2(d)``, masked).
    The interpreter gets 16 x 16 tiles so that tiny test shapes span several blocks.
    """
    block_d = max(16, triton.next_power_of_2(d))
    if device.type != "cuda":
        return 16, 16, block_d, 1
    if block_d <= 128:
        return 64, 64, block_d, 4
    if block_d <= 256:
        return 64, 32, block_d, 8
    return 32, 32, block_d, 8


@triton.jit
def row_grads(lse_ptr, g_ptr, rows, N, inv_t):
    """Backward inputs of rows ``rows``: their LSE, and their upstream gradient times 1/T
    (padding rows carry a zero gradient)."""
    row_ok = rows < N
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=float("inf"))
    g = tl.load(g_ptr + rows, mask=row_ok, other=0.0) * inv_t
    return lse, g


@triton.jit
def softmax_grad(logits, lse, g, onehot, ACC: tl.constexpr):
    """``dLoss/dlogits`` of a ``[BLOCK_M, BLOCK_N]`` tile: ``g (softmax - onehot)``."""
    return g[:, None] * (tl.exp(logits - lse[:, None]) - onehot.to(ACC))
