"""Training-step time against catalogue size (issue 13): dense Adam against sparse item rows.

One optimizer step as ``Trainer._train_step`` runs it (forward, the default loss: sampled
softmax with K=1000 shared negatives + skip penalty + skip-InfoNCE; backward; gradient clipping
at 1.0; optimizer step) of the default SASRec (d=128, 2 layers, max_len=20) on synthetic
batches (4, cycled, so consecutive steps read other rows), with a 10K-item and a 1M-item table.
Optimizers:

- ``adam``: ``train.optimizer = "adam"``, torch Adam on every parameter (dense table gradient).
- ``sparse_adam``: ``train.optimizer = "sparse_adam"``, sparse table gradient + the fused
  row-wise lazy Adam of ``negrec_fast.optim.RowAdam`` (index_select / index_copy / index_add
  over the rows the step read).
- ``torch_sparse_adam``: the same sparse gradient with ``torch.optim.SparseAdam`` for the table
  (the alternative the issue allows), to compare the two row-wise updates.

``test_ratio_interleaved`` times every (optimizer, catalogue) pair once per round, in turn, so a
load change on a shared machine moves them all; its ``extra_info`` holds the medians and the
ratio ``step(1M) / step(10K)`` per optimizer (issue 13 target: <= 1.5 for the sparse option).
``test_train_step`` times each pair on its own and records the table's gradient and optimizer
state sizes; ``test_table_update`` times the two row-wise updates alone.

Run: ``pytest benches/bench_sparse_embeddings.py --benchmark-only -s``. Environment:
``NEGREC_BENCH_SPARSE_BATCHES`` (batch sizes, default ``64,256``), ``NEGREC_BENCH_SPARSE_ROUNDS``
(default 9), ``NEGREC_BENCH_SPARSE_THREADS`` (intra-op threads, default 1; 0 = torch's count).
Memory: a 1M x 128 float32 table is 512 MB; dense Adam adds a 512 MB gradient every step and
1 GB of moments; ``sparse_adam`` keeps the 1 GB of moments (both stay ``[V, d]``) and a gradient
of the rows read only.
"""

from __future__ import annotations

import gc
import itertools
import os
import time

import numpy as np
import pytest
import torch
from negrec_fast.config import Config
from negrec_fast.models import build_model_for
from negrec_fast.objective import BatchTensors, Objective
from negrec_fast.optim import (
    RowAdam,
    SparseItemAdam,
    build_optimizer,
    use_sparse_item_rows,
)

BATCHES = [int(b) for b in os.environ.get("NEGREC_BENCH_SPARSE_BATCHES", "64,256").split(",")]
ROUNDS = int(os.environ.get("NEGREC_BENCH_SPARSE_ROUNDS", "9"))
# 1 by default: on a shared 2-core machine a busy neighbour stalls torch's second thread at
# every barrier and the figures swing by up to 10x
THREADS = int(os.environ.get("NEGREC_BENCH_SPARSE_THREADS", "1"))
SEQ_LEN, K = 21, 1000
N_BATCHES = 4  # steps cycle through these, so each step reads other rows than the last
CATALOGUES = {"10k": 10_002, "1m": 1_000_002}  # vocab sizes (2 reserved ids)
OPTIMIZERS = ("adam", "sparse_adam", "torch_sparse_adam")
MB = 2**20


@pytest.fixture(autouse=True)
def threads():
    before = torch.get_num_threads()
    if THREADS:
        torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


def random_batch(rng: np.random.Generator, vocab: int, batch_size: int) -> BatchTensors:
    """Left-padded sessions of 10 to 21 uniform plays (40% skipped) and K uniform negatives."""
    lengths = rng.integers(10, SEQ_LEN + 1, size=batch_size)
    items = rng.integers(2, vocab, size=(batch_size, SEQ_LEN))
    items[np.arange(SEQ_LEN)[None, :] < (SEQ_LEN - lengths)[:, None]] = 0  # left padding
    items_t = torch.from_numpy(items)
    return BatchTensors(
        items=items_t,
        skips=torch.from_numpy(rng.random((batch_size, SEQ_LEN)) < 0.4) & (items_t != 0),
        negatives=torch.from_numpy(rng.choice(np.arange(2, vocab), K, replace=False)),
        neg_logq=torch.full((K,), -float(np.log(vocab - 2))),
    )


