"""The training objective's loss wiring: logQ correction and skipped targets."""

from __future__ import annotations

import math

import loss_loops
import numpy as np
import pytest
import torch

from negrec_fast.config import LossConfig
from negrec_fast.kernels.dispatch import rec_loss
from negrec_fast.losses import sampled_softmax_loss
from negrec_fast.models import build_model
from negrec_fast.objective import BatchTensors, Objective


def test_logq_subtracts_the_log_expected_count_of_every_candidate():
    torch.manual_seed(0)
    q, w = torch.randn(5, 8), torch.randn(12, 8)
    targets = torch.tensor([2, 3, 0, 3, 7])  # one padding row: 4 real rows
    negatives = torch.tensor([4, 5, 9])
    inclusion = [0.3, 0.6, 0.15]  # pi_c: the chance of each negative to be among the K = 3
    log_freq = torch.log(torch.linspace(0.01, 0.2, 12))
    got = rec_loss(
        LossConfig(logq=True), q, w, targets, negatives, torch.log(torch.tensor(inclusion)),
        n_items=10, item_log_freq=log_freq,
    )
    keep = targets != 0
    want = sampled_softmax_loss(
        q[keep], w, targets[keep], negatives,
        neg_logq=torch.tensor([math.log(p) for p in inclusion]),  # pi_c, the expected count
        target_logq=log_freq[targets[keep]] + math.log(4),  # N p_c over the 4 real rows
    )
    torch.testing.assert_close(got, want)
    plain = rec_loss(LossConfig(logq=False), q, w, targets, negatives, torch.zeros(3), n_items=10)
    assert not torch.isclose(plain, got)


