"""Training-step throughput: one optimizer step of the default SASRec + skip-InfoNCE
(B=256, max_len=20, K=1000, d=128) on a synthetic batch, in sequences per second.

On CPU the loss backend is the PyTorch reference; with CUDA both backends are timed in the
same run and the Triton step's speed-up is recorded (``extra_info['speedup_vs_torch']``).
Run: ``pytest benches/bench_training.py --benchmark-only``.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from negrec_fast.config import Config
from negrec_fast.objective import BatchTensors, Objective
from negrec_fast.models import build_model_for

VOCAB, B, SEQ_LEN, K = 100_002, 256, 21, 1000
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def make_step(device: str, backend: str):
    cfg = Config.from_dict({"loss": {"backend": backend}})
    torch.manual_seed(0)
    model = build_model_for(cfg, VOCAB).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, SEQ_LEN + 1, size=B)
    items = rng.integers(2, VOCAB, size=(B, SEQ_LEN))
    items[np.arange(SEQ_LEN)[None, :] < (SEQ_LEN - lengths)[:, None]] = 0  # left padding
    batch = BatchTensors(
        items=torch.from_numpy(items).to(device),
        skips=torch.from_numpy(rng.random((B, SEQ_LEN)) < 0.4).to(device) & (torch.from_numpy(items).to(device) != 0),
        negatives=torch.from_numpy(rng.choice(np.arange(2, VOCAB), K, replace=False)).to(device),
        neg_logq=torch.full((K,), -float(np.log(VOCAB - 2)), device=device),
    )
    counts = torch.ones(VOCAB, device=device)
    objective = Objective(cfg.loss, "sasrec", mask_prob=0.2, n_items=VOCAB - 2, item_log_freq=(counts / counts.sum()).log())

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            total, _, _ = objective(model, batch)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return step


@pytest.mark.parametrize("device", DEVICES)
def test_train_step_reference(benchmark, device):
    step = make_step(device, "torch")
    step()
    benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info["sequences_per_s"] = B / benchmark.stats.stats.median


@pytest.mark.gpu
def test_train_step_triton(benchmark):
    reference = make_step("cuda", "torch")
    times = []
    for _ in range(5):
        tic = time.perf_counter()
        reference()
        times.append(time.perf_counter() - tic)
    step = make_step("cuda", "triton")
    step()
    benchmark.pedantic(step, rounds=20, iterations=1, warmup_rounds=2)
    benchmark.extra_info["sequences_per_s"] = B / benchmark.stats.stats.median
    benchmark.extra_info["speedup_vs_torch"] = float(np.median(times)) / benchmark.stats.stats.median
