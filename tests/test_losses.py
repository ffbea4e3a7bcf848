"""Reference losses pinned on small hand-computed cases (expected values from plain loops).

Includes the cases the original authors' code got wrong: skipped negatives paired with the
wrong session, padding vectors in the InfoNCE denominator, and a missing next positive
falling back to position 0.
"""

from __future__ import annotations

import math

import loss_loops
import pytest
import torch

from negrec_fast.losses import (
    bce_loss,
    full_softmax_loss,
    gbce_beta,
    gbce_loss,
    sampled_softmax_loss,
    skip_infonce_loss,
)

# item table for the id-based losses: V = 7, d = 2; ids 0 and 1 are reserved
W = [[9.0, 9.0], [8.0, -8.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.5], [0.5, -2.0]]
Q = [[0.5, 1.0], [2.0, -1.0], [-0.3, 0.8], [1.0, 1.0]]


def dot(u, v):
    return sum(a * b for a, b in zip(u, v))


def logsumexp(xs):
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def cos(u, v):
    return dot(u, v) / math.sqrt(dot(u, u) * dot(v, v))


def close(expected):
    """float32 against float64 loops: relative, with an absolute floor for values near 0."""
    return pytest.approx(expected, rel=1e-5, abs=1e-6)


def tensors(query, targets, negatives=None):
    q = torch.tensor(query, requires_grad=True)
    w = torch.tensor(W, requires_grad=True)
    out = [q, w, torch.tensor(targets)]
    if negatives is not None:
        out.append(torch.tensor(negatives))
    return out


# ---------------------------------------------------------------- sampled softmax


def sampled_softmax_by_hand(query, targets, negatives, neg_logq=None, target_logq=None, temperature=1.0):
    """Row n: the positive is column n; a candidate is dropped when it is padding, another
    row with the same target, or a sampled negative equal to the target."""
    losses = []
    for n, t in enumerate(targets):
        if t == 0:
            losses.append(0.0)
            continue
        logits, positive = [], None
        for m, c in enumerate(targets):
            logit = dot(query[n], W[c]) / temperature - (target_logq[m] if target_logq else 0.0)
            if m == n:
                positive = logit
                logits.append(logit)
            elif c != 0 and c != t:
                logits.append(logit)
        for k, c in enumerate(negatives):
            if c != t:
                logits.append(dot(query[n], W[c]) / temperature - (neg_logq[k] if neg_logq else 0.0))
        losses.append(logsumexp(logits) - positive)
    return losses


@pytest.mark.parametrize(
    "targets, negatives",
    [
        ([2, 3, 4, 5], [6, 5]),  # plain
        ([2, 3, 4, 5], [3, 6]),  # a sampled negative equals row 1's target: masked for row 1 only
        ([2, 2, 4, 5], [6]),  # duplicate targets: rows 0 and 1 are not each other's negatives
        ([2, 0, 4, 0], [6, 3]),  # padding rows: no loss, and never a candidate
    ],
)
def test_sampled_softmax_matches_hand_computation(targets, negatives):
    q, w, t, neg = tensors(Q, targets, negatives)
    expected = sampled_softmax_by_hand(Q, targets, negatives)
    per_row = sampled_softmax_loss(q, w, t, neg, reduction="none")
    assert per_row.tolist() == close(expected)
    n_valid = sum(x != 0 for x in targets)
    mean = sampled_softmax_loss(q, w, t, neg)
    assert mean.item() == close(sum(expected) / n_valid)
    assert sampled_softmax_loss(q, w, t, neg, reduction="sum").item() == close(sum(expected))
    mean.backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(w.grad).all()


def test_sampled_softmax_accidental_hit_changes_only_its_row():
    q, w, t = tensors(Q, [2, 3, 4, 5])
    with_hit = sampled_softmax_loss(q, w, t, torch.tensor([3, 6]), reduction="none")
    without = sampled_softmax_loss(q, w, t, torch.tensor([6]), reduction="none")
    assert with_hit[1].item() == close(without[1].item())  # masked for row 1
    assert (with_hit[[0, 2, 3]] > without[[0, 2, 3]]).all()  # a real negative for the others


