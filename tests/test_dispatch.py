"""The loss backend switch: the Triton path (interpreted on CPU) gives the reference's values
and gradients through the same training-objective calls."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from negrec_fast.config import LossConfig
from negrec_fast.errors import ConfigError
from negrec_fast.kernels.dispatch import use_triton

SCRIPT = textwrap.dedent(
    """
    import torch
    from negrec_fast.config import LossConfig
    from negrec_fast.kernels.dispatch import rec_loss, skip_infonce

    torch.manual_seed(0)
    q = torch.randn(7, 12, dtype=torch.float64, requires_grad=True)
    w = torch.randn(40, 12, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([2, 5, 0, 5, 9, 11, 3])
    negatives = torch.tensor([20, 21, 22, 23, 24])
    neg_logq = torch.full((5,), -3.0, dtype=torch.float64)
    log_freq = torch.linspace(0.01, 1, 40, dtype=torch.float64).log()
    anchors = torch.randn(3, 6, 12, dtype=torch.float64, requires_grad=True)
    items = torch.tensor([[0, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12], [0, 0, 13, 14, 15, 16]])
    skips = torch.tensor([[0, 0, 1, 0, 1, 0], [0, 1, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0]]).bool()
    for rec in ("sampled_softmax", "full_softmax"):
        out = {}
        for backend in ("torch", "triton"):
            cfg = LossConfig(rec=rec, backend=backend, temperature=0.7)
            loss = rec_loss(cfg, q, w, targets, negatives, neg_logq, n_items=38, item_log_freq=log_freq)
            out[backend] = (loss, *torch.autograd.grad(loss, (q, w)))
        for a, b in zip(out["torch"], out["triton"]):
            torch.testing.assert_close(a.double(), b.double(), rtol=1e-5, atol=1e-6)
    out = {}
    for backend in ("torch", "triton"):
        loss = skip_infonce(anchors, items, skips, temperature=0.1, backend=backend)
        out[backend] = (loss, *torch.autograd.grad(loss, (anchors,)))
    for a, b in zip(out["torch"], out["triton"]):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-5, atol=1e-6)
    print("backends agree")
    """
)


def test_triton_backend_matches_reference_in_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "backends agree" in done.stdout


def test_backend_choice():
    cpu = torch.zeros(1)
    assert not use_triton("auto", cpu) and not use_triton("torch", cpu)
    if os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises(ConfigError, match="loss.backend='triton' needs a CUDA device"):
            use_triton("triton", cpu)
    assert LossConfig().backend == "auto"


def test_logq_with_padding_rows_kept_has_finite_gradients():
    """The GPU path keeps padding rows (static shapes); reserved ids have no frequency."""
    from negrec_fast.kernels.dispatch import rec_loss

    torch.manual_seed(0)
    q = torch.randn(6, 8, requires_grad=True)
    w = torch.randn(20, 8, requires_grad=True)
    targets = torch.tensor([0, 3, 0, 5, 7, 3])
    freq = torch.zeros(20)
    freq[2:] = torch.linspace(0.01, 0.2, 18)
    log_freq = torch.where(freq > 0, freq.log(), torch.zeros_like(freq))
    args = (q, w, targets, torch.tensor([9, 10, 11]), torch.full((3,), -2.0))
    kept = rec_loss(LossConfig(logq=True), *args, n_items=18, item_log_freq=log_freq, compact=False)
    dropped = rec_loss(LossConfig(logq=True), *args, n_items=18, item_log_freq=log_freq, compact=True)
    torch.testing.assert_close(kept, dropped)
    grads = torch.autograd.grad(kept, (q, w))
    assert all(torch.isfinite(g).all() for g in grads)
    torch.testing.assert_close(grads, torch.autograd.grad(dropped, (q, w)))
