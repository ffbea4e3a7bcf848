"""GPU benchmarks of the fused softmax kernels (skipped without CUDA).

Sampled softmax (fused Triton vs torch eager reference vs ``torch.compile(reference)``) and
full-catalogue linear + cross-entropy (fused Triton vs eager, compile, Liger-Kernel and
cut-cross-entropy when importable): forward, backward and forward+backward time, with the peak
memory of one run in ``benchmark.extra_info``. Every result is also appended to
``benches/results/<gpu-name>.json`` with the torch and triton versions.

The default grid is small; ``NEGREC_BENCH_FULL=1`` runs the whole grid. Run with
``pytest benches/bench_kernels_softmax.py --benchmark-only``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
import triton

from negrec_fast.kernels.linear_cross_entropy import fused_linear_cross_entropy_loss
from negrec_fast.kernels.sampled_softmax import fused_sampled_softmax_loss
from negrec_fast.losses import full_softmax_loss, sampled_softmax_loss

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

FULL = os.environ.get("NEGREC_BENCH_FULL") == "1"
RESULTS = Path(__file__).resolve().parent / "results"
CATALOGUE = 1_000_000
DTYPE = torch.bfloat16
PHASES = ("fwd", "bwd", "fwdbwd")


def grid(full: list, small: list) -> list:
    return full if FULL else small


def append_result(record: dict) -> Path:
    """Append ``record`` (plus GPU, torch and triton versions) to ``benches/results/<gpu>.json``."""
    gpu = torch.cuda.get_device_name()
    path = RESULTS / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', gpu)}.json"
    RESULTS.mkdir(exist_ok=True)
    rows = json.loads(path.read_text()) if path.exists() else []
    rows.append({**record, "gpu": gpu, "torch": torch.__version__, "triton": triton.__version__})
    path.write_text(json.dumps(rows, indent=1) + "\n")
    return path


def _fits(n_bytes: int) -> bool:
    return n_bytes < 0.6 * torch.cuda.get_device_properties(0).total_memory


def run_phase(benchmark, loss_fn, inputs, phase: str, record: dict) -> None:
    """Time ``phase`` of ``loss_fn(*inputs)`` (gradients w.r.t. the first two inputs)."""
    params = inputs[:2]

    def forward():
        loss = loss_fn(*inputs)
        torch.cuda.synchronize()
        return loss

    def backward(loss):
        torch.autograd.grad(loss, params)
        torch.cuda.synchronize()

    def both():
        backward(loss_fn(*inputs))

    try:
        both()  # warm-up: kernel compilation, torch.compile tracing, autotuning
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        {"fwd": forward, "bwd": lambda: backward(forward()), "fwdbwd": both}[phase]()
        peak = torch.cuda.max_memory_allocated() - base
        if phase == "bwd":
            benchmark.pedantic(backward, setup=lambda: ((forward(),), {}), rounds=20, iterations=1)
        else:
            benchmark(forward if phase == "fwd" else both)
    except torch.cuda.OutOfMemoryError:
        pytest.skip(f"out of memory: {record}")
    benchmark.extra_info.update(record, peak_mem_bytes=peak)
    append_result({**record, "phase": phase, "peak_mem_bytes": peak, "median_s": benchmark.stats.stats.median})


# ---------------------------------------------------------------- sampled softmax

SAMPLED = {
    "fused": fused_sampled_softmax_loss,
    "eager": sampled_softmax_loss,
    "compile": torch.compile(sampled_softmax_loss, dynamic=False),
}


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("impl", list(SAMPLED))
@pytest.mark.parametrize("k", grid([1000, 4096], [1000]))
@pytest.mark.parametrize("d", grid([64, 128, 256], [128]))
@pytest.mark.parametrize("seq_len", grid([20, 50, 200], [50]))
@pytest.mark.parametrize("batch", grid([64, 256, 1024], [64, 256]))
def test_sampled_softmax(benchmark, batch, seq_len, d, k, impl, phase):
    n = batch * seq_len
    if impl != "fused" and not _fits(3 * 4 * n * (n + k)):
        pytest.skip(f"{impl} would materialize [{n}, {n + k}] logits")
    torch.manual_seed(0)
    query = (torch.randn(n, d, device="cuda") / d**0.5).to(DTYPE).requires_grad_()
    weight = (torch.randn(CATALOGUE, d, device="cuda") / d**0.5).to(DTYPE).requires_grad_()
    targets = torch.randint(2, CATALOGUE, (n,), device="cuda")
    targets[torch.rand(n, device="cuda") < 0.1] = 0  # padding rows
    negatives = torch.randint(2, CATALOGUE, (k,), device="cuda")
    neg_logq = -torch.rand(k, device="cuda") * 10

    def loss_fn(q, w):
        return SAMPLED[impl](q, w, targets, negatives, neg_logq=neg_logq, temperature=0.1)

    benchmark.group = f"sampled_softmax B={batch} L={seq_len} d={d} K={k} {phase}"
    record = dict(op="sampled_softmax", impl=impl, batch=batch, seq_len=seq_len, d=d, k=k,
                  catalogue=CATALOGUE, dtype=str(DTYPE))
    run_phase(benchmark, loss_fn, (query, weight), phase, record)


# ---------------------------------------------------------------- full-catalogue cross-entropy


def _liger(q, w, targets):
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

    return LigerFusedLinearCrossEntropyLoss(ignore_index=0)(w, q, targets)


def _cut_cross_entropy(q, w, targets):
    from cut_cross_entropy import linear_cross_entropy

    return linear_cross_entropy(q, w, targets, ignore_index=0)


FULL_CE = {
    "fused": lambda q, w, t: fused_linear_cross_entropy_loss(q, w, t),
    "eager": lambda q, w, t: full_softmax_loss(q, w, t),
    "compile": torch.compile(full_softmax_loss, dynamic=False),
    # the two libraries below do not exclude the reserved ids: same work, slightly different loss
    "liger": _liger,
    "cut_cross_entropy": _cut_cross_entropy,
}
LIBRARIES = {"liger": "liger_kernel", "cut_cross_entropy": "cut_cross_entropy"}


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("impl", list(FULL_CE))
@pytest.mark.parametrize("d", grid([64, 128, 256], [128]))
@pytest.mark.parametrize("vocab", grid([100_000, CATALOGUE], [100_000]))
@pytest.mark.parametrize("n", grid([2048, 8192, 32768], [8192]))
def test_full_softmax(benchmark, n, vocab, d, impl, phase):
    if impl in LIBRARIES:
        pytest.importorskip(LIBRARIES[impl])
    if impl in ("eager", "compile") and not _fits(3 * 4 * n * vocab):
        pytest.skip(f"{impl} would materialize [{n}, {vocab}] logits")
    torch.manual_seed(0)
    query = (torch.randn(n, d, device="cuda") / d**0.5).to(DTYPE).requires_grad_()
    weight = (torch.randn(vocab, d, device="cuda") / d**0.5).to(DTYPE).requires_grad_()
    targets = torch.randint(2, vocab, (n,), device="cuda")
    targets[torch.rand(n, device="cuda") < 0.1] = 0

    benchmark.group = f"full_softmax N={n} V={vocab} d={d} {phase}"
    record = dict(op="full_softmax", impl=impl, n=n, vocab=vocab, d=d, dtype=str(DTYPE))
    run_phase(benchmark, lambda q, w: FULL_CE[impl](q, w, targets), (query, weight), phase, record)
