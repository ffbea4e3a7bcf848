"""Triton skip-informed InfoNCE vs the torch reference (values and gradients).

CPU cases run in Triton's interpreter (see ``kernel_modes``); GPU cases
(``@pytest.mark.gpu``) run natively.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import loss_loops
from kernel_modes import interpreter_cases, run_in_interpreter  # before triton is imported

from negrec_fast.kernels.skip_infonce import (
    fused_skip_infonce_loss,
    skip_infonce,
    triton_available_for,
)
from negrec_fast.losses import skip_infonce_loss

INTERPRETED = triton_available_for(torch.empty(0))
interp = interpreter_cases(INTERPRETED)


def make_batch(b, length, d, *, seed=0, n_items=6, skip_p=0.4, dtype=torch.float32,
               device="cpu", separate=False, min_len=0):
    """Left-padded sessions of random lengths; few distinct items so repeats are common."""
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(2, 2 + n_items, (b, length), generator=g)
    lengths = torch.randint(min_len, length + 1, (b,), generator=g)
    items[torch.arange(length)[None, :] < (length - lengths)[:, None]] = 0
    skips = torch.rand(b, length, generator=g) < skip_p
    anchors = torch.randn(b, length, d, generator=g, dtype=torch.float64).to(dtype)
    cands = torch.randn(b, length, d, generator=g, dtype=torch.float64).to(dtype) if separate else None
    to = dict(device=device)
    return (anchors.to(**to).requires_grad_(), items.to(**to), skips.to(**to),
            None if cands is None else cands.to(**to).requires_grad_())


def run_both(anchors, items, skips, cands, *, reduction="mean", upstream_seed=1, **kw):
    """Loss and gradients of the kernel and of the reference for the same inputs."""
    inputs = [anchors] if cands is None else [anchors, cands]
    results = []
    for fn in (fused_skip_infonce_loss, skip_infonce_loss):
        out = fn(anchors, items, skips, candidates=cands, reduction=reduction, **kw)
        if reduction == "none":  # arbitrary upstream gradient, also at non-anchor positions
            g = torch.Generator().manual_seed(upstream_seed)
            up = torch.randn(out.shape, generator=g).to(out.device)
            grads = torch.autograd.grad((out * up).sum(), inputs)
        else:
            grads = torch.autograd.grad(out, inputs)
        results.append((out.detach(), [x.detach() for x in grads]))
    return results


def assert_close_run(res, *, rtol=1e-5, atol=1e-5, grad_tol=1e-5):
    (out, grads), (ref, ref_grads) = res
    assert out.dtype == ref.dtype == torch.float32
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol)
    for g, r in zip(grads, ref_grads):
        assert g.dtype == r.dtype and g.shape == r.shape
        assert torch.isfinite(g).all()
        scale = r.abs().max().clamp(min=1.0)
        assert (g.float() - r.float()).abs().max() <= grad_tol * scale, (g - r).abs().max()


@interp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("separate", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_reference(dtype, separate, reduction):
    batch = make_batch(4, 11, 7, seed=3, dtype=dtype, separate=separate)
    assert_close_run(run_both(*batch, reduction=reduction))


@interp
@pytest.mark.parametrize(("b", "length", "d"), [(2, 3, 5), (5, 12, 24), (3, 9, 17), (2, 45, 70),
                                                 (2, 70, 9)])
def test_shapes_not_block_multiples(b, length, d):
    """Odd L and d; the last two shapes span several position blocks (online LSE across blocks)."""
    for seed in (0, 1):
        batch = make_batch(b, length, d, seed=seed, separate=True, min_len=length // 2)
        assert_close_run(run_both(*batch, reduction="sum"), grad_tol=2e-5)


@interp
@pytest.mark.parametrize("temperature", [0.02, 1.0, 3.0])
def test_temperatures(temperature):
    batch = make_batch(3, 10, 6, seed=5, separate=True)
    assert_close_run(run_both(*batch, temperature=temperature, reduction="none"), grad_tol=2e-5)


@interp
def test_pad_index_and_int32_items():
    anchors, items, skips, cands = make_batch(3, 9, 8, seed=7, separate=True)
    items = torch.where(items == 0, torch.full_like(items, 1), items).int()  # padding id 1
    assert_close_run(run_both(anchors, items, skips, cands, pad_index=1))


@interp
def test_mixed_dtypes_promote():
    anchors, items, skips, cands = make_batch(3, 8, 6, seed=13, separate=True)
    cands = cands.detach().double().requires_grad_()
    (out, grads), (ref, ref_grads) = run_both(anchors, items, skips, cands, reduction="sum")
    assert grads[0].dtype == torch.float32 and grads[1].dtype == torch.float64
    assert_close_run(((out, grads), (ref, ref_grads)))


@interp
def test_non_contiguous_inputs():
    """Views as the trainer makes them (``x[:, :-1]``); gradients come back in the views' shape."""
    anchors, items, skips, cands = make_batch(3, 10, 6, seed=11, separate=True)
    base_a = torch.randn(3, 11, 6, dtype=torch.float64).float().requires_grad_()
    view_a = base_a[:, 1:]
    view_c = cands.detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()
    assert not view_a.is_contiguous() and not view_c.is_contiguous()
    assert_close_run(run_both(view_a, items, skips, view_c, reduction="sum"))