class Step:
    """One training step of a fresh model with ``optimizer`` (module docstring) per call."""

    def __init__(self, vocab: int, optimizer: str, batch_size: int):
        cfg = Config.from_dict({"train": {"optimizer": "adam" if optimizer == "adam" else "sparse_adam"}})
        torch.manual_seed(0)
        self.model = build_model_for(cfg, vocab)
        self.table = self.model.item_embedding.weight
        if optimizer == "torch_sparse_adam":
            use_sparse_item_rows(self.model)
            dense = [p for p in self.model.parameters() if p is not self.table]
            self.opt = SparseItemAdam(torch.optim.Adam(dense, lr=cfg.train.lr),
                                      torch.optim.SparseAdam([self.table], lr=cfg.train.lr))
        else:
            self.opt = build_optimizer(cfg.train, self.model)
            assert optimizer == "adam" or isinstance(self.opt.rows, RowAdam)
        rng = np.random.default_rng(0)
        self.batches = [random_batch(rng, vocab, batch_size) for _ in range(N_BATCHES)]
        counts = torch.ones(vocab)
        self.objective = Objective(cfg.loss, "sasrec", mask_prob=0.2, n_items=vocab - 2,
                                   item_log_freq=(counts / counts.sum()).log())
        self.clip = cfg.train.grad_clip
        self.calls = itertools.count()

    def __call__(self) -> None:
        total, _, _ = self.objective(self.model, self.batches[next(self.calls) % N_BATCHES])
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()

    def table_memory_mb(self) -> dict[str, float]:
        """The table, its last gradient (a sparse one's values and indices) and its optimizer state, in MiB."""
        grad = self.table.grad
        if grad is None:
            grad_bytes = 0
        elif grad.is_sparse:
            grad_bytes = grad._values().nbytes + grad._indices().nbytes
        else:
            grad_bytes = grad.nbytes
        opt = self.opt.rows if isinstance(self.opt, SparseItemAdam) else self.opt
        state = opt.state[self.table]
        state_bytes = sum(v.nbytes for v in state.values() if isinstance(v, torch.Tensor))
        return {"table": self.table.nbytes / MB, "grad": grad_bytes / MB, "optimizer_state": state_bytes / MB}


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("catalogue", list(CATALOGUES))
@pytest.mark.parametrize("batch_size", BATCHES)
def test_train_step(benchmark, batch_size, catalogue, optimizer):
    step = Step(CATALOGUES[catalogue], optimizer, batch_size)
    step()  # the optimizer state is allocated on the first step
    benchmark.pedantic(step, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(
        batch_size=batch_size, threads=torch.get_num_threads(), n_items=CATALOGUES[catalogue] - 2,
        sequences_per_s=batch_size / benchmark.stats.stats.median, table_memory_mb=step.table_memory_mb(),
    )


@pytest.mark.parametrize("update", ["row_adam", "torch_sparse_adam"])
def test_table_update(benchmark, update):
    """The table's optimizer step alone: a 1M x 128 table, a coalesced sparse gradient over the
    distinct rows of one batch of 256 (its plays and the K negatives)."""
    vocab, d = CATALOGUES["1m"], 128
    table = torch.nn.Parameter(torch.randn(vocab, d) * d**-0.5)
    batch = random_batch(np.random.default_rng(0), vocab, 256)
    rows = torch.cat([batch.items.flatten(), batch.negatives]).unique()
    rows = rows[rows != 0]
    grad = torch.sparse_coo_tensor(rows[None], torch.randn(len(rows), d) * 1e-3, table.shape,
                                   check_invariants=True).coalesce()
    opt = RowAdam([table], lr=1e-3) if update == "row_adam" else torch.optim.SparseAdam([table], lr=1e-3)
    table.grad = grad
    opt.step()

    def step():
        table.grad = grad
        opt.step()

    benchmark.pedantic(step, rounds=5 * ROUNDS, iterations=1, warmup_rounds=2)
    benchmark.extra_info.update(rows=len(rows), threads=torch.get_num_threads())


@pytest.mark.parametrize("batch_size", BATCHES)
def test_ratio_interleaved(benchmark, batch_size):
    steps = {(opt, cat): Step(vocab, opt, batch_size) for opt in OPTIMIZERS for cat, vocab in CATALOGUES.items()}
    for step in steps.values():  # warm-up: optimizer state, first touch of the pages
        step()
        step()
    wall: dict[tuple[str, str], list[float]] = {key: [] for key in steps}
    cpu: dict[tuple[str, str], list[float]] = {key: [] for key in steps}
    for _ in range(ROUNDS):
        for key, step in steps.items():
            tic, cpu_tic = time.perf_counter(), time.process_time()
            step()
            wall[key].append(time.perf_counter() - tic)
            cpu[key].append(time.process_time() - cpu_tic)
    med = {key: float(np.median(t)) for key, t in wall.items()}
    med_cpu = {key: float(np.median(t)) for key, t in cpu.items()}
    info = {
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "rounds": ROUNDS,
        "median_ms": {f"{opt}/{cat}": round(1e3 * med[opt, cat], 1) for opt, cat in steps},
        "median_cpu_ms": {f"{opt}/{cat}": round(1e3 * med_cpu[opt, cat], 1) for opt, cat in steps},
        "ratio_1m_over_10k": {opt: round(med[opt, "1m"] / med[opt, "10k"], 3) for opt in OPTIMIZERS},
        "ratio_1m_over_10k_cpu_time": {opt: round(med_cpu[opt, "1m"] / med_cpu[opt, "10k"], 3) for opt in OPTIMIZERS},
        "sparse_adam_speedup_vs_adam_1m": round(med["adam", "1m"] / med["sparse_adam", "1m"], 2),
        "rounds_ms": {f"{opt}/{cat}": [round(1e3 * t, 1) for t in wall[opt, cat]] for opt, cat in steps},
    }
    benchmark.extra_info.update(info)
    print("\n" + "\n".join(f"{k}: {v}" for k, v in info.items() if k != "rounds_ms"))
    del steps
    gc.collect()
    # the benchmark's own figure: the sparse 1M step
    step = Step(CATALOGUES["1m"], "sparse_adam", batch_size)
    step()
    benchmark.pedantic(step, rounds=3, iterations=1, warmup_rounds=1)
