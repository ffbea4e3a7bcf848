"""``train.optimizer = "sparse_adam"`` (negrec_fast.optim): the row-wise lazy Adam against the
formula, sparse item-table gradients against the dense ones of the same step, a short run that
trains and resumes exactly, and the refused combinations."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from negrec_fast.config import Config
from negrec_fast.errors import ConfigError
from negrec_fast.losses._rows import gather_rows, mark_sparse_rows
from negrec_fast.models import build_model_for
from negrec_fast.objective import BatchTensors, Objective
from negrec_fast.optim import RowAdam, SparseItemAdam, build_optimizer
from negrec_fast.training import train
from run_folders import tiny

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- (1) the row-wise update


def lazy_adam_loop(table, steps, lr, betas, eps, weight_decay):
    """Lazy Adam written from its formula, one row and one coordinate at a time (float64):
    at global step t, each row with a gradient (duplicates summed) moves; other rows, and
    their moments, stay as they are."""
    b1, b2 = betas
    p = [[float(x) for x in row] for row in table]
    m = [[0.0] * len(row) for row in p]
    v = [[0.0] * len(row) for row in p]
    for t, (rows, values) in enumerate(steps, start=1):
        grad: dict[int, list[float]] = {}
        for r, g in zip(rows.tolist(), values.tolist()):
            grad[r] = [a + b for a, b in zip(grad.get(r, [0.0] * len(g)), g)]
        for r, g in grad.items():
            for j, gj in enumerate(g):
                gj += weight_decay * p[r][j]
                m[r][j] = b1 * m[r][j] + (1 - b1) * gj
                v[r][j] = b2 * v[r][j] + (1 - b2) * gj * gj
                m_hat = m[r][j] / (1 - b1**t)
                v_hat = v[r][j] / (1 - b2**t)
                p[r][j] -= lr * m_hat / (math.sqrt(v_hat) + eps)
    return torch.tensor(p, dtype=torch.float64)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_row_adam_matches_the_lazy_adam_formula(weight_decay):
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    # repeated rows within a step (summed), rows seen once and again later, rows 0 and 6 never
    step_rows = [torch.tensor([1, 3, 3, 5]), torch.tensor([2, 1]), torch.tensor([5, 4, 4, 4]), torch.tensor([3])]
    steps = [(rows, torch.randn(len(rows), 3, generator=gen, dtype=torch.float64)) for rows in step_rows]
    lr, betas, eps = 0.05, (0.8, 0.9), 1e-3  # large enough to tell the terms apart
    param = torch.nn.Parameter(table.clone())
    opt = RowAdam([param], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    for rows, values in steps:
        param.grad = torch.sparse_coo_tensor(rows[None], values, param.shape, check_invariants=True)  # uncoalesced
        opt.step()
    want = lazy_adam_loop(table, steps, lr, betas, eps, weight_decay)
    torch.testing.assert_close(param.detach(), want, rtol=1e-12, atol=1e-12)
    assert torch.equal(param.detach()[[0, 6]], table[[0, 6]])  # never read: never moved
    state = opt.state[param]
    assert state["step"].item() == len(steps) and not state["exp_avg"][[0, 6]].any()


def test_row_adam_is_adam_when_every_row_has_a_gradient():
    gen = torch.Generator().manual_seed(1)
    dense, rows = (torch.nn.Parameter(torch.randn(5, 4, generator=gen)) for _ in range(2))
    rows.data.copy_(dense.data)
    adam = torch.optim.Adam([dense], lr=0.01, weight_decay=0.01)
    row_adam = RowAdam([rows], lr=0.01, weight_decay=0.01)
    for _ in range(3):
        g = torch.randn(5, 4, generator=gen)
        dense.grad, rows.grad = g.clone(), g.to_sparse(sparse_dim=1)
        adam.step()
        row_adam.step()
    torch.testing.assert_close(rows.detach(), dense.detach(), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- (2) sparse gradient = dense gradient

V, B, L, K = 302, 12, 9, 30
GRAD_CASES = {  # config overrides: every model and the loss paths that read the item table
    "sasrec-default": {},
    "sasrec-bce-unlikelihood": {"loss": {"rec": "bce", "skip_penalty": "unlikelihood"}},
    "sasrec-unlikelihood-no-logq": {"loss": {"skip_penalty": "unlikelihood", "logq": False}},
    "sasrec-gbce-encoder-nce": {"loss": {"rec": "gbce", "nce_context": "encoder"}},
    "bert4rec": {"model": {"name": "bert4rec"}},
    "gru4rec-skip-inputs": {"model": {"name": "gru4rec", "skip_inputs": True}},
    "sine": {"model": {"name": "sine"}},
    "bpr-mf": {"model": {"name": "bpr"}},
}


def grad_batch(seed: int = 0) -> BatchTensors:
    rng = np.random.default_rng(seed)
    items = torch.from_numpy(rng.integers(2, 40, size=(B, L)))  # few items: repeats within and across rows
    items[:4, :3] = 0  # left padding
    skips = torch.from_numpy(rng.random((B, L)) < 0.3) & (items != 0)
    negatives = torch.from_numpy(rng.choice(np.arange(2, V), K, replace=False))
    negatives[:2] = items[-1, -2:]  # negatives that are also targets
    return BatchTensors(items, skips, negatives, torch.full((K,), -math.log(V - 2)))


@pytest.mark.parametrize("case", list(GRAD_CASES))
def test_sparse_item_gradient_equals_the_dense_one(case):
    over = GRAD_CASES[case]
    model_options = {"d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 16, **over.get("model", {})}
    cfg = Config.from_dict({**over, "model": model_options, "train": {"optimizer": "sparse_adam"}})
    torch.manual_seed(0)
    dense = build_model_for(cfg, V)
    sparse = copy.deepcopy(dense)
    build_optimizer(cfg.train, sparse)  # switches the table to sparse gradients
    batch = grad_batch()
    objective = Objective(cfg.loss, cfg.model.name, mask_prob=0.3, n_items=V - 2,
                          item_log_freq=torch.linspace(-8, -2, V))
    norms = []
    for model in (dense, sparse):
        torch.manual_seed(1)  # the same dropout
        total, _, _ = objective(model, batch, torch.Generator().manual_seed(2))
        total.backward()
        if model is sparse:  # coalesced by the hook, before clipping reads it
            assert model.item_embedding.weight.grad.is_sparse and model.item_embedding.weight.grad.is_coalesced()
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1e9))
    grad = sparse.item_embedding.weight.grad
    read = torch.cat([torch.tensor([0, 1]), batch.items.flatten(), batch.negatives]).unique()  # 1: BERT4Rec's [MASK]
    assert set(grad.coalesce().indices()[0].tolist()) <= set(read.tolist())  # the batch's rows only
    torch.testing.assert_close(grad.to_dense(), dense.item_embedding.weight.grad, rtol=1e-5, atol=1e-7)
    for (name, p), q in zip(dense.named_parameters(), sparse.parameters()):
        if name != "item_embedding.weight" and p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)
    torch.testing.assert_close(norms[1], norms[0], rtol=1e-5, atol=0)  # clipping sees the same norm


def test_gather_rows_is_indexing_and_the_mark_is_per_tensor():
    table = torch.randn(10, 3, requires_grad=True)
    ids = torch.tensor([[1, 4], [4, 9]])
    assert torch.equal(gather_rows(table, ids), table[ids])
    gather_rows(table, ids).sum().backward()
    assert not table.grad.is_sparse
    table.grad = None
    mark_sparse_rows(table)
    gather_rows(table, ids).sum().backward()
    assert table.grad.is_sparse and torch.equal(table.grad.to_dense()[4], torch.full((3,), 2.0))
    with torch.no_grad():
        assert torch.equal(gather_rows(table, ids), table[ids])


# ---------------------------------------------------------------- (3) a short run: trains, resumes exactly

SPARSE = ("train.optimizer=sparse_adam", "train.threads=1", "train.epochs=3")


def comparable(history):
    return [{k: v for k, v in h.items() if k not in ("seconds", "sequences_per_s")} for h in history]


def test_sparse_adam_trains_and_resumes_exactly(dataset_dir, tmp_path):
    full = train(overrides=tiny(dataset_dir, tmp_path / "full", *SPARSE))
    assert full.completed
    losses = [h["train_loss"] for h in full.history]
    assert losses == sorted(losses, reverse=True)
    assert full.best_valid["HR@10"] > 1.5 * 10 / 400  # a random ranking of 400 items: 0.025 (dense Adam: 0.054)
    last = torch.load(full.run_dir / "last.pt", weights_only=True)
    assert set(last["optimizer"]) == {"dense", "rows"}  # Adam's state, then the table's
    assert last["optimizer"]["rows"]["state"][0]["exp_avg"].shape == last["model"]["item_embedding.weight"].shape
    part = train(overrides=tiny(dataset_dir, tmp_path / "part", *SPARSE, "train.max_steps=7"))
    assert not part.completed
    resumed = train(resume=part.run_dir)
    while not resumed.completed:
        resumed = train(resume=part.run_dir)
    assert comparable(resumed.history) == comparable(full.history)
    assert resumed.test == full.test


def test_optimizer_state_round_trip():
    cfg = Config.from_dict({"model": {"d_model": 8, "n_heads": 2, "n_layers": 1, "d_ff": 8},
                            "train": {"optimizer": "sparse_adam"}})
    model = build_model_for(cfg, 50)
    opt = build_optimizer(cfg.train, model)
    assert isinstance(opt, SparseItemAdam) and len(opt.param_groups) == 2
    batch = BatchTensors(torch.randint(2, 50, (3, 6)), torch.zeros(3, 6, dtype=torch.bool), torch.arange(2, 12),
                         torch.zeros(10))
    objective = Objective(cfg.loss, "sasrec", mask_prob=0.2, n_items=48, item_log_freq=torch.zeros(50))
    objective(model, batch)[0].backward()
    opt.step()
    again = build_optimizer(cfg.train, copy.deepcopy(model))
    again.load_state_dict(opt.state_dict())
    assert str(again.state_dict()) == str(opt.state_dict())
    with pytest.raises(ConfigError, match="not train.optimizer='sparse_adam''s"):
        again.load_state_dict(torch.optim.Adam(model.parameters()).state_dict())


# ---------------------------------------------------------------- (4) refused combinations


@pytest.mark.parametrize("overrides, loss", [
    ({"loss": {"rec": "full_softmax"}}, "full_softmax"),
    ({"model": {"name": "wrmf"}}, "wrmf"),
])
def test_losses_over_the_whole_table_are_refused(overrides, loss):
    with pytest.raises(ConfigError, match=rf"train.optimizer='sparse_adam' .*loss.rec='{loss}' scores every item"):
        Config.from_dict({**overrides, "train": {"optimizer": "sparse_adam"}})
    Config.from_dict(overrides)  # fine with dense Adam


def test_unknown_optimizer_and_torchrun_are_refused():
    with pytest.raises(ConfigError, match="train.optimizer must be one of 'adam', 'sparse_adam', got 'sgd'"):
        Config.from_dict({"train": {"optimizer": "sgd"}})
    cfg = Config.from_dict({"model": {"d_model": 8, "n_heads": 2, "n_layers": 1, "d_ff": 8},
                            "train": {"optimizer": "sparse_adam"}})
    with pytest.raises(ConfigError, match="does not run under torchrun"):
        build_optimizer(cfg.train, build_model_for(cfg, 50), world_size=2)


def test_the_optimizer_cannot_change_on_resume(dataset_dir, tmp_path):
    part = train(overrides=tiny(dataset_dir, tmp_path / "part", "train.max_steps=1"))
    with pytest.raises(ConfigError, match="'train.optimizer' cannot change when resuming"):
        train(resume=part.run_dir, overrides=["train.optimizer=sparse_adam"])
