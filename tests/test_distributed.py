"""Training in 2 processes (Gloo on CPU) against one process with the same global batch: the
sharded step's loss and gradients, and a torchrun run, interrupted and resumed, end to end."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from negrec_fast.checkpoint import load_checkpoint
from negrec_fast.config import TrainConfig, load_config
from negrec_fast.data import load_dataset
from negrec_fast.distributed import join, wrap
from negrec_fast.errors import ConfigError
from negrec_fast.evaluation import evaluate
from negrec_fast.models import build_model_for
from negrec_fast.objective import BatchTensors, Objective
from negrec_fast.sampling import BatchLoader
from negrec_fast.training import target_log_frequency, train
from run_folders import tiny

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with Gloo is not available"
)

WORLD = 2
TINY_MODEL = ["model.d_model=16", "model.n_heads=2", "model.n_layers=1", "model.d_ff=16", "model.dropout=0",
              "data.max_len=8", "loss.n_negatives=30"]
# The models and the main loss paths of the objective; rows = the global batch's size (16 = a
# full batch; 3 and 1 = last batches of an epoch, 1 leaving rank 1 without a row).
CASES = {
    "sasrec": (16, []),
    "sasrec-encoder-nce-unlikelihood": (16, ["loss.nce_context=encoder", "loss.skip_penalty=unlikelihood"]),
    "bert4rec-encoder-nce": (16, ["model.name=bert4rec", "loss.nce_context=encoder"]),
    "gru4rec-full-softmax-skip-inputs": (3, ["model.name=gru4rec", "loss.rec=full_softmax", "model.skip_inputs=true"]),
    "gru4rec-one-row": (1, ["model.name=gru4rec"]),
    "sasrec-gbce-popularity-include": (16, ["loss.rec=gbce", "loss.sampling=popularity", "loss.skipped_targets=include"]),
    "sine": (16, ["model.name=sine"]),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_step(rank: int, port: int, dataset_dir: str, out: str) -> None:
    """Process ``rank`` of 2: for every case, the loss and gradients of one sharded DDP step, and
    (rank 0) of the same global batch in one process; saved to ``out/rank{rank}.pt``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    world, device = join(load_config(overrides=["train.device=cpu"]).train)
    dataset = load_dataset(dataset_dir)
    results = {}
    for name, (rows, extra) in CASES.items():
        cfg = load_config(overrides=[*TINY_MODEL, *extra])
        loader = BatchLoader(dataset, batch_size=16, seq_len=cfg.data.max_len + 1, n_negatives=cfg.loss.n_negatives,
                             distribution=cfg.loss.sampling, alpha=cfg.loss.alpha, seed=1)
        batch = next(iter(loader.epoch(0)))
        tensors = BatchTensors(batch.items[:rows], batch.skips[:rows], batch.negatives, batch.neg_logq)
        torch.manual_seed(0)
        model = build_model_for(cfg, dataset.vocab_size)
        objective = Objective(cfg.loss, cfg.model.name, mask_prob=0.5, n_items=dataset.n_items,
                              item_log_freq=target_log_frequency(dataset, cfg.loss.skipped_targets))
        result = {}
        if world.is_main:
            single = copy.deepcopy(model)
            losses = objective(single, tensors, torch.Generator().manual_seed(5))
            losses[0].backward()
            result["single"] = ([x.item() for x in losses], {k: p.grad for k, p in single.named_parameters()})
        ddp = wrap(model, objective, torch.Generator().manual_seed(5), world, device)
        losses = ddp(tensors.items, tensors.skips, tensors.negatives, tensors.neg_logq)
        (losses[0] * world.size).backward()
        result["ddp"] = ([x.item() for x in losses], {k: p.grad for k, p in model.named_parameters()})
        results[name] = result
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    world.close()


def test_a_sharded_step_has_the_loss_and_gradient_of_one_process(dataset_dir, tmp_path):
    mp.spawn(one_step, args=(free_port(), str(dataset_dir), str(tmp_path)), nprocs=WORLD)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for name in CASES:
        single_losses, single_grads = ranks[0][name]["single"]
        for rank in ranks:
            losses, grads = rank[name]["ddp"]
            assert losses == pytest.approx(single_losses, rel=1e-6), name
            assert grads.keys() == single_grads.keys()
            for key, grad in grads.items():
                # float32 sums in another order; parameters with a zero gradient in exact
                # arithmetic (attention key biases) differ by rounding noise only
                torch.testing.assert_close(grad, single_grads[key], rtol=1e-5, atol=1e-7, msg=f"{name}: {key}")


def test_torchrun_settings_that_cannot_work_fail_before_joining(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="RANK is not: launch distributed training with torchrun"):
        join(TrainConfig())
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ConfigError, match="RANK=2, LOCAL_RANK=0 do not fit WORLD_SIZE=2"):
        join(TrainConfig())
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ConfigError, match="train.dist_backend='nccl' needs CUDA devices"):
        join(TrainConfig(device="cpu", dist_backend="nccl"))
    assert not dist.is_initialized()


def torchrun(*args: str) -> str:
    """Standard output of ``negrec-fast train ARGS`` in 2 processes."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={WORLD}",
           "-m", "negrec_fast", "train", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_torchrun_trains_as_one_process_does_and_resumes(dataset_dir, tmp_path):
    """A torchrun run stopped after 5 steps and resumed ends where one uninterrupted process does:
    same losses, same parameters (float rounding apart), a run folder written once."""
    options = ["train.threads=1", "train.epochs=1", "model.dropout=0", "model.name=gru4rec"]
    single = train(overrides=tiny(dataset_dir, tmp_path / "single", *options))
    run = tmp_path / "ddp"
    torchrun(*tiny(dataset_dir, run, *options, "train.max_steps=5"))
    assert load_checkpoint(run / "last.pt")["progress"]["step"] == 5
    assert torchrun("--resume", str(run), "train.max_steps=0").count(f"run folder: {run}") == 1  # rank 0 reports

    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1]
    (record,) = lines
    for key in ("train_loss", "rec_loss", "nce_loss"):
        assert record[key] == pytest.approx(single.history[0][key], rel=1e-6)
    ddp_model = load_checkpoint(run / "last.pt")["model"]
    for key, value in load_checkpoint(single.run_dir / "last.pt")["model"].items():
        torch.testing.assert_close(ddp_model[key], value, rtol=1e-5, atol=1e-6, msg=key)
    # the checkpoints hold the plain model: one process evaluates the run as its rank 0 did
    assert evaluate(run, "test") == json.loads((run / "test_metrics.json").read_text())["test"]
