"""Fused Triton sampled softmax vs the torch reference ``negrec_fast.losses.sampled_softmax_loss``.

CPU cases run in Triton's interpreter (see ``kernel_modes``).
"""

from __future__ import annotations

import loss_loops
import pytest
import torch
from kernel_modes import interpreter_cases, needs_cuda, run_in_interpreter  # before triton is imported

from negrec_fast.kernels._common_ss import kernels_interpreted, use_triton
from negrec_fast.kernels.sampled_softmax import (
    _fwd_kernel,
    fused_sampled_softmax_loss,
    sampled_softmax,
)
from negrec_fast.losses import sampled_softmax_loss
from negrec_fast.losses._rows import mark_sparse_rows

INTERPRETED = kernels_interpreted(_fwd_kernel)
interpreter = interpreter_cases(INTERPRETED)

def tight(temperature=1.0):
    """fp32-level tolerance (the reference computes in fp32, also for fp64 inputs); logits and
    gradients scale with 1 / temperature, and so does their rounding error."""
    return dict(rtol=1e-5, atol=1e-5 * max(1.0, 1.0 / temperature))


def make_batch(n, k, d, v, dtype, *, seed=0, device="cpu", n_pad=2):
    """Random batch with duplicate targets, padding rows and negatives that hit targets."""
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(n, d, generator=gen, dtype=torch.float64) * 0.4
    weight = torch.randn(v, d, generator=gen, dtype=torch.float64) * 0.5
    targets = torch.randint(2, max(3, n // 2 + 2), (n,), generator=gen)  # many duplicates
    targets[torch.randperm(n, generator=gen)[:n_pad]] = 0
    negatives = torch.randint(2, v, (k,), generator=gen)
    hits = min(k, 2)
    negatives[:hits] = targets[targets != 0][:hits]
    neg_logq = -torch.rand(k, generator=gen) * 4
    target_logq = -torch.rand(n, generator=gen) * 4
    cast = dict(dtype=dtype, device=device)
    return (
        query.to(**cast).requires_grad_(),
        weight.to(**cast).requires_grad_(),
        targets.to(device),
        negatives.to(device),
        neg_logq.to(device),
        target_logq.to(device),
    )


def loss_and_grads(fn, query, weight, *args, **kwargs):
    loss = fn(query, weight, *args, **kwargs)
    upstream = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype, device=loss.device).reshape(loss.shape)
    grad_q, grad_w = torch.autograd.grad((loss * upstream).sum(), (query, weight))
    return loss, grad_q, grad_w


def assert_matches_reference(query, weight, targets, negatives, tol, **kwargs):
    got = loss_and_grads(fused_sampled_softmax_loss, query, weight, targets, negatives, **kwargs)
    want = loss_and_grads(sampled_softmax_loss, query, weight, targets, negatives, **kwargs)
    for name, g, w in zip(("loss", "grad query", "grad item_weight"), got, want):
        assert not g.isnan().any(), f"{name} has NaN"
        torch.testing.assert_close(g, w.to(g.dtype), **tol, msg=lambda m, name=name: f"{name}: {m}")


def _rel_err(got, want):
    return ((got.float() - want.float()).norm() / want.float().norm().clamp(min=1e-30)).item()


CASES = [
    # n, k, d, v, logq, temperature, reduction
    (13, 11, 20, 40, "both", 0.7, "mean"),
    (5, 3, 5, 30, "none", 1.0, "sum"),
    (20, 9, 24, 50, "neg", 0.1, "none"),  # two row tiles, d not a power of two
    (33, 40, 17, 70, "target", 2.0, "mean"),  # candidate tiles split across programs
]


@interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,k,d,v,logq,temperature,reduction", CASES)
def test_matches_reference(dtype, n, k, d, v, logq, temperature, reduction):
    query, weight, targets, negatives, neg_logq, target_logq = make_batch(n, k, d, v, dtype, seed=n + k)
    assert_matches_reference(
        query, weight, targets, negatives, tight(temperature),
        neg_logq=neg_logq if logq in ("both", "neg") else None,
        target_logq=target_logq if logq in ("both", "target") else None,
        temperature=temperature, reduction=reduction,
    )


@interpreter
@pytest.mark.parametrize("logq", [False, True])
def test_matches_loops(logq):
    """fp64 kernel vs the float64 loops of ``loss_loops``: per-row values, the mean and its gradients."""
    query, weight, targets, negatives, neg_logq, target_logq = make_batch(7, 4, 5, 20, torch.float64, seed=3)
    extra = dict(neg_logq=neg_logq.double(), target_logq=target_logq.double()) if logq else {}
    loop_q, loop_w = (x.detach().clone().requires_grad_() for x in (query, weight))
    per_row, want = loss_loops.sampled_softmax(loop_q, loop_w, targets, negatives, temperature=0.5, **extra)
    got = fused_sampled_softmax_loss(query, weight, targets, negatives, temperature=0.5, **extra)
    rows = fused_sampled_softmax_loss(query, weight, targets, negatives, temperature=0.5, reduction="none", **extra)
    torch.testing.assert_close(rows, loss_loops.stack(per_row), rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    for g, w in zip(torch.autograd.grad(got, (query, weight)), torch.autograd.grad(want, (loop_q, loop_w))):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-10)


@interpreter
def test_sparse_rows_table_gets_the_same_gradient_as_sparse_rows():
    """A table marked for sparse row gradients (``train.optimizer = "sparse_adam"``): the same
    loss and query gradient, and a sparse COO table gradient equal to the dense one."""
    query, weight, targets, negatives, neg_logq, target_logq = make_batch(13, 11, 20, 40, torch.float32)
    kwargs = dict(neg_logq=neg_logq, target_logq=target_logq, temperature=0.7)
    want = loss_and_grads(fused_sampled_softmax_loss, query, weight, targets, negatives, **kwargs)
    mark_sparse_rows(weight)
    got = loss_and_grads(fused_sampled_softmax_loss, query, weight, targets, negatives, **kwargs)
    assert got[2].is_sparse and not want[2].is_sparse
    assert set(got[2].coalesce().indices()[0].tolist()) <= set(torch.cat([targets, negatives]).tolist())
    for name, g, w in zip(("loss", "grad query", "grad item_weight"), got, want):
        torch.testing.assert_close(g.to_dense(), w, **tight(), msg=lambda m, name=name: f"{name}: {m}")


@interpreter
def test_fp16_inputs_accumulate_in_fp32():
    """Logits and loss come from fp32 accumulation (tight); gradient tiles are rounded to fp16
    before the second matmul, so gradients match to a relative (Frobenius) error of 2e-3."""
    query, weight, targets, negatives, neg_logq, _ = make_batch(13, 11, 20, 40, torch.float16)
    got = loss_and_grads(fused_sampled_softmax_loss, query, weight, targets, negatives, neg_logq=neg_logq)
    want = loss_and_grads(sampled_softmax_loss, query, weight, targets, negatives, neg_logq=neg_logq)
    assert got[0].dtype == torch.float32 and got[1].dtype == got[2].dtype == torch.float16
    torch.testing.assert_close(got[0], want[0], **tight())
    for name, g, w in zip(("grad query", "grad item_weight"), got[1:], want[1:]):
        assert _rel_err(g, w) < 2e-3, f"{name}: relative error {_rel_err(g, w):.3g}"


@interpreter
def test_fp64_gradients_match_finite_differences():
    query, weight, targets, negatives, neg_logq, target_logq = make_batch(6, 4, 5, 30, torch.float64, n_pad=1)

    def loss(q, w):
        return fused_sampled_softmax_loss(
            q, w, targets, negatives, neg_logq=neg_logq, target_logq=target_logq, temperature=0.5, reduction="none"
        )

    assert torch.autograd.gradcheck(loss, (query, weight), fast_mode=True)


@interpreter
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_padding_gives_zero_loss_and_grads(reduction):
    query, weight, _, negatives, neg_logq, _ = make_batch(7, 5, 6, 30, torch.float32)
    targets = torch.zeros(7, dtype=torch.long)
    loss, grad_q, grad_w = loss_and_grads(
        fused_sampled_softmax_loss, query, weight, targets, negatives, neg_logq=neg_logq, reduction=reduction
    )
    assert torch.equal(loss, torch.zeros_like(loss))
    assert torch.equal(grad_q, torch.zeros_like(grad_q))
    assert torch.equal(grad_w, torch.zeros_like(grad_w))


@interpreter
def test_accidental_hits_and_duplicate_targets_are_masked():
    """Every negative equals some target and targets repeat: only the diagonal survives for some rows."""
    query, weight, _, _, _, _ = make_batch(6, 4, 8, 30, torch.float32)
    targets = torch.tensor([5, 5, 7, 7, 7, 9])
    negatives = torch.tensor([5, 7, 9, 9])
    assert_matches_reference(query, weight, targets, negatives, tight(), reduction="none")
    loss = fused_sampled_softmax_loss(query, weight, targets, negatives, reduction="none")
    # row 5 (target 9): candidates 5, 5, 7, 7, 7 (in-batch) and 5, 7 (negatives) survive
    logits = query[5].detach() @ weight[[5, 5, 7, 7, 7, 9, 5, 7]].detach().T
    torch.testing.assert_close(loss[5], torch.logsumexp(logits, 0) - logits[5])


@interpreter
def test_non_contiguous_inputs_and_no_negatives():
    query, weight, targets, _, _, target_logq = make_batch(9, 1, 12, 40, torch.float32)
    wide = torch.randn(9, 24).requires_grad_()
    query = wide[:, ::2]  # stride (24, 2)
    negatives = torch.empty(0, dtype=torch.long)
    assert_matches_reference(
        query, weight, targets, negatives, tight(), target_logq=target_logq, reduction="sum"
    )


@interpreter
def test_empty_batch_is_zero():
    query, weight = torch.zeros(0, 4, requires_grad=True), torch.randn(10, 4)
    loss = fused_sampled_softmax_loss(query, weight, torch.zeros(0, dtype=torch.long), torch.tensor([3]))
    assert loss.item() == 0.0


@interpreter
def test_auto_backend_uses_interpreter_on_cpu():
    query, weight, targets, negatives, neg_logq, _ = make_batch(5, 3, 6, 30, torch.float32)
    assert use_triton("auto", query, _fwd_kernel)
    fused = sampled_softmax(query, weight, targets, negatives, neg_logq=neg_logq, backend="auto")
    ref = sampled_softmax(query, weight, targets, negatives, neg_logq=neg_logq, backend="torch")
    assert torch.equal(ref, sampled_softmax_loss(query, weight, targets, negatives, neg_logq=neg_logq))
    torch.testing.assert_close(fused, ref)


@interpreter
def test_torch_compile_runs_the_kernel_eagerly_inside_a_compiled_graph():
    query, weight, targets, negatives, neg_logq, _ = make_batch(9, 5, 12, 40, torch.float32)

    def model_loss(q, w):
        return fused_sampled_softmax_loss(torch.nn.functional.gelu(q), w, targets, negatives, neg_logq=neg_logq) * 2

    want = loss_and_grads(model_loss, query, weight)
    got = loss_and_grads(torch.compile(model_loss, backend="aot_eager"), query, weight)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_bad_arguments_are_rejected_with_clear_messages():
    query, weight, targets, negatives = torch.randn(4, 6), torch.randn(20, 6), torch.tensor([2, 3, 4, 5]), torch.tensor([7])
    with pytest.raises(ValueError, match="backend must be 'auto', 'triton' or 'torch', got 'cuda'"):
        sampled_softmax(query, weight, targets, negatives, backend="cuda")
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        fused_sampled_softmax_loss(query, weight, targets, negatives, temperature=0)
    with pytest.raises(ValueError, match="reduction must be 'mean', 'sum' or 'none', got 'avg'"):
        fused_sampled_softmax_loss(query, weight, targets, negatives, reduction="avg")
    with pytest.raises(ValueError, match=r"item_weight \[V, d\], got \(4, 6\) and \(20, 5\)"):
        fused_sampled_softmax_loss(query, weight[:, :5], targets, negatives)
    with pytest.raises(ValueError, match=r"targets must have shape \[4\], got \(3,\)"):
        fused_sampled_softmax_loss(query, weight, targets[:3], negatives)
    with pytest.raises(ValueError, match=r"neg_logq must have shape \(1,\), got \(2,\)"):
        fused_sampled_softmax_loss(query, weight, targets, negatives, neg_logq=torch.zeros(2))
    with pytest.raises(TypeError, match="expected floating-point query and item_weight"):
        fused_sampled_softmax_loss(query.long(), weight.long(), targets, negatives)


@pytest.mark.skipif(INTERPRETED, reason="already running under the interpreter")
def test_cpu_tests_in_interpreter_subprocess():
    run_in_interpreter(__file__, min_passed=22)


# ---------------------------------------------------------------- GPU (realistic shapes)
# fp32: rtol 1e-4 / atol 1e-4 x max|reference| (summation order differs from cuBLAS).
# bf16: relative error of each tensor (Frobenius norm) below 2e-2.


def _gpu_batch(dtype):
    torch.manual_seed(0)
    n, k, d, v = 5120, 1000, 128, 100_000
    query = (torch.randn(n, d, device="cuda") * 0.3).to(dtype).requires_grad_()
    weight = (torch.randn(v, d, device="cuda") * 0.3).to(dtype).requires_grad_()
    targets = torch.randint(2, 3000, (n,), device="cuda")
    targets[::7] = 0
    negatives = torch.randperm(v - 2, device="cuda")[:k] + 2
    neg_logq = -torch.rand(k, device="cuda") * 8
    return query, weight, targets, negatives, neg_logq


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gpu_realistic_shapes(dtype, reduction):
    query, weight, targets, negatives, neg_logq = _gpu_batch(dtype)
    kwargs = dict(neg_logq=neg_logq, temperature=0.2, reduction=reduction)
    got = loss_and_grads(fused_sampled_softmax_loss, query, weight, targets, negatives, **kwargs)
    want = loss_and_grads(sampled_softmax_loss, query, weight, targets, negatives, **kwargs)
    for name, g, w in zip(("loss", "grad query", "grad item_weight"), got, want):
        assert torch.isfinite(g).all(), name
        if dtype == torch.float32:
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4 * w.abs().max().item(), msg=lambda m: f"{name}: {m}")
        else:
            assert _rel_err(g, w) < 2e-2, f"{name}: relative error {_rel_err(g, w):.3g}"