def test_skipped_targets_are_not_positives_unless_asked():
    torch.manual_seed(0)
    model = build_model("sasrec", 20, max_len=4, d_model=8, n_heads=2, n_layers=1, d_ff=8, dropout=0.0)
    items = torch.tensor([[0, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    skips = torch.tensor([[0, 0, 1, 0, 1], [0, 1, 1, 1, 1]]).bool()
    batch = BatchTensors(items=items, skips=skips, negatives=torch.tensor([11, 12]), neg_logq=torch.zeros(2))
    cfg = LossConfig(nce_weight=0.0, logq=False, skip_penalty="none")
    _, rec, _ = Objective(cfg, "sasrec", mask_prob=0.2, n_items=18)(model, batch)
    # by hand: the kept targets are 4 (after 2 3) in row 0 only
    query = model.project(model.encode(items[:, :-1]))
    want = sampled_softmax_loss(query[0, 2:3], model.item_weight, torch.tensor([4]), batch.negatives)
    torch.testing.assert_close(rec, want)
    cfg_all = LossConfig(nce_weight=0.0, logq=False, skipped_targets="include", skip_penalty="none")
    _, rec_all, _ = Objective(cfg_all, "sasrec", mask_prob=0.2, n_items=18)(model, batch)
    assert not torch.isclose(rec_all, rec)


def infonce(anchor, positive, negatives, temperature=0.1):
    """-log(e^s+ / (e^s+ + sum e^s-)), s = cos / temperature, in float64 from the formula."""
    def s(u, v):
        u, v = u.double(), v.double()
        return (u @ v) / (u.norm() * v.norm()) / temperature

    logits = [s(anchor, positive)] + [s(anchor, n) for n in negatives]
    return loss_loops.lse(logits) - logits[0]


def tiny_model(name):
    torch.manual_seed(0)
    options = dict(max_len=6, d_model=8, dropout=0.0)
    if name != "gru4rec":
        options.update(n_heads=2, n_layers=1, d_ff=8)
    return build_model(name, 20, **options)


# pos:                       0  1  2  3  4  5
CAUSAL_ITEMS = torch.tensor([[0, 2, 3, 4, 5, 6]])
CAUSAL_SKIPS = torch.tensor([[0, 0, 1, 0, 0, 1]]).bool()  # kept 1, 3, 4; skipped 2 (item 3), 5 (item 6)


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
@pytest.mark.parametrize("normalize", ["kept", "anchors"])
def test_causal_encoder_nce_pairs_contexts_with_item_embeddings(name, normalize):
    """The query after kept play i (output i on items[:, :-1]) is pulled towards the embedding
    of the next kept play and pushed from the embeddings of the session's skipped plays, the
    last play included. The old pairing (encoder outputs as anchors, positives and negatives,
    the last play left out) gives another value."""
    model = tiny_model(name)
    batch = BatchTensors(items=CAUSAL_ITEMS, skips=CAUSAL_SKIPS, negatives=torch.tensor([11, 12]),
                         neg_logq=torch.zeros(2))
    cfg = LossConfig(nce_weight=0.5, nce_context="encoder", nce_normalize=normalize, logq=False, skip_penalty="none")
    total, rec, nce = Objective(cfg, name, mask_prob=0.2, n_items=18)(model, batch)
    with torch.no_grad():
        h = model.project(model.encode(CAUSAL_ITEMS[:, :-1]))[0]  # the queries
        e = model.embed(CAUSAL_ITEMS)[0]
    # anchors 1 (-> 3) and 3 (-> 4), both with negatives 2 and 5; kept play 4 has no later kept play
    want = (infonce(h[1], e[3], [e[2], e[5]]) + infonce(h[3], e[4], [e[2], e[5]])) / 2
    torch.testing.assert_close(nce.double(), want, rtol=1e-5, atol=1e-6)
    hidden = model.encode(CAUSAL_ITEMS[:, :-1])[0].detach()
    old = (infonce(hidden[1], hidden[3], [hidden[2]]) + infonce(hidden[3], hidden[4], [hidden[2]])) / 2
    assert abs(old - want) > 0.05
    # the recommendation loss: outputs 2, 3 predict the kept plays 3, 4 (items 4, 5); outputs
    # 1 and 4 predict skipped plays, output 0 reads padding
    _, want_rec = loss_loops.sampled_softmax(h[[2, 3]].double(), model.item_weight.double(),
                                             torch.tensor([4, 5]), batch.negatives)
    torch.testing.assert_close(rec.double(), want_rec, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(total, rec + 0.5 * nce)


def test_embedding_nce_uses_the_whole_window():
    model = tiny_model("sasrec")
    batch = BatchTensors(items=CAUSAL_ITEMS, skips=CAUSAL_SKIPS, negatives=torch.tensor([11, 12]),
                         neg_logq=torch.zeros(2))
    cfg = LossConfig(nce_weight=0.5, nce_context="embedding", logq=False)
    _, _, nce = Objective(cfg, "sasrec", mask_prob=0.2, n_items=18)(model, batch)
    e = model.embed(CAUSAL_ITEMS)[0].detach()
    want = (infonce(e[1], e[3], [e[2], e[5]]) + infonce(e[3], e[4], [e[2], e[5]])) / 2
    torch.testing.assert_close(nce.double(), want, rtol=1e-5, atol=1e-6)


def test_bert4rec_objective_on_masked_positions_only():
    """Targets are the masked kept plays of items[:, 1:]; a masked skipped play is no target.
    The encoder NCE window is items[:, 1:]: output i is the context at play i + 1."""
    model = tiny_model("bert4rec")
    # pos:                   0  1  2  3  4  5  6
    items = torch.tensor([[9, 2, 3, 4, 5, 6, 7]])
    skips = torch.tensor([[1, 0, 1, 0, 1, 0, 0]]).bool()
    # inputs = items[:, 1:] = [2, 3, 4, 5, 6, 7]: mask 3 (skipped), 4 (kept), 7 (kept)
    masked = torch.tensor([[2, 1, 1, 5, 6, 1]])
    targets = torch.tensor([[0, 3, 4, 0, 0, 7]])
    model.mask_items = lambda inputs, p, g=None: (masked, targets)  # a fixed draw
    batch = BatchTensors(items=items, skips=skips, negatives=torch.tensor([11, 12]), neg_logq=torch.zeros(2))
    cfg = LossConfig(nce_weight=0.5, nce_context="encoder", logq=False, skip_penalty="none")
    total, rec, nce = Objective(cfg, "bert4rec", mask_prob=0.2, n_items=18)(model, batch)
    with torch.no_grad():
        h = model.project(model.encode(masked))[0]  # the queries
        e = model.embed(items[:, 1:])[0]
    _, want_rec = loss_loops.sampled_softmax(h[[2, 5]].double(), model.item_weight.double(),
                                             torch.tensor([4, 7]), batch.negatives)
    torch.testing.assert_close(rec.double(), want_rec, rtol=1e-5, atol=1e-6)
    # window [2, 3s, 4, 5s, 6, 7]: kept 0 (-> 2), 2 (-> 4), 4 (-> 5) with negatives 1 and 3;
    # item 9 skipped at position 0 is outside the window
    want = (infonce(h[0], e[2], [e[1], e[3]]) + infonce(h[2], e[4], [e[1], e[3]])
            + infonce(h[4], e[5], [e[1], e[3]])) / 3
    torch.testing.assert_close(nce.double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(total, rec + 0.5 * nce)


@pytest.mark.parametrize("skipped_targets", ["ignore", "include"])
def test_target_log_frequency_counts_training_targets(skipped_targets):
    """A loop over the CSR arrays: plays 1 .. train_end-1 of each session are training
    targets (kept ones only under "ignore"); log of their share, 0 for items never a target."""
    from types import SimpleNamespace

    from negrec_fast.training import target_log_frequency

    sessions = [  # (items, skips, train_end)
        ([2, 3, 4, 3, 5, 6], [0, 1, 0, 0, 1, 0], 4),
        ([3, 2, 7, 7], [0, 0, 1, 0], 3),
        ([6, 5], [0, 0], 2),
    ]
    data = SimpleNamespace(
        offsets=np.cumsum([0] + [len(s[0]) for s in sessions]),
        items=np.array([i for s in sessions for i in s[0]], dtype=np.uint32),
        skips=np.array([k for s in sessions for k in s[1]], dtype=np.uint8),
        train_end=np.array([s[2] for s in sessions], dtype=np.int32),
        vocab_size=9,
    )
    counts = [0] * 9
    for items, skips, train_end in sessions:
        for p in range(1, train_end):
            if skipped_targets == "include" or not skips[p]:
                counts[items[p]] += 1
    total = sum(counts)
    want = [math.log(c / total) if c else 0.0 for c in counts]
    got = target_log_frequency(data, skipped_targets)
    assert got.shape == (9,) and got.dtype == torch.float32
    assert got.tolist() == pytest.approx(want, rel=1e-6)