def test_sampled_softmax_logq_correction_and_temperature():
    targets, negatives = [2, 3, 4, 5], [6, 5]
    neg_logq, target_logq = [-1.0, -3.0], [-0.5, -2.0, -1.5, -4.0]
    q, w, t, neg = tensors(Q, targets, negatives)
    got = sampled_softmax_loss(
        q, w, t, neg, neg_logq=torch.tensor(neg_logq), target_logq=torch.tensor(target_logq),
        temperature=0.5, reduction="none",
    )
    expected = sampled_softmax_by_hand(Q, targets, negatives, neg_logq, target_logq, temperature=0.5)
    assert got.tolist() == close(expected)
    plain = sampled_softmax_by_hand(Q, targets, negatives, temperature=0.5)
    assert all(abs(a - b) > 1e-3 for a, b in zip(expected, plain))  # the correction shifts logits
    # shifting every log-probability by the same constant changes nothing
    shifted = sampled_softmax_loss(
        q, w, t, neg, neg_logq=torch.tensor(neg_logq) + 2.0, target_logq=torch.tensor(target_logq) + 2.0,
        temperature=0.5, reduction="none",
    )
    torch.testing.assert_close(shifted, got)


def test_sampled_softmax_all_padding_batch_is_zero_with_finite_grads():
    q, w, t, neg = tensors(Q, [0, 0, 0, 0], [6, 5])
    loss = sampled_softmax_loss(q, w, t, neg)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(q.grad).all() and q.grad.abs().sum() == 0
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        sampled_softmax_loss(q, w, t, neg, temperature=0)
    with pytest.raises(ValueError, match="reduction must be 'mean', 'sum' or 'none', got 'avg'"):
        sampled_softmax_loss(q, w, t, neg, reduction="avg")


# ---------------------------------------------------------------- full softmax


def test_full_softmax_excludes_reserved_ids():
    targets = [2, 5, 0, 6]
    q, w, t = tensors(Q, targets)
    expected = [
        0.0 if tgt == 0 else logsumexp([dot(Q[n], W[j]) for j in range(2, len(W))]) - dot(Q[n], W[tgt])
        for n, tgt in enumerate(targets)
    ]
    got = full_softmax_loss(q, w, t, reduction="none")
    assert got.tolist() == close(expected)
    assert full_softmax_loss(q, w, t).item() == close(sum(expected) / 3)
    # W[0] and W[1] score up to 18 and 16 against the queries: were they candidates, this would differ
    half = full_softmax_loss(q, w, t, temperature=0.5, reduction="none")
    assert half[0].item() == close(
        logsumexp([dot(Q[0], W[j]) / 0.5 for j in range(2, len(W))]) - dot(Q[0], W[2]) / 0.5
    )


def test_full_softmax_all_padding_is_zero_with_finite_grads():
    q, w, t = tensors(Q, [0, 0, 0, 0])
    loss = full_softmax_loss(q, w, t)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(w.grad).all()


# ---------------------------------------------------------------- skip-informed InfoNCE


def infonce_by_hand(anchors, candidates, positive, negatives, temperature):
    """-log(e^{s+} / (e^{s+} + sum e^{s-})) with s = cos / temperature."""
    s_pos = cos(anchors, candidates[positive]) / temperature
    logits = [s_pos] + [cos(anchors, candidates[j]) / temperature for j in negatives]
    return logsumexp(logits) - s_pos


A0 = [[0.0, 0.0], [1.0, 0.2], [0.3, -1.0], [0.5, 0.5], [-1.0, 0.4], [0.9, -0.1]]
C0 = [[0.0, 0.0], [0.2, 1.0], [1.0, 0.1], [-0.4, 0.7], [0.6, -0.8], [0.3, 0.3]]


def test_skip_infonce_matches_hand_computation():
    # pos 0 padding, kept at 1, 3, 5; skipped at 2, 4
    items = torch.tensor([[0, 2, 3, 4, 5, 6]])
    skips = torch.tensor([[False, False, True, False, True, False]])
    anchors, candidates = torch.tensor([A0], requires_grad=True), torch.tensor([C0])
    got = skip_infonce_loss(anchors, items, skips, candidates=candidates, temperature=0.5, reduction="none")
    l1 = infonce_by_hand(A0[1], C0, 3, [2, 4], 0.5)
    l3 = infonce_by_hand(A0[3], C0, 5, [2, 4], 0.5)
    assert got[0].tolist() == close([0.0, l1, 0.0, l3, 0.0, 0.0])
    mean = skip_infonce_loss(anchors, items, skips, candidates=candidates, temperature=0.5)
    assert mean.item() == close((l1 + l3) / 2)
    mean.backward()
    assert torch.isfinite(anchors.grad).all()
    # without candidates the anchors' own vectors are the positives and negatives
    own = skip_infonce_loss(anchors, items, skips, temperature=0.5, reduction="none")
    assert own[0, 1].item() == close(infonce_by_hand(A0[1], A0, 3, [2, 4], 0.5))


