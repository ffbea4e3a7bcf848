"""PNFRec (Ivanova, Frolov & Vasilev, RecSys 2025): the two encoders against SASRec over the
split-out kept / skipped plays, no leakage from later plays, the fusions, the negative-CE
targets and the contrastive term against loops written from the formulas, the assembled
objective against a loop, the config, and a tiny run that learns, evaluates and recommends."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch
import torch.nn.functional as F
from negrec_fast.config import Config, LossConfig, load_config
from negrec_fast.data import load_dataset
from negrec_fast.errors import ConfigError
from negrec_fast.evaluation import evaluate, evaluate_model
from negrec_fast.export import export
from negrec_fast.losses.pnfrec import next_skipped, pnfrec_contrastive
from negrec_fast.models import PNFRec, SASRec, build_model, build_model_for
from negrec_fast.objective import BatchTensors, Objective
from negrec_fast.optim import build_optimizer
from negrec_fast.recommend import Recommender
from negrec_fast.training import train
from run_folders import tiny
from test_training import popularity_hr10

V, MAX_LEN, D = 30, 8, 16

pytestmark = pytest.mark.usefixtures("one_thread")


def make(fusion: str = "none", seed: int = 0, randomise_gate: bool = True) -> PNFRec:
    torch.manual_seed(seed)
    model = build_model("pnfrec", V, max_len=MAX_LEN, d_model=D, n_heads=2, d_ff=32, n_layers=2, fusion=fusion)
    if fusion == "gate" and randomise_gate:  # it starts at zero: make the negative half count
        torch.nn.init.normal_(model.negative_proj.weight, std=0.3)
    return model.eval()


# rows of (item, skipped): skips before the first kept play, between kept plays, after the last
# one, a skipped repeat of a later target (5), a row without skips, one without kept plays, one
# with a single kept play
ROWS = [
    [(0, 0), (9, 1), (2, 0), (7, 1), (8, 1), (3, 0), (5, 1), (5, 0), (6, 1)],
    [(4, 0), (6, 0), (7, 0), (7, 0), (2, 0), (3, 0), (9, 0), (4, 0), (11, 0)],
    [(0, 0), (0, 0), (0, 0), (0, 0), (12, 1), (13, 1), (14, 1), (15, 1), (16, 1)],
    [(0, 0), (0, 0), (0, 0), (0, 0), (0, 0), (0, 0), (16, 1), (17, 0), (18, 1)],
]


def batch_rows(rows) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([[i for i, _ in r] for r in rows]), torch.tensor([[s for _, s in r] for r in rows]).bool()


def random_batch(seed: int, b: int = 6, length: int = MAX_LEN + 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    items = torch.randint(2, V, (b, length), generator=gen)
    for row, pad in enumerate(torch.randint(0, length - 2, (b,), generator=gen).tolist()):
        items[row, :pad] = 0
    skips = (torch.rand(b, length, generator=gen) < 0.4) & (items != 0)
    return items, skips


# ---- the model ------------------------------------------------------------------------------


def test_shapes_and_interface():
    model = make("gate")
    items, skips = batch_rows(ROWS)
    inputs, input_skips = items[:, :-1], skips[:, :-1]
    hidden = model.encode(inputs, input_skips)
    assert hidden.shape == (4, MAX_LEN, 2 * D)
    assert model.project(hidden).shape == (4, MAX_LEN, D) and model(inputs, input_skips).shape == (4, MAX_LEN, D)
    query = model.next_query(inputs, input_skips)
    assert query.shape == (4, D) and torch.isfinite(query).all()
    scores = model.score_all(query)
    assert scores.shape == (4, V) and torch.isinf(scores[:, :2]).all() and torch.isfinite(scores[:, 2:]).all()
    # an all-padding row and a row of skipped plays only give finite queries
    empty = torch.zeros(2, MAX_LEN, dtype=torch.long)
    empty[1, -3:] = torch.tensor([4, 5, 6])
    assert torch.isfinite(model.next_query(empty, empty != 0)).all()
    cfg = Config.from_dict({"model": {"name": "pnfrec", "d_model": 16, "n_heads": 2, "pnfrec_fusion": "gate"}})
    built = build_model_for(cfg, V)
    assert isinstance(built, PNFRec) and built.fusion == "gate" and built.positive is not built.negative
    with pytest.raises(ValueError, match="skip_inputs does not apply"):
        build_model("pnfrec", V, skip_inputs=True)
    with pytest.raises(ValueError, match="fusion must be one of 'none', 'gate'"):
        build_model("pnfrec", V, fusion="sum")


def split_out(items: torch.Tensor, plays: torch.Tensor) -> torch.Tensor:
    """Each row's ``plays`` alone, in order, left-padded to the row's length (a loop)."""
    out = torch.zeros_like(items)
    for b in range(items.shape[0]):
        kept = [int(i) for i, p in zip(items[b], plays[b]) if p and i != 0]
        if kept:
            out[b, -len(kept):] = torch.tensor(kept)
    return out


def as_sasrec(model: PNFRec, encoder: str) -> SASRec:
    """A SASRec with ``model``'s item table and the weights of its ``encoder`` ("positive" / "negative")."""
    sasrec = SASRec(V, max_len=MAX_LEN, d_model=D, n_heads=2, n_layers=2, d_ff=32).eval()
    state = {k.removeprefix(encoder + "."): v for k, v in model.state_dict().items() if k.startswith(encoder + ".")}
    state["item_embedding.weight"] = model.item_embedding.weight
    missing = sasrec.load_state_dict(state, strict=False).missing_keys
    assert sorted(missing) == ["head.bias", "head.weight"]
    return sasrec


