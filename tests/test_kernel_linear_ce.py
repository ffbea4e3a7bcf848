"""Fused Triton linear + cross-entropy vs the torch reference ``negrec_fast.losses.full_softmax_loss``.

CPU cases run in Triton's interpreter (see ``kernel_modes``).
"""

from __future__ import annotations

import loss_loops
import pytest
import torch
from kernel_modes import interpreter_cases, needs_cuda, run_in_interpreter  # before triton is imported

from negrec_fast.kernels._common_ss import kernels_interpreted, use_triton
from negrec_fast.kernels.linear_cross_entropy import (
    _fwd_kernel,
    full_softmax,
    fused_linear_cross_entropy_loss,
)
from negrec_fast.losses import full_softmax_loss

INTERPRETED = kernels_interpreted(_fwd_kernel)
interpreter = interpreter_cases(INTERPRETED)


def tight(temperature=1.0):
    """fp32-level tolerance (the reference computes in fp32, also for fp64 inputs); logits and
    gradients scale with 1 / temperature, and so does their rounding error."""
    return dict(rtol=1e-5, atol=1e-5 * max(1.0, 1.0 / temperature))


def make_batch(n, v, d, dtype, *, seed=0, n_pad=2, ignore_index=0, n_reserved=2):
    """Random batch with duplicate targets and ``n_pad`` padding rows."""
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(n, d, generator=gen, dtype=torch.float64) * 0.4
    weight = torch.randn(v, d, generator=gen, dtype=torch.float64) * 0.5
    targets = torch.randint(n_reserved, n_reserved + max(2, n // 2), (n,), generator=gen)
    targets[torch.randperm(n, generator=gen)[:n_pad]] = ignore_index
    return query.to(dtype).requires_grad_(), weight.to(dtype).requires_grad_(), targets


def loss_and_grads(fn, query, weight, *args, **kwargs):
    loss = fn(query, weight, *args, **kwargs)
    upstream = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype, device=loss.device).reshape(loss.shape)
    grad_q, grad_w = torch.autograd.grad((loss * upstream).sum(), (query, weight))
    return loss, grad_q, grad_w


def assert_matches_reference(query, weight, targets, tol, **kwargs):
    got = loss_and_grads(fused_linear_cross_entropy_loss, query, weight, targets, **kwargs)
    want = loss_and_grads(full_softmax_loss, query, weight, targets, **kwargs)
    for name, g, w in zip(("loss", "grad query", "grad item_weight"), got, want):
        assert not g.isnan().any(), f"{name} has NaN"
        torch.testing.assert_close(g, w.to(g.dtype), **tol, msg=lambda m, name=name: f"{name}: {m}")


def _rel_err(got, want):
    return ((got.float() - want.float()).norm() / want.float().norm().clamp(min=1e-30)).item()


CASES = [
    # n, v, d, temperature, reduction, n_reserved, ignore_index
    (13, 40, 20, 0.7, "mean", 2, 0),
    (5, 30, 5, 1.0, "sum", 0, -100),  # nothing reserved; padding id is not an item
    (20, 70, 24, 0.1, "none", 2, 0),  # two row tiles, d not a power of two, split row loop in dW
    (9, 37, 17, 2.0, "mean", 3, 1),
]


@interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,v,d,temperature,reduction,n_reserved,ignore_index", CASES)
def test_matches_reference(dtype, n, v, d, temperature, reduction, n_reserved, ignore_index):
    query, weight, targets = make_batch(
        n, v, d, dtype, seed=n + v, ignore_index=ignore_index, n_reserved=n_reserved
    )
    assert_matches_reference(
        query, weight, targets, tight(temperature), temperature=temperature, reduction=reduction,
        n_reserved=n_reserved, ignore_index=ignore_index,
    )


@interpreter
def test_matches_loops():
    """fp64 kernel vs the float64 loop of ``loss_loops``: per-row values, the mean and its gradients."""
    query, weight, targets = make_batch(6, 15, 5, torch.float64, seed=4, n_reserved=3)
    loop_q, loop_w = (x.detach().clone().requires_grad_() for x in (query, weight))
    per_row, want = loss_loops.full_softmax(loop_q, loop_w, targets, temperature=0.7, n_reserved=3)
    got = fused_linear_cross_entropy_loss(query, weight, targets, temperature=0.7, n_reserved=3)
    rows = fused_linear_cross_entropy_loss(query, weight, targets, temperature=0.7, n_reserved=3, reduction="none")
    torch.testing.assert_close(rows, loss_loops.stack(per_row), rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    for g, w in zip(torch.autograd.grad(got, (query, weight)), torch.autograd.grad(want, (loop_q, loop_w))):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-10)


@interpreter
def test_reserved_rows_get_no_gradient():
    query, weight, targets = make_batch(7, 30, 6, torch.float32, n_pad=1, n_reserved=4)
    _, _, grad_w = loss_and_grads(fused_linear_cross_entropy_loss, query, weight, targets, n_reserved=4)
    assert torch.equal(grad_w[:4], torch.zeros_like(grad_w[:4]))
    assert grad_w[4:].abs().sum(dim=1).min() > 0  # every real item is a candidate of every row


@interpreter
def test_fp16_inputs_accumulate_in_fp32():
    """Logits and loss come from fp32 accumulation (tight); gradient tiles are rounded to fp16
    before the second matmul, so gradients match to a relative (Frobenius) error of 2e-3."""
    query, weight, targets = make_batch(13, 40, 20, torch.float16)
    got = loss_and_grads(fused_linear_cross_entropy_loss, query, weight, targets, temperature=0.5)
    want = loss_and_grads(full_softmax_loss, query, weight, targets, temperature=0.5)
    assert got[0].dtype == torch.float32 and got[1].dtype == got[2].dtype == torch.float16
    torch.testing.assert_close(got[0], want[0], **tight(0.5))
    for name, g, w in zip(("grad query", "grad item_weight"), got[1:], want[1:]):
        assert _rel_err(g, w) < 2e-3, f"{name}: relative error {_rel_err(g, w):.3g}"


@interpreter
def test_fp64_gradients_match_finite_differences():
    query, weight, targets = make_batch(6, 30, 5, torch.float64, n_pad=1)

    def loss(q, w):
        return fused_linear_cross_entropy_loss(q, w, targets, temperature=0.5, reduction="none")

    assert torch.autograd.gradcheck(loss, (query, weight), fast_mode=True)


@interpreter
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_padding_gives_zero_loss_and_grads(reduction):
    query, weight, _ = make_batch(7, 30, 6, torch.float32)
    targets = torch.zeros(7, dtype=torch.long)
    loss, grad_q, grad_w = loss_and_grads(fused_linear_cross_entropy_loss, query, weight, targets, reduction=reduction)
    assert torch.equal(loss, torch.zeros_like(loss))
    assert torch.equal(grad_q, torch.zeros_like(grad_q))
    assert torch.equal(grad_w, torch.zeros_like(grad_w))


@interpreter
def test_non_contiguous_weight_and_int32_targets():
    query, _, targets = make_batch(9, 40, 12, torch.float32)
    weight = torch.randn(12, 40).T.requires_grad_()  # [40, 12], stride (1, 40)
    got = loss_and_grads(fused_linear_cross_entropy_loss, query, weight, targets.int(), reduction="sum")
    want = loss_and_grads(full_softmax_loss, query, weight, targets, reduction="sum")
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **tight())


