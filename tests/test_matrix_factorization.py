"""BPR-MF and WRMF in the session setting, against loops written from the formulas: the WRMF
fold-in (one linear solve per prefix), the WRMF objective (an explicit sum over every item) and
the BPR loss, values and gradients; causal queries, the config, training runs that beat a
popularity ranking (with the skip-InfoNCE term on), and the toolkit around a trained run."""

from __future__ import annotations

import importlib.util

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from run_folders import random_run, tiny

from negrec_fast.batch_recommend import recommend_file
from negrec_fast.config import LossConfig, load_config
from negrec_fast.data import load_dataset
from negrec_fast.errors import ConfigError
from negrec_fast.evaluation import evaluate
from negrec_fast.export import export
from negrec_fast.kernels.dispatch import rec_loss
from negrec_fast.losses import wrmf_loss
from negrec_fast.models import build_model
from negrec_fast.models.matrix_factorization import first_kept
from negrec_fast.recommend import Recommender
from negrec_fast.training import train

V, D = 14, 3


pytestmark = pytest.mark.usefixtures("one_thread")

def session_batch():
    """Left-padded rows with a repeated kept item, a kept-then-skipped item, a row whose plays
    are all skipped and an all-padding row."""
    items = torch.tensor([[0, 0, 5, 6, 5, 7, 9], [2, 3, 4, 3, 8, 4, 10], [0, 0, 0, 11, 12, 13, 2], [0] * 7])
    skips = torch.tensor([[0, 0, 0, 1, 0, 0, 1], [0, 1, 0, 0, 1, 0, 0], [0, 0, 0, 1, 1, 1, 1], [0] * 7]).bool()
    return items, skips


def kept_sets(items, skips):
    """``[b][t]`` the distinct kept items of plays ``0..t`` of row ``b`` (Python sets)."""
    out = []
    for row, flags in zip(items.tolist(), skips.tolist()):
        seen, sets = set(), []
        for item, skipped in zip(row, flags):
            if item != 0 and not skipped:
                seen = seen | {item}
            sets.append(seen)
        out.append(sets)
    return out


def wrmf_model(alpha=10.0, l2=0.5, seed=0):
    torch.manual_seed(seed)
    return build_model("wrmf", V, max_len=7, d_model=D, alpha=alpha, l2=l2).double()


def loop_fold_in(weight, items, skips, alpha, l2):
    """The ALS user step of every prefix, solved one prefix at a time:
    u = (sum_i y_i y_i^T + alpha sum_{i in S} y_i y_i^T + l2 I)^-1 (1 + alpha) sum_{i in S} y_i."""
    users = []
    for sets in kept_sets(items, skips):
        row = []
        for observed in sets:
            a = l2 * torch.eye(D, dtype=weight.dtype)
            rhs = torch.zeros(D, dtype=weight.dtype)
            for i in range(2, V):
                a = a + (1 + alpha * (i in observed)) * torch.outer(weight[i], weight[i])
                if i in observed:
                    rhs = rhs + (1 + alpha) * weight[i]
            row.append(torch.linalg.solve(a, rhs))
        users.append(torch.stack(row))
    return torch.stack(users)


def loop_wrmf_objective(users, weight, items, skips, active, alpha, l2):
    """(sum over active users of sum_i c_i (p_i - u.y_i)^2 + l2 |u|^2, + l2 sum_i |y_i|^2) / n_active,
    the sums over every real item i >= 2."""
    total, n = weight.new_zeros(()), 0
    for b, sets in enumerate(kept_sets(items, skips)):
        for t, observed in enumerate(sets):
            if not active[b, t]:
                continue
            n += 1
            u = users[b, t]
            for i in range(2, V):
                s = (u * weight[i]).sum()
                total = total + ((1 + alpha) * (1 - s) ** 2 if i in observed else s**2)
            total = total + l2 * (u * u).sum()
    for i in range(2, V):
        total = total + l2 * (weight[i] * weight[i]).sum()
    return total / n


@pytest.mark.parametrize("alpha", [0.0, 10.0])
def test_wrmf_fold_in_is_the_solve_of_each_prefix(alpha):
    """Values and gradients (the encoder-context InfoNCE reads the queries) against one solve per prefix."""
    model = wrmf_model(alpha=alpha)
    items, skips = session_batch()
    probe = torch.randn(*items.shape, D, dtype=torch.float64)
    got = model.encode(items, skips)
    want = loop_fold_in(model.item_weight, items, skips, alpha, 0.5)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    (g_got,) = torch.autograd.grad((got * probe).sum(), model.item_weight)
    (g_want,) = torch.autograd.grad((want * probe).sum(), model.item_weight)
    torch.testing.assert_close(g_got, g_want, rtol=1e-8, atol=1e-10)
    assert got[2, :4].abs().max() == 0 and got[3].abs().max() == 0  # no kept play yet: 0


