"""Skip-informed InfoNCE: Triton kernel vs torch eager and torch.compile (GPU only).

Times forward, backward and forward+backward, and records the peak extra CUDA memory of one
step in ``benchmark.extra_info["peak_mem_mib"]``. Default grid is small; set
``NEGREC_BENCH_FULL=1`` for B x L x d = {64, 256, 1024} x {20, 50, 200} x {64, 128, 256}
in fp32 and bf16. Run: ``pytest benches/bench_kernels_infonce.py --benchmark-only``.
"""

from __future__ import annotations

import functools
import itertools
import os

import pytest
import torch

from negrec_fast.kernels.skip_infonce import fused_skip_infonce_loss
from negrec_fast.losses import skip_infonce_loss

pytestmark = pytest.mark.gpu

FULL = os.environ.get("NEGREC_BENCH_FULL") == "1"
SHAPES = (list(itertools.product([64, 256, 1024], [20, 50, 200], [64, 128, 256])) if FULL
          else [(256, 50, 128), (64, 200, 256), (1024, 20, 64)])
DTYPES = [torch.float32, torch.bfloat16] if FULL else [torch.float32]
IMPLS = ["triton", "eager", "compiled"]
PHASES = ["forward", "backward", "fwd_bwd"]


@functools.cache
def _compiled_reference():
    """One torch.compile of the reference; each grid shape is its own static-shape graph."""
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), 4 * len(SHAPES) * len(DTYPES)))
    return torch.compile(skip_infonce_loss, dynamic=False)


def _loss_fn(impl):
    if impl == "triton":
        return fused_skip_infonce_loss
    return skip_infonce_loss if impl == "eager" else _compiled_reference()


def _batch(b, length, d, dtype):
    """Left-padded sessions (lengths 2..L), about half the plays skipped, separate candidates."""
    g = torch.Generator(device="cuda").manual_seed(0)
    items = torch.randint(2, 100_000, (b, length), device="cuda", generator=g)
    lengths = torch.randint(2, length + 1, (b,), device="cuda", generator=g)
    pad = torch.arange(length, device="cuda")[None, :] < (length - lengths)[:, None]
    items = items.masked_fill(pad, 0)
    skips = torch.rand(b, length, device="cuda", generator=g) < 0.5
    anchors = torch.randn(b, length, d, device="cuda", generator=g).to(dtype).requires_grad_()
    cands = torch.randn(b, length, d, device="cuda", generator=g).to(dtype).requires_grad_()
    return anchors, items, skips, cands


def _peak_mib(fn, before=None):
    """Peak CUDA memory allocated while ``fn`` runs, above what was allocated before it."""
    if before is not None:
        before()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).removeprefix("torch."))
@pytest.mark.parametrize(("b", "length", "d"), SHAPES)
def test_skip_infonce(benchmark, b, length, d, dtype, impl, phase):
    anchors, items, skips, cands = _batch(b, length, d, dtype)
    loss_fn = _loss_fn(impl)
    state = {}

    def forward():
        state["loss"] = loss_fn(anchors, items, skips, candidates=cands)

    def backward():
        anchors.grad = cands.grad = None
        state.pop("loss").backward()

    def sync(fn):
        def run():
            fn()
            torch.cuda.synchronize()
        return run

    for _ in range(3):  # compile / autotune outside the timings
        forward()
        backward()
    if phase == "forward":
        peak = _peak_mib(forward)
        state.clear()
        benchmark.pedantic(sync(forward), rounds=30, warmup_rounds=2)
    elif phase == "backward":
        peak = _peak_mib(backward, before=forward)
        benchmark.pedantic(sync(backward), setup=sync(forward), rounds=30, warmup_rounds=2)
    else:
        peak = _peak_mib(lambda: (forward(), backward()))
        benchmark.pedantic(sync(lambda: (forward(), backward())), rounds=30, warmup_rounds=2)
    benchmark.extra_info.update(peak_mem_mib=round(peak, 2), impl=impl, phase=phase,
                                shape=f"B={b} L={length} d={d}", dtype=str(dtype))
    state.clear()