@interpreter
def test_empty_batch_is_zero():
    query, weight = torch.zeros(0, 4, requires_grad=True), torch.randn(10, 4)
    assert fused_linear_cross_entropy_loss(query, weight, torch.zeros(0, dtype=torch.long)).item() == 0.0


@interpreter
def test_auto_backend_uses_interpreter_on_cpu():
    query, weight, targets = make_batch(5, 30, 6, torch.float32)
    assert use_triton("auto", query, _fwd_kernel)
    fused = full_softmax(query, weight, targets, temperature=0.5, backend="auto")
    ref = full_softmax(query, weight, targets, temperature=0.5, backend="torch")
    assert torch.equal(ref, full_softmax_loss(query, weight, targets, temperature=0.5))
    torch.testing.assert_close(fused, ref)


def test_bad_arguments_are_rejected_with_clear_messages():
    query, weight, targets = torch.randn(4, 6), torch.randn(20, 6), torch.tensor([2, 3, 4, 5])
    with pytest.raises(ValueError, match="backend must be 'auto', 'triton' or 'torch', got 'cuda'"):
        full_softmax(query, weight, targets, backend="cuda")
    with pytest.raises(ValueError, match="temperature must be > 0, got -1"):
        fused_linear_cross_entropy_loss(query, weight, targets, temperature=-1)
    with pytest.raises(ValueError, match="reduction must be 'mean', 'sum' or 'none', got 'avg'"):
        fused_linear_cross_entropy_loss(query, weight, targets, reduction="avg")
    with pytest.raises(ValueError, match=r"item_weight \[V, d\], got \(4, 6\) and \(20, 5\)"):
        fused_linear_cross_entropy_loss(query, weight[:, :5], targets)
    with pytest.raises(ValueError, match=r"targets must have shape \[4\], got \(4, 1\)"):
        fused_linear_cross_entropy_loss(query, weight, targets[:, None])
    with pytest.raises(ValueError, match=r"n_reserved must be in \[0, 20\), got 20"):
        fused_linear_cross_entropy_loss(query, weight, targets, n_reserved=20)