def test_skip_infonce_negatives_come_only_from_the_same_session():
    """Original bug: ``tile`` where ``repeat_interleave`` was meant paired session 0's anchors
    with session 1's skipped tracks."""
    items = torch.tensor([[2, 3, 4, 5], [6, 7, 8, 9]])
    skips = torch.tensor([[False, True, False, False], [False, False, True, False]])
    vectors = torch.tensor([A0[1:5], C0[1:5]])
    loss = skip_infonce_loss(vectors, items, skips, temperature=0.5, reduction="none")
    s0, s1 = A0[1:5], C0[1:5]
    assert loss[0].tolist() == close(
        [infonce_by_hand(s0[0], s0, 2, [1], 0.5), 0.0, infonce_by_hand(s0[2], s0, 3, [1], 0.5), 0.0]
    )
    assert loss[1, 1].item() == close(infonce_by_hand(s1[1], s1, 3, [2], 0.5))
    changed = vectors.clone()
    changed[1, 2] = torch.tensor([5.0, -3.0])  # session 1's skipped track
    again = skip_infonce_loss(changed, items, skips, temperature=0.5, reduction="none")
    torch.testing.assert_close(again[0], loss[0])  # session 0 untouched
    assert abs(again[1, 1].item() - loss[1, 1].item()) > 1e-3  # session 1 did see it


def test_skip_infonce_ignores_padding_vectors():
    items = torch.tensor([[0, 0, 2, 3, 4]])
    skips = torch.tensor([[False, True, False, True, False]])  # a skip bit on padding means nothing
    base = torch.tensor([[[0.0, 0.0], [0.0, 0.0], A0[1], A0[2], A0[3]]])
    noisy = base.clone()
    noisy[0, :2] = torch.tensor([[7.0, -3.0], [0.1, 9.0]])  # arbitrary vectors at padding
    expected = infonce_by_hand(A0[1], {4: A0[3], 3: A0[2]}, 4, [3], 0.5)
    for vectors in (base, noisy):
        loss = skip_infonce_loss(vectors, items, skips, temperature=0.5, reduction="none")
        assert loss[0].tolist() == close([0.0, 0.0, expected, 0.0, 0.0])


def test_skip_infonce_anchor_without_later_kept_play_contributes_nothing():
    """Original bug: a missing next positive fell back to position 0."""
    items = torch.tensor([[2, 3, 4, 5]])
    skips = torch.tensor([[False, True, False, True]])  # position 2 is kept but nothing kept follows
    vectors = torch.tensor([A0[1:5]], requires_grad=True)
    loss = skip_infonce_loss(vectors, items, skips, temperature=0.5, reduction="none")
    only = infonce_by_hand(A0[1], A0[1:5], 2, [1, 3], 0.5)
    assert loss[0].tolist() == close([only, 0.0, 0.0, 0.0])
    mean = skip_infonce_loss(vectors, items, skips, temperature=0.5)
    assert mean.item() == close(only)  # mean over the one real anchor
    # with a fallback to position 0, position 2 would be an anchor with a nonzero loss
    assert infonce_by_hand(A0[3], A0[1:5], 0, [1, 3], 0.5) > 0.1