@interp
def test_hand_computed_session():
    """Anchor without a later kept play, a skipped play with the positive's item, and a kept
    play whose only skipped play copies its positive (no anchor: not in the mean)."""
    torch.manual_seed(0)
    # pos:   0    1    2    3    4    5    6
    items = torch.tensor([[0, 0, 3, 5, 4, 5, 9],
                          [0, 0, 0, 3, 5, 5, 6]])
    skips = torch.tensor([[False, True, False, True, True, False, True],
                          [False, False, False, False, True, False, False]])
    x = torch.randn(2, 7, 5, requires_grad=True)
    out = fused_skip_infonce_loss(x, items, skips, temperature=0.5, reduction="none")
    mean = fused_skip_infonce_loss(x, items, skips, temperature=0.5)
    # row 0: kept 2 and 5. Anchor 2 -> positive 5 (item 5); negatives: 4 (item 4) and 6 (item 9),
    # not 3 (skipped but item 5 = the positive's). Position 5 has no later kept play.
    # row 1: kept 3, 5, 6; skipped 4 (item 5). Position 3 -> positive 5 (item 5) has no usable
    # negative; anchor 5 -> positive 6 (item 6), negative 4.
    cos = lambda b, i, j: F.cosine_similarity(x[b, i], x[b, j], dim=0, eps=1e-8) / 0.5  # noqa: E731
    l02 = torch.logsumexp(torch.stack([cos(0, 2, 5), cos(0, 2, 4), cos(0, 2, 6)]), 0) - cos(0, 2, 5)
    l15 = torch.logsumexp(torch.stack([cos(1, 5, 6), cos(1, 5, 4)]), 0) - cos(1, 5, 6)
    torch.testing.assert_close(out[0, 2], l02, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[1, 5], l15, rtol=1e-5, atol=1e-6)
    assert out.nonzero().tolist() == [[0, 2], [1, 5]]
    # kept plays with a later kept play: (0, 2), (1, 3), (1, 5); anchors: (0, 2), (1, 5)
    torch.testing.assert_close(mean, (l02 + l15) / 3, rtol=1e-5, atol=1e-6)
    by_anchor = fused_skip_infonce_loss(x, items, skips, temperature=0.5, normalize="anchors")
    torch.testing.assert_close(by_anchor, (l02 + l15) / 2, rtol=1e-5, atol=1e-6)
    g, = torch.autograd.grad(out.sum(), x)
    g_ref, = torch.autograd.grad(l02 + l15, x)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-6)
    assert g[0, [0, 1, 3]].abs().max() == 0  # padding and the excluded skip get no gradient
    assert g[1, [0, 1, 2, 3]].abs().max() == 0  # padding and the non-anchor


@interp
@pytest.mark.parametrize("normalize", ["kept", "anchors"])
@pytest.mark.parametrize("separate", [False, True])
def test_matches_loops(normalize, separate):
    """Values and gradients (autograd of the float64 loops in ``loss_loops``) of the mean."""
    anchors, items, skips, cands = make_batch(3, 9, 4, seed=17, n_items=4, separate=separate, min_len=4)
    inputs = [anchors] if cands is None else [anchors, cands]
    loop_in = [x.detach().double().requires_grad_() for x in inputs]
    _, want = loss_loops.skip_infonce(loop_in[0], items, skips, candidates=loop_in[-1] if separate else None,
                                      temperature=0.3, normalize=normalize)
    got = fused_skip_infonce_loss(anchors, items, skips, candidates=cands, temperature=0.3, normalize=normalize)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    for g, w in zip(torch.autograd.grad(got, inputs), torch.autograd.grad(want, loop_in)):
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-5)


