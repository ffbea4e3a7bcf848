"""Sequential models: shapes, causality, padding invariance, masking, tied head, overfitting."""

from __future__ import annotations

import pytest
import torch

from negrec_fast.losses import full_softmax_loss
from negrec_fast.models import BERT4Rec, GRU4Rec, SASRec, build_model

V, MAX_LEN, D = 30, 8, 16
NAMES = ["sasrec", "bert4rec", "gru4rec"]


pytestmark = pytest.mark.usefixtures("one_thread")

def make(name: str, **options):
    torch.manual_seed(0)
    extra = {} if name == "gru4rec" else {"n_heads": 4, "d_ff": 32}
    return build_model(name, V, max_len=MAX_LEN, d_model=D, **extra, **options).eval()


def left_pad(seq: list[int], length: int) -> list[int]:
    return [0] * (length - len(seq)) + seq


@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_finite_outputs(name):
    model = make(name)
    x = torch.tensor([left_pad([5, 6, 7], 6), [2, 3, 4, 5, 6, 7], [0] * 6])
    hidden = model.encode(x)
    assert hidden.shape == (3, 6, D)
    assert model.project(hidden).shape == (3, 6, D)
    assert model.embed(x).shape == (3, 6, D)
    query = model.next_query(x)
    assert query.shape == (3, D)
    scores = model.score_all(query)
    assert scores.shape == (3, V)
    assert torch.isfinite(hidden).all() and torch.isfinite(query).all()
    assert torch.isneginf(scores[:, :2]).all() and torch.isfinite(scores[:, 2:]).all()
    # padding positions carry no state
    assert hidden[0, :3].abs().max() == 0 and hidden[2].abs().max() == 0


@pytest.mark.parametrize("name", NAMES)
def test_gradients_finite_with_all_padding_row_in_training_mode(name):
    model = make(name).train()
    x = torch.tensor([left_pad([5, 6, 7], 5), [0] * 5])
    model.project(model.encode(x)).sum().backward()
    for p in model.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


def test_sasrec_is_causal():
    model = make("sasrec")
    x = torch.tensor([[0, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]])
    y = x.clone()
    y[:, 3] = torch.tensor([20, 21])
    hx, hy = model.encode(x), model.encode(y)
    torch.testing.assert_close(hx[:, :3], hy[:, :3])
    assert (hx[:, 3:] - hy[:, 3:]).abs().amax(dim=-1).min() > 1e-4