@pytest.mark.parametrize("seed", [0, 1])
def test_each_half_is_sasrec_over_its_own_plays_carried_forward(seed):
    """At column i the positive half is SASRec's output over the kept plays <= i at the last
    of them (zeros before the first), the negative half the same over the skipped plays."""
    model = make("gate", seed)
    items, skips = random_batch(seed)
    items, skips = torch.cat([items, batch_rows(ROWS)[0]]), torch.cat([skips, batch_rows(ROWS)[1]])
    inputs, input_skips = items[:, :-1], skips[:, :-1]
    hidden = model.encode(inputs, input_skips)
    real = inputs != 0
    for half, (encoder, plays) in enumerate([("positive", real & ~input_skips), ("negative", input_skips)]):
        alone = split_out(inputs, plays)
        reference = as_sasrec(model, encoder).encode(alone)
        for b in range(inputs.shape[0]):
            n_plays = int(plays[b].sum())
            for i in range(inputs.shape[1]):
                got = hidden[b, i, half * D:(half + 1) * D]
                count = int(plays[b, : i + 1].sum())  # plays of this kind at or before column i
                if count == 0:
                    assert got.abs().max() == 0
                else:
                    want = reference[b, MAX_LEN - n_plays + count - 1]
                    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fusion", ["none", "gate"])
def test_no_leakage_from_later_plays(fusion):
    """The state and the query at column t are unchanged when every later play (item and skip
    flag) is replaced: the query for play t + 1 reads plays <= t only."""
    model = make(fusion)
    items, skips = random_batch(3, b=8, length=MAX_LEN)
    hidden, query = model.encode(items, skips), model(items, skips)
    gen = torch.Generator().manual_seed(7)
    for t in range(MAX_LEN - 1):
        for _ in range(3):
            changed, flags = items.clone(), skips.clone()
            later = torch.zeros_like(items, dtype=torch.bool)
            later[:, t + 1:] = True
            later &= items != 0  # the left padding stays padding
            changed[later] = torch.randint(2, V, (int(later.sum()),), generator=gen)
            flags[later] = torch.rand(int(later.sum()), generator=gen) < 0.5
            torch.testing.assert_close(model.encode(changed, flags)[:, : t + 1], hidden[:, : t + 1], rtol=0, atol=1e-6)
            torch.testing.assert_close(model(changed, flags)[:, : t + 1], query[:, : t + 1], rtol=0, atol=1e-6)


def test_the_fusions():
    """"none": the query is the kept-play encoder's (a skipped play neither moves it nor does its
    item matter); "gate": the skipped history shapes the query, and at initialisation (zero
    projection) the gate model's query is the "none" model's. Both: project([h; 0]) = head(h)."""
    items, skips = batch_rows(ROWS[:1])
    inputs, input_skips = items[:, :-1], skips[:, :-1]
    plain = make("none")
    query = plain(inputs, input_skips)[0]
    for i in range(1, MAX_LEN):  # row 0: the query at a skipped column is the one at the kept play before it
        if input_skips[0, i] and not input_skips[0, i - 1]:
            torch.testing.assert_close(query[i], query[i - 1])
    other = inputs.clone()
    other[input_skips] = 20  # other skipped items
    torch.testing.assert_close(plain(other, input_skips), plain(inputs, input_skips))
    gate = make("gate")
    assert (gate(other, input_skips) - gate(inputs, input_skips)).abs().max() > 1e-3
    fresh = make("gate", randomise_gate=False)
    fresh.load_state_dict(plain.state_dict(), strict=False)
    torch.testing.assert_close(fresh(inputs, input_skips), plain(inputs, input_skips))
    for model in (plain, gate):
        h = torch.randn(5, D)
        torch.testing.assert_close(model.project(torch.cat([h, torch.zeros_like(h)], -1)), F.gelu(model.head(h)))