def test_wrmf_objective_is_the_sum_over_every_item():
    """The Gram-trick objective against the explicit sum, values and gradients (users and table)."""
    model = wrmf_model()
    items, skips = session_batch()
    users = torch.randn(*items.shape, D, dtype=torch.float64, requires_grad=True)
    weight = model.item_weight
    active = (items != 0) & ~skips
    active[0, 2] = False
    got = wrmf_loss(users, weight, items, first_kept(items, skips, 0), active, alpha=10.0, l2=0.5)
    want = loop_wrmf_objective(users, weight, items, skips, active, 10.0, 0.5)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=0)
    for g_got, g_want in zip(torch.autograd.grad(got, (users, weight)), torch.autograd.grad(want, (users, weight))):
        torch.testing.assert_close(g_got, g_want, rtol=1e-9, atol=1e-12)


def test_wrmf_trains_on_the_exact_objective_with_the_users_at_their_optimum():
    """The fold-in zeroes the gradient of each user's term, so the table's gradient with the users
    held fixed (as WRMF.objective computes it) is that of the objective through the fold-in."""
    model = wrmf_model()
    items, skips = session_batch()
    active = (items != 0) & ~skips & torch.nn.functional.pad(items[:, :-1] != 0, (1, 0))
    users = model.session_vectors(items, skips).detach().requires_grad_()
    def objective(u):
        return loop_wrmf_objective(u, model.item_weight, items, skips, active, 10.0, 0.5)

    (g_users,) = torch.autograd.grad(objective(users), users)
    assert g_users.abs().max() < 1e-10
    through = objective(model.session_vectors(items, skips))
    objective = model.objective(items, skips)
    torch.testing.assert_close(objective, through, rtol=1e-10, atol=0)
    (g_through,) = torch.autograd.grad(through, model.item_weight)
    (g_fixed,) = torch.autograd.grad(objective, model.item_weight)
    torch.testing.assert_close(g_fixed, g_through, rtol=1e-8, atol=1e-10)