def test_bert4rec_is_bidirectional():
    model = make("bert4rec")
    x = torch.tensor([[2, 3, 4, 5, 6, 7]])
    y = x.clone()
    y[0, 5] = 20
    assert (model.encode(x)[0, :5] - model.encode(y)[0, :5]).abs().amax(dim=-1).min() > 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_more_left_padding_does_not_change_real_outputs(name):
    model = make(name)
    seq = [5, 9, 2, 14]
    short = model.encode(torch.tensor([left_pad(seq, 4)]))
    for length in (5, MAX_LEN):
        long = model.encode(torch.tensor([left_pad(seq, length)]))
        torch.testing.assert_close(long[:, -4:], short, atol=1e-5, rtol=1e-5)
    # the same holds row-wise inside one batch with different padding amounts
    batch = model.encode(torch.tensor([left_pad(seq, 7), left_pad(seq[1:], 7)]))
    torch.testing.assert_close(batch[0, -4:], short[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_next_query_is_projected_output_at_last_play(name):
    model = make(name)
    x = torch.tensor([left_pad([5, 6, 7], 6), [2, 3, 4, 5, 6, 7]])
    torch.testing.assert_close(model.next_query(x), model.project(model.encode(x))[:, -1])
    # right padding also works: the last real play is read, not the last column
    right = torch.tensor([[5, 6, 7, 0, 0, 0]])
    torch.testing.assert_close(model.next_query(right), model.next_query(x[:1]), atol=1e-5, rtol=1e-5)


def test_bert4rec_next_query_reads_appended_mask():
    model = make("bert4rec")
    mask = torch.tensor([[1]])
    short = torch.tensor([left_pad([5, 6, 7], 5)])  # shorter than max_len: nothing dropped
    expect = model.project(model.encode(torch.cat([short, mask], dim=1)))[:, -1]
    torch.testing.assert_close(model.next_query(short), expect)
    full = torch.tensor([[2, 3, 4, 5, 6, 7, 8, 9]])  # max_len plays: the first is dropped
    expect = model.project(model.encode(torch.cat([full[:, 1:], mask], dim=1)))[:, -1]
    torch.testing.assert_close(model.next_query(full), expect)
    padded_full_width = torch.tensor([left_pad([2, 3], MAX_LEN)])  # a padding column is dropped
    expect = model.project(model.encode(torch.tensor([left_pad([2, 3, 1], MAX_LEN)])))[:, -1]
    torch.testing.assert_close(model.next_query(padded_full_width), expect)


def test_bert4rec_mask_items_semantics():
    model = make("bert4rec")
    x = torch.tensor([left_pad([5, 6, 7, 8], 8), [2, 3, 4, 5, 6, 7, 8, 9], [0] * 8] * 20)
    gen = torch.Generator().manual_seed(3)
    masked, targets = model.mask_items(x, 0.4, gen)
    again = model.mask_items(x, 0.4, torch.Generator().manual_seed(3))
    assert torch.equal(masked, again[0]) and torch.equal(targets, again[1])
    is_masked = masked == 1
    assert torch.equal(is_masked, targets != 0)
    assert torch.equal(targets[is_masked], x[is_masked])  # targets are the original ids
    assert torch.equal(masked[~is_masked], x[~is_masked])  # the rest is untouched
    assert not is_masked[x == 0].any()  # padding is never masked
    assert is_masked[x[:, 0] == 0].any(dim=1).sum() == 20  # every non-empty row has a target...
    assert is_masked[x[:, 0] != 0].any(dim=1).all()
    assert not is_masked[2::3].any()  # ...and the all-padding rows have none
    rate = is_masked[x != 0].float().mean().item()
    assert 0.25 < rate < 0.55


def test_bert4rec_mask_items_probabilities_and_errors():
    model = make("bert4rec")
    x = torch.tensor([left_pad([5, 6, 7], 6)] * 50)
    masked, targets = model.mask_items(x, 1.0)
    assert (masked[:, 3:] == 1).all() and torch.equal(targets, x)
    gen = torch.Generator().manual_seed(0)
    masked, targets = model.mask_items(x, 1e-9, gen, last_prob=1.0)
    assert (masked[:, -1] == 1).all() and (masked[:, :-1] != 1).all()
    # with nothing drawn, the last real play is still masked so every row has a target
    masked, _ = model.mask_items(x, 1e-9, gen, last_prob=0.0)
    assert (masked[:, -1] == 1).all() and (masked[:, :-1] != 1).all()
    with pytest.raises(ValueError, match=r"mask_prob must be in \(0, 1\], got 0"):
        model.mask_items(x, 0)
    with pytest.raises(ValueError, match=r"last_prob must be in \[0, 1\], got 1.5"):
        model.mask_items(x, 0.2, last_prob=1.5)


@pytest.mark.parametrize("name", NAMES)
def test_output_head_is_tied_to_item_embeddings(name):
    model = make(name)
    assert model.item_weight is model.item_embedding.weight
    x = torch.tensor([[0, 4, 5, 6]])
    torch.testing.assert_close(model.embed(x), model.item_weight[x])
    query = model.next_query(x)
    torch.testing.assert_close(model.score_all(query)[:, 2:], query @ model.item_weight[2:].T)
    model.score_all(torch.randn(1, D))[0, 9].backward()
    assert model.item_weight.grad[9].abs().sum() > 0  # scoring trains the embedding table


def test_constructor_and_input_errors():
    with pytest.raises(ValueError, match=r"d_model \(30\) must be divisible by n_heads \(8\)"):
        SASRec(V, d_model=30)
    with pytest.raises(ValueError, match="vocab_size must be an integer > 2"):
        SASRec(2)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.0"):
        GRU4Rec(V, dropout=1.0)
    with pytest.raises(ValueError, match="n_layers must be a positive integer, got 0"):
        BERT4Rec(V, n_layers=0)
    with pytest.raises(ValueError, match="max_len must be a positive integer, got 0"):
        GRU4Rec(V, max_len=0)
    with pytest.raises(ValueError, match="mask_index must be the reserved id that is not pad_index=0"):
        BERT4Rec(V, mask_index=0)
    with pytest.raises(ValueError, match="unknown model 'gpt'; expected one of sasrec, bert4rec, gru4rec"):
        build_model("gpt", V)
    with pytest.raises(ValueError, match="bad option for model 'gru4rec'.*n_heads"):
        build_model("gru4rec", V, n_heads=2)
    model = make("sasrec")
    with pytest.raises(ValueError, match="sequence length 9 exceeds max_len=8"):
        model.encode(torch.ones(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match=r"items must be a \[B, L\] tensor, got shape \(4,\)"):
        model.encode(torch.ones(4, dtype=torch.long))
    with pytest.raises(ValueError, match="items must be int64 or int32 ids, got torch.float32"):
        model.encode(torch.ones(1, 4))


@pytest.mark.parametrize("name", NAMES)
def test_tiny_model_overfits_a_deterministic_pattern(name):
    """Next item = (item - 2 + 1) % 10 + 2: the loss must drop well below its start."""
    torch.manual_seed(0)
    model = make(name, dropout=0.0).train()
    starts = torch.arange(8)
    seq = (starts[:, None] + torch.arange(MAX_LEN + 1)) % 10 + 2  # [8, MAX_LEN + 1]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        if name == "bert4rec":
            # predict the last item at a [MASK] appended after the history
            with_mask = torch.cat([seq[:, 1:-1], torch.ones(8, 1, dtype=torch.long)], dim=1)
            query, targets = model.project(model.encode(with_mask))[:, -1], seq[:, -1]
        else:
            query, targets = model.project(model.encode(seq[:, :-1])), seq[:, 1:]
        loss = full_softmax_loss(query.reshape(-1, D), model.item_weight, targets.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses


@pytest.mark.gpu
@pytest.mark.parametrize("name", NAMES)
def test_cuda_matches_cpu(name):
    model = make(name)
    x = torch.tensor([left_pad([5, 6, 7], 6), [2, 3, 4, 5, 6, 7], [0] * 6])
    expected = model.next_query(x)
    cuda = model.cuda()
    got = cuda.next_query(x.cuda())
    torch.testing.assert_close(got.cpu(), expected, atol=1e-4, rtol=1e-4)
    assert torch.isneginf(cuda.score_all(got)[:, :2]).all()
    if name == "bert4rec":  # a CPU generator drives masking of CUDA ids
        masked, targets = cuda.mask_items(x.cuda(), 0.5, torch.Generator().manual_seed(0))
        assert masked.is_cuda and torch.equal((masked == 1).cpu(), (targets != 0).cpu())


@pytest.mark.parametrize("name", NAMES)
def test_skip_inputs_read_the_flags_of_real_plays_only(name):
    x = torch.tensor([left_pad([5, 6, 7], 6), [2, 3, 4, 5, 6, 7]])
    kept = torch.zeros_like(x, dtype=torch.bool)
    flagged = kept.clone()
    flagged[0, 4] = flagged[1, 2] = True
    on_padding = kept.clone()
    on_padding[0, 0] = True  # a flag on a padding column is ignored
    model = make(name, skip_inputs=True)
    torch.testing.assert_close(model.encode(x, kept), model.encode(x))  # no flags = every play kept
    torch.testing.assert_close(model.encode(x, on_padding), model.encode(x, kept))
    assert not torch.allclose(model.next_query(x, flagged), model.next_query(x, kept))
    # the flag adds the learned "skipped" vector instead of the "kept" one to that play's input
    w = model.skip_embedding.weight
    torch.testing.assert_close(
        model.input_embedding(x, flagged)[1, 2] - model.input_embedding(x, kept)[1, 2], w[1] - w[0]
    )
    plain = make(name)  # without skip inputs the flags change nothing
    torch.testing.assert_close(plain.next_query(x, flagged), plain.next_query(x, kept))


def test_bert4rec_skip_flags_follow_their_plays_through_the_appended_mask():
    model = make("bert4rec", skip_inputs=True)
    full = torch.tensor([[2, 3, 4, 5, 6, 7, 8, 9]])  # max_len plays: shifted left, mask last
    short = torch.tensor([left_pad([5, 6, 7], 5)])  # shorter: a column appended for the mask
    for x, flags, want_items, want_flags in (
        (full, [0, 1, 0, 0, 0, 0, 1, 0], [3, 4, 5, 6, 7, 8, 9, 1], [1, 0, 0, 0, 0, 1, 0, 0]),
        (short, [0, 0, 1, 0, 1], [0, 0, 5, 6, 7, 1], [0, 0, 1, 0, 1, 0]),
    ):
        skips = torch.tensor([flags], dtype=torch.bool)
        items, column, shifted = model.append_mask(x, skips)
        assert items.tolist() == [want_items] and shifted.int().tolist() == [want_flags]
        expect = model.project(model.encode(items, shifted))[0, column]
        torch.testing.assert_close(model.next_query(x, skips), expect)


@pytest.mark.parametrize("name", ["sasrec", "bert4rec"])
def test_ffn_inner_dropout_switches_only_the_dropout_after_the_activation(name):
    from negrec_fast.config import load_config
    from negrec_fast.models import build_model_for

    def dropouts(model):
        return [(n, m.p) for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout)]

    on = build_model_for(load_config(overrides=[f"model.name={name}"]), 50)
    off = build_model_for(load_config(overrides=[f"model.name={name}", "model.ffn_inner_dropout=false"]), 50)
    assert on.state_dict().keys() == off.state_dict().keys()  # checkpoints stay interchangeable
    changed = [(a, pa, pb) for (a, pa), (b, pb) in zip(dropouts(on), dropouts(off)) if pa != pb]
    assert [a for a, _, _ in changed] == [f"blocks.{i}.ffn.2" for i in range(2)]
    assert all(pa == 0.2 and pb == 0.0 for _, pa, pb in changed)


def test_ffn_inner_dropout_is_refused_where_there_is_no_such_block():
    from negrec_fast.config import load_config
    from negrec_fast.errors import ConfigError

    with pytest.raises(ConfigError, match="ffn_inner_dropout"):
        load_config(overrides=["model.name=gru4rec", "model.ffn_inner_dropout=false"])