# ---- the loss terms -------------------------------------------------------------------------


def test_next_skipped_matches_a_loop():
    items, skips = random_batch(5, b=10)
    items, skips = torch.cat([items, batch_rows(ROWS)[0]]), torch.cat([skips, batch_rows(ROWS)[1]])
    got = next_skipped(items, skips)
    for b in range(items.shape[0]):
        for i in range(items.shape[1]):
            want = 0
            if skips[b, i] and items[b, i]:
                later = [int(items[b, j]) for j in range(i + 1, items.shape[1]) if skips[b, j] and items[b, j]]
                want = later[0] if later else 0
            assert int(got[b, i]) == want, (b, i)
    assert next_skipped(items, torch.zeros_like(skips)).abs().max() == 0


def contrastive_loop(query, weight, targets, skipped):
    """The contrastive term written from its formula, one prediction at a time."""
    total, count = query.new_zeros(()), 0
    for b in range(query.shape[0]):
        for t in range(query.shape[1]):
            target = int(targets[b, t])
            if target == 0:
                continue
            positive = torch.dot(query[b, t], weight[target])
            denominator = torch.exp(positive)
            for k in skipped[b].tolist():
                if k != 0 and k != target:
                    denominator = denominator + torch.exp(torch.dot(query[b, t], weight[k]))
            total = total - torch.log(torch.exp(positive) / denominator)
            count += 1
    return total / max(count, 1)