def test_wrmf_solves_in_float32_under_bf16_autocast():
    """Training on GPU runs under bf16 autocast; the fold-in and the objective opt out of it."""
    torch.manual_seed(0)
    model = build_model("wrmf", V, max_len=7, d_model=D)
    items, skips = session_batch()
    queries, objective = model.encode(items, skips), model.objective(items, skips)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(model.encode(items, skips), queries, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(model.objective(items, skips), objective, rtol=1e-6, atol=0)


def loop_bpr(query, weight, targets, negatives, row_negatives, w, temperature):
    """Row n: sum_j w_j -log sigmoid((q.y_t - q.y_j) / T) / sum_j w_j over the shared negatives
    (w = 1) and the row's own (w); ids 0 or equal to the target left out; mean over rows with a target."""
    total, rows = query.new_zeros(()), 0
    for n, t in enumerate(targets.tolist()):
        if t == 0:
            continue
        rows += 1
        positive = (query[n] * weight[t]).sum() / temperature
        pairs = [(c, 1.0) for c in negatives.tolist()]
        pairs += [(c, w) for c in row_negatives[n].tolist()] if row_negatives is not None else []
        loss, weights = query.new_zeros(()), 0.0
        for c, weight_c in pairs:
            if c in (0, t):
                continue
            s = (query[n] * weight[c]).sum() / temperature
            loss = loss - weight_c * torch.log(1 / (1 + torch.exp(-(positive - s))))
            weights += weight_c
        total = total + (loss / weights if weights else 0.0)
    return total / rows


@pytest.mark.parametrize("penalty,w,temperature",
                         [("none", 1.0, 1.0), ("negatives", 2.5, 0.5), ("unlikelihood", 1.0, 1.0)])
def test_bpr_loss_matches_the_loop(penalty, w, temperature):
    torch.manual_seed(0)
    query = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(12, 4, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([2, 3, 0, 5, 9])
    negatives = torch.tensor([3, 7, 9])  # 3 and 9 are targets of some rows: left out there
    row_negatives = torch.tensor([[4, 2, 0], [10, 11, 3], [4, 0, 0], [0, 0, 0], [6, 9, 8]])
    cfg = LossConfig(rec="bpr", skip_penalty=penalty, skip_weight=w, temperature=temperature)
    got = rec_loss(cfg, query, weight, targets, negatives, torch.zeros(3), n_items=10, row_negatives=row_negatives)
    want = loop_bpr(query, weight, targets, negatives, None if penalty == "none" else row_negatives, w, temperature)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)  # float32 scores
    for g_got, g_want in zip(torch.autograd.grad(got, (query, weight)), torch.autograd.grad(want, (query, weight))):
        torch.testing.assert_close(g_got, g_want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["bpr", "wrmf"])
def test_queries_are_causal_and_read_only_kept_plays(name):
    torch.manual_seed(0)
    model = build_model(name, V, max_len=7, d_model=D)
    items, skips = session_batch()
    queries = model.encode(items, skips)
    for t in range(items.shape[1] - 1):
        changed_items, changed_skips = items.clone(), skips.clone()
        changed_items[:2, t + 1:] = 13
        changed_skips[:3, t + 1:] = ~changed_skips[:3, t + 1:]
        later = model.encode(changed_items, changed_skips)
        assert torch.equal(later[:, : t + 1], queries[:, : t + 1])
    # a skipped play changes nothing, whatever its item
    swapped = items.clone()
    swapped[skips] = 12
    torch.testing.assert_close(model.encode(swapped, skips), queries)
    assert queries[2].abs().max() == 0 and queries[3].abs().max() == 0  # no kept play
    assert model.next_query(items, skips).shape == (4, D) and model.project(queries) is queries
    if name == "bpr":  # the mean item embedding of the kept plays so far, repeats included
        for b, (row, flags) in enumerate(zip(items.tolist(), skips.tolist())):
            kept = []
            for t, (item, skipped) in enumerate(zip(row, flags)):
                kept += [item] if item and not skipped else []
                if kept:
                    torch.testing.assert_close(queries[b, t], model.item_weight[kept].mean(dim=0))


def test_matrix_factorization_config():
    """The model picks its own loss unless one is given; bad combinations fail naming the keys."""
    assert load_config(None, ["model.name=bpr"]).loss.rec == "bpr"
    assert load_config(None, ["model.name=bpr", "loss.rec=sampled_softmax"]).loss.rec == "sampled_softmax"
    cfg = load_config(None, ["model.name=wrmf", "model.wrmf_alpha=3", "model.wrmf_l2=0.2"])
    assert cfg.loss.rec == "wrmf" and load_config(None, ["loss.rec=bpr"]).model.name == "sasrec"
    model = build_model("wrmf", 10, max_len=4, d_model=4, alpha=cfg.model.wrmf_alpha, l2=cfg.model.wrmf_l2)
    assert (model.alpha, model.l2) == (3.0, 0.2) and not hasattr(model, "head")
    for overrides, message in [
        (["model.name=wrmf", "loss.rec=bpr"], "model.name = 'wrmf' trains only with loss.rec = 'wrmf'"),
        (["loss.rec=wrmf"], "loss.rec = 'wrmf' needs model.name = 'wrmf'; got 'sasrec' with 'wrmf'"),
        (["model.name=bpr", "model.skip_inputs=true"], "model.skip_inputs does not apply to model.name = 'bpr'"),
        (["model.name=wrmf", "model.wrmf_l2=0"], "model.wrmf_l2 must be > 0, got 0.0"),
        (["model.wrmf_alpha=-1"], "model.wrmf_alpha must be >= 0, got -1.0"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            load_config(None, overrides)
    with pytest.raises(ValueError, match="l2 must be > 0"):
        build_model("wrmf", 10, l2=0.0)
    with pytest.raises(ValueError, match="bad option for model 'bpr'"):
        build_model("bpr", 10, skip_inputs=True)


def popularity_hr10(dataset_dir: Path) -> float:
    """Validation HR@10 of the 10 most played training items for everyone."""
    ds = load_dataset(dataset_dir)
    lengths = np.diff(ds.offsets)
    position = np.arange(len(ds.items)) - np.repeat(ds.offsets[:-1], lengths)
    counts = np.bincount(ds.items[position < np.repeat(ds.train_end, lengths)], minlength=ds.vocab_size)
    counts[:2] = -1
    top = np.argsort(-counts, kind="stable")[:10]
    with_target = np.nonzero(ds.valid_target >= 1)[0]
    targets = ds.items[ds.offsets[with_target] + ds.valid_target[with_target]]
    return float(np.isin(targets, top).mean())


@pytest.mark.parametrize("name,context", [("bpr", "embedding"), ("wrmf", "embedding"), ("wrmf", "encoder")])
def test_training_beats_popularity_with_the_skip_infonce_term(dataset_dir, tmp_path, name, context):
    run = tmp_path / name
    result = train(overrides=tiny(dataset_dir, run, f"model.name={name}", "train.lr=0.01", "loss.nce_weight=0.1",
                                  f"loss.nce_context={context}"))
    assert load_config(run / "config.toml").loss.rec == name
    assert all(h["nce_loss"] > 0 and math.isfinite(h["train_loss"]) for h in result.history)
    assert result.history[1]["rec_loss"] < result.history[0]["rec_loss"]
    popularity = popularity_hr10(dataset_dir)
    assert result.history[-1]["valid"]["HR@10"] > 2 * popularity, popularity


@pytest.fixture(scope="module")
def wrmf_run(dataset_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("wrmf") / "run"
    train(overrides=tiny(dataset_dir, run, "model.name=wrmf", "train.epochs=1", "train.lr=0.01"))
    return run


def test_evaluate_recommend_and_batch_recommend(wrmf_run, dataset_dir, tmp_path):
    result = json.loads((wrmf_run / "test_metrics.json").read_text())["test"]
    assert evaluate(wrmf_run, "test") == result
    ds = load_dataset(dataset_dir)
    rec = Recommender.load(wrmf_run)
    # sessions in which no track is both kept and skipped: recommend's `skipped` flags every play
    # of a listed track, the sessions file flags each play
    chosen = []
    for s in range(60):
        items, skips = ds.session(s)
        if not set(items[skips == 1]) & set(items[skips == 0]):
            chosen.append(s)
    assert len(chosen) >= 10
    lines = ["session_id,item_id,skipped"]
    for s in chosen:
        items, skips = ds.session(s)
        lines += [f"s{s},{track},{str(bool(flag)).lower()}" for track, flag in zip(ds.decode(items), skips)]
    (tmp_path / "sessions.csv").write_text("\n".join(lines) + "\n")
    out = recommend_file(rec, tmp_path / "sessions.csv", tmp_path / "recs.parquet", k=5, progress=False,
                         skip_column="skipped")
    rows = {r["session"]: r for r in pq.read_table(out.output).to_pylist()}
    for s in chosen:
        items, skips = ds.session(s)
        plays, skipped = ds.decode(items), ds.decode(items[skips == 1])
        single = rec.recommend(plays, skipped=skipped, k=5)
        assert rows[f"s{s}"]["items"] == single.items and not set(single.items) & set(skipped)
        np.testing.assert_allclose(rows[f"s{s}"]["scores"], single.scores, atol=1e-5)


@pytest.mark.parametrize("name,formats",
                         [("bpr", ("export", "torchscript", "onnx")), ("wrmf", ("export", "torchscript"))])
def test_exported_queries_read_the_skip_flags_and_match_eager(dataset_dir, tmp_path, name, formats):
    run = random_run(dataset_dir, tmp_path / name, model=name, max_len=8)
    rec = Recommender.load(run)
    torch.manual_seed(1)
    x = torch.randint(2, rec.dataset.vocab_size, (5, 8))
    x[1, :3], x[2, :7], x[3] = 0, 0, 0
    flags = (torch.rand(x.shape) < 0.4) & (x != 0)
    with torch.no_grad():
        eager = rec.model.next_query(x, flags)
        assert (eager - rec.model.next_query(x)).abs().max() > 1e-3  # the flags matter
    for format in formats:
        if format == "onnx" and any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxscript", "onnxruntime")):
            continue  # the optional [export] extra is not installed here
        out = export(run, tmp_path / f"out-{format}", format=format)
        assert json.loads((out / "export.json").read_text())["skips_input"]["name"] == "skips"
        if format == "export":
            got = torch.export.load(out / "query.pt2").module()(x, flags)
        elif format == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated in recent torch
                got = torch.jit.load(str(out / "query.ts"))(x, flags)
        else:
            import onnxruntime as ort

            session = ort.InferenceSession(str(out / "query.onnx"), providers=["CPUExecutionProvider"])
            got = torch.from_numpy(session.run(["query"], {"items": x.numpy(), "skips": flags.numpy()})[0])
        assert (got - eager).abs().max().item() <= 1e-5, format
    if name == "wrmf":
        with pytest.raises(ConfigError, match="model 'wrmf' cannot be exported to ONNX"):
            export(run, tmp_path / "out-onnx", format="onnx")