@interp
@pytest.mark.parametrize("normalize", ["kept", "anchors"])
def test_positions_without_a_usable_negative(normalize):
    """Two items only, so many kept plays see only skipped copies of their positive; those are
    no anchors: loss 0 and no gradient, counted by the "kept" mean only (loop reference)."""
    anchors, items, skips, cands = make_batch(6, 12, 5, seed=22, n_items=2, skip_p=0.2,
                                              separate=True, min_len=6)
    per_pos, loop_mean = loss_loops.skip_infonce(anchors.double(), items, skips, candidates=cands.double(),
                                                 normalize=normalize)
    loop = loss_loops.stack(per_pos)
    out = fused_skip_infonce_loss(anchors, items, skips, candidates=cands, reduction="none")
    torch.testing.assert_close(out.double(), loop, rtol=1e-5, atol=1e-5)
    # the case occurs: plays with a positive (counted by "kept") that are no anchors (loss 0)
    n_kept = sum(1 for b in range(6) for i in range(12) if items[b, i] != 0 and not skips[b, i]
                 and any(items[b, j] != 0 and not skips[b, j] for j in range(i + 1, 12)))
    assert n_kept - (loop != 0).sum() >= 5 and (loop != 0).sum() >= 5
    mean = fused_skip_infonce_loss(anchors, items, skips, candidates=cands, normalize=normalize)
    torch.testing.assert_close(mean.double(), loop_mean, rtol=1e-5, atol=1e-6)
    res = run_both(anchors, items, skips, cands, reduction="none")
    assert_close_run(res)
    ga, _ = torch.autograd.grad(mean, [anchors, cands])
    no_loss = (res[0][0] == 0)
    assert torch.count_nonzero(ga[no_loss]) == 0


@interp
@pytest.mark.parametrize("case", ["all_padding", "no_skips", "all_skipped", "single_kept"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_no_anchor_batches(case, reduction):
    """No anchors anywhere: loss 0 (graph-connected), zero and finite gradients."""
    anchors, items, skips, cands = make_batch(3, 8, 6, seed=2, separate=True, min_len=8)
    if case == "all_padding":
        items = torch.zeros_like(items)
    elif case == "no_skips":
        skips = torch.zeros_like(skips)
    elif case == "all_skipped":
        skips = torch.ones_like(skips)
    else:  # one kept play per session, the rest skipped: no anchor has a later kept play
        skips = torch.ones_like(skips)
        skips[:, 3] = False
    out = fused_skip_infonce_loss(anchors, items, skips, candidates=cands, reduction=reduction)
    assert out.requires_grad and torch.count_nonzero(out) == 0
    assert out.shape == ((3, 8) if reduction == "none" else ())
    ga, gc = torch.autograd.grad(out.sum(), [anchors, cands])
    assert torch.count_nonzero(ga) == 0 and torch.count_nonzero(gc) == 0


@interp
def test_zero_vectors_and_padding_garbage():
    """A zero anchor (norm below eps) matches the reference; padded rows may hold anything."""
    anchors, items, skips, cands = make_batch(2, 8, 5, seed=4, separate=True, min_len=6)
    per_pos = skip_infonce_loss(anchors, items, skips, candidates=cands, reduction="none")
    b, i = per_pos.nonzero()[0]  # an anchor
    with torch.no_grad():
        anchors[b, i] = 0.0
        anchors[items == 0] = 1e30  # ignored: padding is never an anchor, positive or negative
    (out, grads), (ref, ref_grads) = run_both(anchors, items, skips, cands, reduction="sum")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[1], ref_grads[1], rtol=1e-5, atol=1e-5)
    zero = torch.zeros_like(items, dtype=torch.bool)
    zero[b, i] = True
    assert ref_grads[0][b, i].abs().max() > 1e6  # d(x / eps) / dx: large but finite
    torch.testing.assert_close(grads[0][zero], ref_grads[0][zero], rtol=1e-5, atol=1.0)
    rest = (items != 0) & ~zero
    torch.testing.assert_close(grads[0][rest], ref_grads[0][rest], rtol=1e-5, atol=1e-5)
    assert torch.count_nonzero(grads[0][items == 0]) == 0


@interp
def test_backend_dispatch_under_interpreter():
    anchors, items, skips, cands = make_batch(2, 6, 5, seed=9, separate=True)
    fused = skip_infonce(anchors, items, skips, candidates=cands, reduction="none")
    assert type(fused.grad_fn).__name__ == "_SkipInfoNCEBackward"
    ref = skip_infonce(anchors, items, skips, candidates=cands, reduction="none", backend="torch")
    assert type(ref.grad_fn).__name__ != "_SkipInfoNCEBackward"
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-5)