def contrastive_case(seed: int, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    b, t, m = 4, 5, 6
    query = torch.randn(b, t, D, generator=gen, dtype=dtype)
    weight = torch.randn(V, D, generator=gen, dtype=dtype) * 0.5
    targets = torch.randint(2, 12, (b, t), generator=gen)
    targets[torch.rand(b, t, generator=gen) < 0.3] = 0
    skipped = torch.randint(2, 12, (b, m), generator=gen)  # few items: repeats and targets among them
    skipped[torch.rand(b, m, generator=gen) < 0.3] = 0
    skipped[1] = 0  # a row without skipped plays
    targets[2] = 0  # a row without kept targets
    return query, weight, targets, skipped


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_contrastive_term_matches_the_loop_in_value_and_gradient(seed):
    query, weight, targets, skipped = contrastive_case(seed)
    q1, w1 = query.clone().requires_grad_(), weight.clone().requires_grad_()
    q2, w2 = query.clone().requires_grad_(), weight.clone().requires_grad_()
    got = pnfrec_contrastive(q1, w1, targets, skipped)
    want = contrastive_loop(q2, w2, targets, skipped)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    got.backward()
    want.backward()
    torch.testing.assert_close(q1.grad, q2.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(w1.grad, w2.grad, rtol=1e-10, atol=1e-12)
    small = (query[:2, :3, :4].clone().requires_grad_(), weight[:12, :4].clone().requires_grad_())
    assert torch.autograd.gradcheck(lambda q, w: pnfrec_contrastive(q, w, targets[:2, :3], skipped[:2]), small)


def test_contrastive_term_without_skips_or_targets_is_zero_and_finite():
    query, weight, targets, skipped = contrastive_case(0, torch.float32)
    query.requires_grad_()
    for t, s in ((targets, torch.zeros_like(skipped)), (torch.zeros_like(targets), skipped)):
        loss = pnfrec_contrastive(query, weight, t, s)
        loss.backward()
        assert loss.item() == 0 and torch.isfinite(query.grad).all()
    # a skipped play of the target's own item is no negative: only the target left, loss 0
    assert pnfrec_contrastive(query, weight, torch.full_like(targets, 5), torch.full_like(skipped, 5)).item() == 0


def objective_loop(model, items, skips, alpha, beta):
    """PNFRec's objective with loss.rec = full_softmax, assembled one prediction at a time."""
    inputs, input_skips = items[:, :-1], skips[:, :-1]
    hidden = model.encode(inputs, input_skips)
    query = model.project(hidden)
    weight = model.item_weight

    def ce(q, target):
        logits = weight[2:] @ q  # reserved ids are never candidates
        return torch.logsumexp(logits, 0) - logits[target - 2]

    pos, neg, contrast = [], [], []
    for b in range(items.shape[0]):
        skipped_items = [int(items[b, j]) for j in range(items.shape[1]) if skips[b, j] and items[b, j]]
        for i in range(inputs.shape[1]):
            if inputs[b, i] == 0:
                continue
            target = int(items[b, i + 1])
            if not skips[b, i + 1]:
                pos.append(ce(query[b, i], target))
                negatives = [k for k in skipped_items if k != target]
                logits = torch.stack([torch.dot(query[b, i], weight[k]) for k in [target, *negatives]])
                contrast.append(torch.logsumexp(logits, 0) - logits[0])
            if input_skips[b, i]:
                later = [int(items[b, j]) for j in range(i + 1, items.shape[1]) if skips[b, j] and items[b, j]]
                if later:
                    neg.append(ce(F.gelu(model.head(hidden[b, i, D:])), later[0]))
    mean = lambda xs: torch.stack(xs).mean() if xs else weight.new_zeros(())
    return mean(pos) + alpha * mean(neg), beta * mean(contrast)


@pytest.mark.parametrize("fusion", ["none", "gate"])
def test_objective_matches_a_loop(fusion):
    model = make(fusion)
    items, skips = random_batch(11, b=6)
    items, skips = torch.cat([items, batch_rows(ROWS)[0]]), torch.cat([skips, batch_rows(ROWS)[1]])
    cfg = LossConfig(rec="full_softmax", skip_penalty="none", nce_weight=0.0, pnfrec_neg_weight=0.45,
                     pnfrec_contrastive_weight=0.25)
    objective = Objective(cfg, "pnfrec", mask_prob=0.2, n_items=V - 2)
    batch = BatchTensors(items, skips, torch.arange(2, 12), torch.zeros(10))
    total, rec, nce = objective(model, batch)
    want_rec, want_nce = objective_loop(model, items, skips, 0.45, 0.25)
    torch.testing.assert_close(rec, want_rec, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(nce, want_nce, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(total, rec + nce)
    # each weight scales its own term; the project's skip-InfoNCE adds to the third value
    off = Objective(LossConfig(rec="full_softmax", skip_penalty="none", nce_weight=0.0, pnfrec_neg_weight=0.0,
                               pnfrec_contrastive_weight=0.0), "pnfrec", mask_prob=0.2, n_items=V - 2)
    plain, _, zero = off(model, batch)
    assert zero.item() == 0 and plain.item() < rec.item()
    with_nce = Objective(LossConfig(rec="full_softmax", skip_penalty="none", nce_weight=0.5), "pnfrec",
                         mask_prob=0.2, n_items=V - 2)(model, batch)
    assert with_nce[1].item() == pytest.approx(rec.item()) and with_nce[2].item() > nce.item()


def test_objective_without_skips_or_kept_plays_is_finite():
    """A batch without a skipped play and one without a kept target: finite loss and gradients."""
    model = make("gate").train()
    cfg = Config.from_dict({"model": {"name": "pnfrec"}}).loss
    objective = Objective(cfg, "pnfrec", mask_prob=0.2, n_items=V - 2, item_log_freq=torch.full((V,), -3.0))
    items, skips = random_batch(2)
    for flags in (torch.zeros_like(skips), items != 0):
        model.zero_grad()
        total, _, nce = objective(model, BatchTensors(items, flags, torch.arange(2, 12), torch.full((10,), -3.0)))
        total.backward()
        assert math.isfinite(total.item())
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        if not flags.any():
            assert nce.item() == 0


def test_sparse_item_gradient_equals_the_dense_one():
    """train.optimizer = "sparse_adam": the objective reads the item table by rows only."""
    cfg = Config.from_dict({"model": {"name": "pnfrec", "d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 16,
                                      "pnfrec_fusion": "gate"}, "loss": {"skip_penalty": "negatives"},
                            "train": {"optimizer": "sparse_adam"}})
    torch.manual_seed(0)
    dense = build_model_for(cfg, V)
    sparse = copy.deepcopy(dense)
    build_optimizer(cfg.train, sparse)
    items, skips = random_batch(4)
    batch = BatchTensors(items, skips, torch.arange(2, 14), torch.full((12,), -math.log(V - 2)))
    objective = Objective(cfg.loss, "pnfrec", mask_prob=0.2, n_items=V - 2, item_log_freq=torch.linspace(-8, -2, V))
    for model in (dense, sparse):
        torch.manual_seed(1)
        objective(model, batch)[0].backward()
    grad = sparse.item_embedding.weight.grad
    assert grad.is_sparse
    torch.testing.assert_close(grad.to_dense(), dense.item_embedding.weight.grad, rtol=1e-5, atol=1e-7)


# ---- config ---------------------------------------------------------------------------------


def test_config_defaults_follow_the_model():
    cfg = Config.from_dict({"model": {"name": "pnfrec"}})
    assert (cfg.loss.skip_penalty, cfg.loss.nce_weight) == ("none", 0.0)
    assert (cfg.loss.pnfrec_neg_weight, cfg.loss.pnfrec_contrastive_weight) == (0.45, 0.25)
    assert cfg.model.pnfrec_fusion == "none"
    given = load_config(None, ["model.name=pnfrec", "loss.skip_penalty=unlikelihood", "loss.nce_weight=0.1"])
    assert (given.loss.skip_penalty, given.loss.nce_weight) == ("unlikelihood", 0.1)
    assert Config.from_dict({}).loss.skip_penalty == "negatives"  # the other models keep theirs


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"model": {"pnfrec_fusion": "sum"}}, "model.pnfrec_fusion must be one of 'none', 'gate', got 'sum'"),
        ({"loss": {"pnfrec_neg_weight": -1.0}}, "loss.pnfrec_neg_weight must be >= 0"),
        ({"loss": {"pnfrec_contrastive_weight": -0.5}}, "loss.pnfrec_contrastive_weight must be >= 0"),
        ({"model": {"name": "pnfrec", "skip_inputs": True}},
         "model.skip_inputs does not apply to model.name = 'pnfrec'"),
        ({"model": {"name": "pnfrec"}, "loss": {"skipped_targets": "include"}},
         "loss.skipped_targets must be 'ignore'"),
        ({"model": {"name": "pnfrec"}, "loss": {"pnfrec_neg_weight": 0}},
         "loss.pnfrec_neg_weight = 0 with model.pnfrec_fusion = 'none' leaves the skipped-play encoder"),
        ({"model": {"name": "pnfrec"}, "loss": {"rec": "wrmf"}}, "loss.rec = 'wrmf' needs model.name = 'wrmf'"),
    ],
)
def test_bad_pnfrec_config_is_a_config_error(values, message):
    with pytest.raises(ConfigError, match=message.replace("(", "\\(").replace(")", "\\)")):
        Config.from_dict(values)
    Config.from_dict({"model": {"name": "pnfrec", "pnfrec_fusion": "gate"}, "loss": {"pnfrec_neg_weight": 0}})