def test_skip_infonce_without_skips_is_zero_with_finite_grads():
    items = torch.tensor([[0, 2, 3, 4], [0, 0, 0, 0]])
    vectors = torch.randn(2, 4, 3, requires_grad=True)
    loss = skip_infonce_loss(vectors, items, torch.zeros(2, 4, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(vectors.grad).all()


def test_skip_infonce_masks_skipped_copies_of_the_positive():
    # anchor 0 -> positive item 5 at position 3; position 1 skipped the same item 5
    items = torch.tensor([[2, 5, 6, 5]])
    skips = torch.tensor([[False, True, True, False]])
    vectors = torch.tensor([A0[1:5]], requires_grad=True)
    loss = skip_infonce_loss(vectors, items, skips, reduction="none")
    assert loss[0].tolist() == close([infonce_by_hand(A0[1], A0[1:5], 3, [2], 0.1), 0.0, 0.0, 0.0])
    # both skipped plays copy the positive's item: no usable negative, so position 0 is no
    # anchor (loss 0, no gradient) and the batch has no anchor to average over
    copies = torch.tensor([[2, 5, 5, 5]])
    assert skip_infonce_loss(vectors, copies, skips, reduction="none")[0].tolist() == [0.0] * 4
    mean = skip_infonce_loss(vectors, copies, skips)
    assert mean.item() == 0.0
    mean.backward()
    assert torch.count_nonzero(vectors.grad) == 0
    with pytest.raises(ValueError, match="temperature must be > 0, got -1"):
        skip_infonce_loss(vectors, items, skips, temperature=-1)


def test_skip_infonce_mean_denominators():
    """A kept play whose only skipped plays copy its positive is no anchor: it counts in the
    "kept" mean (loss 0) but not in the "anchors" mean."""
    # session 0: kept 0 (item 2), 2 (item 5), 3 (item 3); skipped 1 (item 5).
    #   position 0 -> positive 2 (item 5): its one negative copies it -> not an anchor
    #   position 2 -> positive 3 (item 3): negative 1 (item 5)
    # session 1: kept 0, 2, 3; skipped 1; all items distinct -> anchors 0 and 2
    items = torch.tensor([[2, 5, 5, 3], [6, 7, 8, 9]])
    skips = torch.tensor([[False, True, False, False], [False, True, False, False]])
    s0, s1 = A0[1:5], C0[1:5]
    vectors = torch.tensor([s0, s1])
    l02 = infonce_by_hand(s0[2], s0, 3, [1], 0.5)
    l10 = infonce_by_hand(s1[0], s1, 2, [1], 0.5)
    l12 = infonce_by_hand(s1[2], s1, 3, [1], 0.5)
    loss = skip_infonce_loss(vectors, items, skips, temperature=0.5, reduction="none")
    assert loss.tolist() == [close([0.0, 0.0, l02, 0.0]), close([l10, 0.0, l12, 0.0])]
    mean = skip_infonce_loss(vectors, items, skips, temperature=0.5)
    assert mean.item() == close((l02 + l10 + l12) / 4)  # kept plays 0 and 2 of each session
    anchors = skip_infonce_loss(vectors, items, skips, temperature=0.5, normalize="anchors")
    assert anchors.item() == close((l02 + l10 + l12) / 3)
    total = skip_infonce_loss(vectors, items, skips, temperature=0.5, reduction="sum")
    assert total.item() == close(l02 + l10 + l12)


# ---------------------------------------------------------------- BCE and gBCE


def binary_by_hand(query, targets, negatives, beta=1.0):
    """-beta*log(sigmoid(s+)) - sum_j log(1 - sigmoid(s-_j)); accidental hits dropped."""
    losses = []
    for n, t in enumerate(targets):
        if t == 0:
            losses.append(0.0)
            continue
        row_negs = negatives[n] if isinstance(negatives[0], list) else negatives
        value = -beta * math.log(1 / (1 + math.exp(-dot(query[n], W[t]))))
        for c in row_negs:
            if c != t and c != 0:
                value -= math.log(1 - 1 / (1 + math.exp(-dot(query[n], W[c]))))
        losses.append(value)
    return losses


@pytest.mark.parametrize(
    "targets, negatives",
    [
        ([2, 3, 4, 5], [6, 5]),  # shared; row 3's target is among them (masked for row 3)
        ([2, 0, 4, 5], [[6, 5], [2, 3], [4, 3], [2, 6]]),  # per row; row 2 has a hit; row 1 padding
    ],
)
def test_bce_matches_hand_computation(targets, negatives):
    q, w, t, neg = tensors(Q, targets, negatives)
    expected = binary_by_hand(Q, targets, negatives)
    assert bce_loss(q, w, t, neg, reduction="none").tolist() == close(expected)
    loss = bce_loss(q, w, t, neg)
    assert loss.item() == close(sum(expected) / sum(x != 0 for x in targets))
    loss.backward()
    assert torch.isfinite(q.grad).all()


def test_gbce_beta_and_loss():
    # alpha = 2 / (11 - 1) = 0.2; beta = 0.2 * (0.75 * (1 - 5) + 5) = 0.4
    assert gbce_beta(2, 11, 0.75) == pytest.approx(0.4)
    assert gbce_beta(2, 11, 0.0) == pytest.approx(1.0)
    assert gbce_beta(2, 11, 1.0) == pytest.approx(0.2)
    targets, negatives = [2, 3, 0, 5], [6, 5]
    q, w, t, neg = tensors(Q, targets, negatives)
    expected = binary_by_hand(Q, targets, negatives, beta=0.4)
    got = gbce_loss(q, w, t, neg, n_items=11, reduction="none")
    assert got.tolist() == close(expected)
    torch.testing.assert_close(gbce_loss(q, w, t, neg, n_items=11, t=0.0), bce_loss(q, w, t, neg))
    needs = "gBCE needs 1 <= n_negatives <= n_items - 1, got n_negatives=2, n_items=2"
    with pytest.raises(ValueError, match=needs):
        gbce_loss(q, w, t, neg, n_items=2)
    with pytest.raises(ValueError, match=r"t must be in \[0, 1\], got 1.5"):
        gbce_loss(q, w, t, neg, n_items=11, t=1.5)
    shape = r"negatives must be \[K\] shared or \[N, n\] per row with N=4, got shape \(3, 2\)"
    with pytest.raises(ValueError, match=shape):
        bce_loss(q, w, t, torch.tensor([[2, 3]] * 3))


def test_binary_losses_all_padding_is_zero_with_finite_grads():
    q, w, t, neg = tensors(Q, [0, 0, 0, 0], [6, 5])
    for loss in (bce_loss(q, w, t, neg), gbce_loss(q, w, t, neg, n_items=6)):
        assert loss.item() == 0.0
        loss.backward()
        assert torch.isfinite(q.grad).all()


# ---------------------------------------------------------------- against the loops in loss_loops.py


def leaves(*tensors):
    """float64 leaf copies (the loops run in float64; the references compute in float32)."""
    return [t.detach().double().clone().requires_grad_() for t in tensors]


def assert_matches_loops(reference, loop, tensors, *, rtol=1e-5, atol=1e-6):
    """Per-row values, the mean and the mean's gradients of ``reference`` vs the loop version."""
    ref_in, loop_in = leaves(*tensors), leaves(*tensors)
    per_row, loop_mean = loop(*loop_in)
    torch.testing.assert_close(reference(*ref_in, reduction="none").double(), loss_loops.stack(per_row),
                               rtol=rtol, atol=atol)
    mean = reference(*ref_in, reduction="mean")
    torch.testing.assert_close(mean.double(), loop_mean, rtol=rtol, atol=atol)
    want = torch.autograd.grad(loop_mean, loop_in, allow_unused=True, materialize_grads=True)
    got = torch.autograd.grad(mean, ref_in, allow_unused=True, materialize_grads=True)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=rtol, atol=atol)


def id_batch(seed, n=7, k=4, d=5, v=12):
    """Queries, items, duplicate targets with padding, negatives that hit targets."""
    g = torch.Generator().manual_seed(seed)
    query, weight = torch.randn(n, d, generator=g) * 0.7, torch.randn(v, d, generator=g) * 0.7
    targets = torch.randint(2, 2 + n // 2, (n,), generator=g)
    targets[torch.randperm(n, generator=g)[:2]] = 0
    negatives = torch.randint(2, v, (k,), generator=g)
    negatives[0] = targets[targets != 0][0]
    return query, weight, targets, negatives, -4 * torch.rand(k, generator=g), -4 * torch.rand(n, generator=g)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("logq", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.3])
def test_sampled_softmax_matches_loops(seed, logq, temperature):
    query, weight, targets, negatives, neg_logq, target_logq = id_batch(seed)
    extra = dict(neg_logq=neg_logq, target_logq=target_logq) if logq else {}
    assert_matches_loops(
        lambda q, w, **kw: sampled_softmax_loss(q, w, targets, negatives, temperature=temperature, **extra, **kw),
        lambda q, w: loss_loops.sampled_softmax(q, w, targets, negatives, temperature=temperature, **extra),
        (query, weight),
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_full_softmax_matches_loops(seed):
    query, weight, targets, *_ = id_batch(seed)
    assert_matches_loops(
        lambda q, w, **kw: full_softmax_loss(q, w, targets, temperature=0.5, **kw),
        lambda q, w: loss_loops.full_softmax(q, w, targets, temperature=0.5),
        (query, weight),
    )


@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("t", [0.0, 0.75])
def test_bce_and_gbce_match_loops(per_row, t):
    query, weight, targets, negatives, *_ = id_batch(2)
    if per_row:
        negatives = torch.randint(2, 12, (7, 3), generator=torch.Generator().manual_seed(5))
        negatives[1, 0] = targets[1]  # an accidental hit in one row
    beta = loss_loops.gbce_beta(negatives.shape[-1], 10, t)
    assert_matches_loops(
        lambda q, w, **kw: gbce_loss(q, w, targets, negatives, n_items=10, t=t, **kw),
        lambda q, w: loss_loops.binary(q, w, targets, negatives, beta=beta),
        (query, weight),
    )
    if t == 0.0:
        assert_matches_loops(
            lambda q, w, **kw: bce_loss(q, w, targets, negatives, **kw),
            lambda q, w: loss_loops.binary(q, w, targets, negatives),
            (query, weight),
        )


def session_batch(seed, b=3, length=8, d=4, n_items=5):
    """Left-padded sessions with few distinct items (skipped copies of positives occur)."""
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(2, 2 + n_items, (b, length), generator=g)
    items[0, :2] = 0
    skips = torch.rand(b, length, generator=g) < 0.4
    skips[1] = False  # a session without skips: its kept plays count for "kept" only
    return items, skips, torch.randn(b, length, d, generator=g), torch.randn(b, length, d, generator=g)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("normalize", ["kept", "anchors"])
@pytest.mark.parametrize("separate", [False, True])
def test_skip_infonce_matches_loops(seed, normalize, separate):
    items, skips, anchors, candidates = session_batch(seed)
    if separate:
        assert_matches_loops(
            lambda a, c, **kw: skip_infonce_loss(a, items, skips, candidates=c, temperature=0.5,
                                                 normalize=normalize, **kw),
            lambda a, c: loss_loops.skip_infonce(a, items, skips, candidates=c, temperature=0.5, normalize=normalize),
            (anchors, candidates),
        )
    else:
        assert_matches_loops(
            lambda a, **kw: skip_infonce_loss(a, items, skips, temperature=0.5, normalize=normalize, **kw),
            lambda a: loss_loops.skip_infonce(a, items, skips, temperature=0.5, normalize=normalize),
            (anchors,),
        )


def test_skip_infonce_kept_mean_counts_kept_plays_with_a_later_kept_play():
    """Under "kept", a session without skips adds its kept plays to the mean with loss 0, so
    lambda weighs the term the same whatever share of a batch's sessions has skips; under
    "anchors" such a session is invisible."""
    items, skips, anchors, candidates = session_batch(0)
    total = skip_infonce_loss(anchors, items, skips, candidates=candidates, reduction="sum").item()
    counted = 0  # by hand: each session's kept plays except its last one
    for b in range(items.shape[0]):
        counted += max(sum(1 for i in range(items.shape[1]) if items[b, i] != 0 and not skips[b, i]) - 1, 0)
    assert skip_infonce_loss(anchors, items, skips, candidates=candidates).item() == close(total / counted)
    anchor_mean = skip_infonce_loss(anchors, items, skips, candidates=candidates, normalize="anchors").item()
    assert anchor_mean > total / counted
    # one more session: 8 kept plays, no skip (7 kept plays with a later kept play)
    more = [torch.cat([x, y]) for x, y in ((items, torch.arange(2, 10)[None]), (skips, torch.zeros(1, 8, dtype=torch.bool)),
                                           (anchors, torch.randn(1, 8, 4)), (candidates, torch.randn(1, 8, 4)))]
    items2, skips2, anchors2, candidates2 = more
    assert skip_infonce_loss(anchors2, items2, skips2, candidates=candidates2).item() == close(total / (counted + 7))
    assert skip_infonce_loss(anchors2, items2, skips2, candidates=candidates2,
                             normalize="anchors").item() == close(anchor_mean)
    with pytest.raises(ValueError, match="normalize must be 'kept' or 'anchors', got 'all'"):
        skip_infonce_loss(anchors, items, skips, normalize="all")