@interp
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_training_dispatch_passes_candidates_and_normalize(backend):
    """``kernels.dispatch.skip_infonce`` (the objective's entry) forwards both options."""
    from negrec_fast.kernels.dispatch import skip_infonce as dispatched

    anchors, items, skips, cands = make_batch(2, 7, 4, seed=19, n_items=4, separate=True, min_len=5)
    out = dispatched(anchors, items, skips, candidates=cands, temperature=0.2, normalize="anchors", backend=backend)
    _, want = loss_loops.skip_infonce(anchors.double(), items, skips, candidates=cands.double(), temperature=0.2,
                                      normalize="anchors")
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(INTERPRETED, reason="this process is the interpreter run")
def test_cpu_without_interpreter_uses_reference_or_says_why():
    anchors, items, skips, _ = make_batch(2, 6, 5, seed=9)
    out = skip_infonce(anchors, items, skips)  # auto -> the reference on plain CPU
    assert torch.equal(out, skip_infonce_loss(anchors, items, skips))
    with pytest.raises(ValueError, match="needs CUDA tensors \\(or TRITON_INTERPRET=1"):
        skip_infonce(anchors, items, skips, backend="triton")


def test_argument_errors():
    anchors, items, skips, _ = make_batch(2, 6, 5)
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        fused_skip_infonce_loss(anchors, items, skips, temperature=0.0)
    with pytest.raises(ValueError, match="reduction must be 'mean', 'sum' or 'none', got 'avg'"):
        fused_skip_infonce_loss(anchors, items, skips, reduction="avg")
    with pytest.raises(ValueError, match=r"anchors must be \[B, L, d\], got shape \(2, 6\)"):
        fused_skip_infonce_loss(anchors[..., 0], items, skips)
    with pytest.raises(ValueError, match=r"candidates must have the anchors' shape \(2, 6, 5\)"):
        fused_skip_infonce_loss(anchors, items, skips, candidates=anchors[:, :5])
    with pytest.raises(ValueError, match=r"skips must be \[B, L\] = \(2, 6\), got \(2, 5\)"):
        fused_skip_infonce_loss(anchors, items, skips[:, :5])
    with pytest.raises(ValueError, match="anchors must be fp16/bf16/fp32/fp64, got torch.int32"):
        fused_skip_infonce_loss(anchors.detach().int(), items, skips)
    with pytest.raises(ValueError, match="candidates must be fp16/bf16/fp32/fp64, got torch.int64"):
        fused_skip_infonce_loss(anchors, items, skips, candidates=anchors.detach().long())
    with pytest.raises(ValueError, match="backend must be 'auto', 'triton' or 'torch', got 'cuda'"):
        skip_infonce(anchors, items, skips, backend="cuda")


@pytest.mark.skipif(INTERPRETED, reason="this process is the interpreter run")
def test_interpreter_cases():
    """Run this file's CPU kernel cases under TRITON_INTERPRET=1 in a fresh interpreter."""
    run_in_interpreter(__file__, min_passed=47)


# ---------------------------------------------------------------- GPU (native kernels)

GPU_SHAPES = [(256, 20, 128), (64, 200, 256)]


def _gpu_batch(b, length, d, dtype, separate):
    return make_batch(b, length, d, seed=b + length, n_items=50, dtype=dtype, device="cuda",
                      separate=separate, min_len=2)


@pytest.fixture
def ieee_reference():
    """The reference in true fp32 (no TF32 matmuls), restoring the global setting after."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.gpu
@pytest.mark.parametrize(("b", "length", "d"), GPU_SHAPES)
@pytest.mark.parametrize("separate", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gpu_fp32(b, length, d, separate, reduction, ieee_reference):
    """fp32: loss within rtol/atol 1e-5, gradients within 1e-4 of max(|grad|, 1)."""
    batch = _gpu_batch(b, length, d, torch.float32, separate)
    assert_close_run(run_both(*batch, reduction=reduction), grad_tol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize(("b", "length", "d"), GPU_SHAPES)
@pytest.mark.parametrize("separate", [False, True])
def test_gpu_bf16(b, length, d, separate, ieee_reference):
    """bf16 inputs (fp32 math): loss rtol 2e-3, gradients within 3e-2 of max(|grad|, 1)."""
    batch = _gpu_batch(b, length, d, torch.bfloat16, separate)
    assert_close_run(run_both(*batch, reduction="sum"), rtol=2e-3, atol=2e-3, grad_tol=3e-2)


@pytest.mark.gpu
def test_gpu_no_host_sync_and_cuda_graph(ieee_reference):
    """Forward+backward never synchronises and replays inside a CUDA graph."""
    anchors, items, skips, cands = _gpu_batch(32, 20, 64, torch.float32, True)
    step = lambda: torch.autograd.grad(  # noqa: E731
        fused_skip_infonce_loss(anchors, items, skips, candidates=cands), [anchors, cands])
    step()  # compile outside the checks
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    with torch.no_grad():  # new values in the static input buffers
        anchors.copy_(torch.randn_like(anchors))
        cands.copy_(torch.randn_like(cands))
    graph.replay()
    expected = step()
    for got, want in zip(captured, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