# ---- training, evaluation, recommendation ------------------------------------------------


@pytest.fixture(scope="module")
def pnfrec_run(dataset_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("pnfrec") / "run"
    result = train(overrides=tiny(dataset_dir, run, "model.name=pnfrec", "model.pnfrec_fusion=gate",
                                  "train.lr=0.01", "train.epochs=4"))
    return run, result


def test_tiny_run_learns(pnfrec_run, dataset_dir):
    run, result = pnfrec_run
    assert result.completed and result.test["n_kept"] > 0
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0] and all(h["nce_loss"] > 0 for h in result.history)
    valid = result.history[-1]["valid"]["HR@10"]
    assert valid > popularity_hr10(dataset_dir)
    rec = Recommender.load(run)
    untrained = build_model_for(rec.config, rec.dataset.vocab_size)
    before = evaluate_model(untrained, rec.dataset, "valid", rec.config.eval, rec.config.data.max_len,
                            torch.device("cpu"))
    assert valid > before["HR@10"] + 0.05
    assert evaluate(run, "test") == result.test


def test_recommend_a_trained_run(pnfrec_run, dataset_dir, tmp_path):
    run, _ = pnfrec_run
    rec = Recommender.load(run)
    assert isinstance(rec.model, PNFRec) and rec.model.fusion == "gate"
    ds = load_dataset(dataset_dir)
    random.seed(0)
    for s in random.sample(range(ds.n_sessions), 5):
        items, skips = ds.session(s)
        session = ds.decode(items)
        skipped = [t for t, k in zip(session, skips.tolist()) if k]
        out = rec.recommend(session, skipped=skipped, k=5)
        assert len(out.items) == 5 and not set(out.items) & set(skipped)
        assert out.scores == sorted(out.scores, reverse=True)
    with pytest.raises(ConfigError, match="export is not supported for model 'pnfrec'"):
        export(run, tmp_path / "out")