@pytest.mark.gpu
@needs_cuda
def test_gpu_never_materializes_logits():
    query, weight, targets, negatives, neg_logq = _gpu_batch(torch.float32)
    logits_bytes = query.shape[0] * (query.shape[0] + negatives.shape[0]) * 4
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    loss = fused_sampled_softmax_loss(query, weight, targets, negatives, neg_logq=neg_logq)
    torch.autograd.grad(loss, query)
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - before < logits_bytes / 4


@pytest.mark.gpu
@needs_cuda
def test_gpu_cuda_graph_and_torch_compile():
    query, weight, targets, negatives, neg_logq = _gpu_batch(torch.float32)
    want = loss_and_grads(fused_sampled_softmax_loss, query, weight, targets, negatives, neg_logq=neg_logq)

    compiled = torch.compile(lambda q, w: fused_sampled_softmax_loss(q, w, targets, negatives, neg_logq=neg_logq))
    got = loss_and_grads(compiled, query, weight)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)

    static_q = query.detach().clone().requires_grad_()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up (compiles the kernels) outside the capture
        loss_and_grads(fused_sampled_softmax_loss, static_q, weight, targets, negatives, neg_logq=neg_logq)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss = fused_sampled_softmax_loss(static_q, weight, targets, negatives, neg_logq=neg_logq)
        grad_q = torch.autograd.grad(loss, static_q)[0]
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(loss, want[0])
    torch.testing.assert_close(grad_q, want[1])