@pytest.mark.skipif(INTERPRETED, reason="already running under the interpreter")
def test_cpu_tests_in_interpreter_subprocess():
    run_in_interpreter(__file__, min_passed=19)


# ---------------------------------------------------------------- GPU (realistic shapes)
# fp32: rtol 1e-4 / atol 1e-4 x max|reference| (summation order differs from cuBLAS).
# bf16: relative error of each tensor (Frobenius norm) below 2e-2.


def _gpu_batch(dtype):
    torch.manual_seed(0)
    n, d, v = 5120, 128, 100_000
    query = (torch.randn(n, d, device="cuda") * 0.3).to(dtype).requires_grad_()
    weight = (torch.randn(v, d, device="cuda") * 0.3).to(dtype).requires_grad_()
    targets = torch.randint(2, v, (n,), device="cuda")
    targets[::7] = 0
    return query, weight, targets


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_realistic_shapes(dtype):
    query, weight, targets = _gpu_batch(dtype)
    got = loss_and_grads(fused_linear_cross_entropy_loss, query, weight, targets, temperature=0.2)
    want = loss_and_grads(full_softmax_loss, query, weight, targets, temperature=0.2)
    for name, g, w in zip(("loss", "grad query", "grad item_weight"), got, want):
        assert torch.isfinite(g).all(), name
        if dtype == torch.float32:
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4 * w.abs().max().item(), msg=lambda m: f"{name}: {m}")
        else:
            assert _rel_err(g, w) < 2e-2, f"{name}: relative error {_rel_err(g, w):.3g}"


@pytest.mark.gpu
@needs_cuda
def test_gpu_never_materializes_logits():
    query, weight, targets = _gpu_batch(torch.bfloat16)
    logits_bytes = query.shape[0] * weight.shape[0] * 4
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    loss = fused_linear_cross_entropy_loss(query, weight, targets)
    torch.autograd.grad(loss, (query, weight))
    torch.cuda.synchronize()
    grads_bytes = (query.numel() + weight.numel()) * query.element_size()
    assert torch.cuda.max_memory_allocated() - before < grads_bytes + logits_bytes / 16


@pytest.mark.gpu
@needs_cuda
def test_gpu_cuda_graph_and_torch_compile():
    query, weight, targets = _gpu_batch(torch.float32)
    want = loss_and_grads(fused_linear_cross_entropy_loss, query, weight, targets)

    compiled = torch.compile(lambda q, w: fused_linear_cross_entropy_loss(q, w, targets))
    for g, w in zip(loss_and_grads(compiled, query, weight), want):
        torch.testing.assert_close(g, w)

    static_q = query.detach().clone().requires_grad_()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up (compiles the kernels) outside the capture
        loss_and_grads(fused_linear_cross_entropy_loss, static_q, weight, targets)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss = fused_linear_cross_entropy_loss(static_q, weight, targets)
        grad_q, grad_w = torch.autograd.grad(loss, (static_q, weight))
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(loss, want[0])
    torch.testing.assert_close(grad_q, want[1])
    torch.testing.assert_close(grad_w, want[2])
