"""``model.read_skipped = false``: the encoder reads a session as if its skipped plays were
removed, while the skipped plays still enter the losses. The reference is the same model on
the session with its skipped plays taken out by a loop."""

from __future__ import annotations

import pytest
import torch

from negrec_fast.config import LossConfig, load_config
from negrec_fast.errors import ConfigError
from negrec_fast.models import build_model
from negrec_fast.objective import BatchTensors, Objective

SMALL = dict(d_model=16, n_heads=2, n_layers=2, d_ff=16, dropout=0.0)


def sessions(length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded rows with skipped plays: leading, trailing and in between; every row keeps a play."""
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(2, 40, (6, length), generator=g)
    skips = torch.rand((6, length), generator=g) < 0.4
    for row, pad in enumerate([0, 0, 2, length - 3, 1, 3]):
        items[row, :pad] = 0
    skips[0, :3] = True
    skips[0, 3] = False
    skips[1, -2:] = True
    skips[:, -3] = False
    return items, skips & (items != 0)


def without_skips(items: torch.Tensor, skips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's kept plays, left-padded, and for every column the column (in that kept-only row)
    of the last kept play at or before it (-1: none)."""
    rows, length = items.shape
    kept = torch.zeros_like(items)
    where = torch.full((rows, length), -1)
    for r in range(rows):
        plays = [int(items[r, c]) for c in range(length) if items[r, c] != 0 and not skips[r, c]]
        start = length - len(plays)
        for i, item in enumerate(plays):
            kept[r, start + i] = item
        seen = 0
        for c in range(length):
            if items[r, c] != 0 and not skips[r, c]:
                seen += 1
            if seen:
                where[r, c] = start + seen - 1
    return kept, where


@pytest.mark.parametrize("name", ["sasrec", "bert4rec"])
def test_states_are_those_of_the_session_without_its_skipped_plays(name):
    torch.manual_seed(0)
    model = build_model(name, 40, max_len=8, read_skipped=False, **SMALL).eval()
    items, skips = sessions(8)
    kept, where = without_skips(items, skips)
    with torch.no_grad():
        got = model.encode(items, skips)
        want = model.encode(kept)
    for r in range(items.shape[0]):
        for c in range(items.shape[1]):
            if where[r, c] >= 0:
                torch.testing.assert_close(got[r, c], want[r, where[r, c]])
            else:
                assert not got[r, c].any()
    # a free column, so BERT4Rec's appended [MASK] drops no play from either row
    free = [torch.nn.functional.pad(x, (1, 0)) for x in (items[:, 1:], skips[:, 1:])]
    kept, _ = without_skips(*free)
    with torch.no_grad():
        torch.testing.assert_close(model.next_query(*free), model.next_query(kept))


def test_by_default_the_encoder_reads_the_skipped_plays():
    torch.manual_seed(0)
    model = build_model("sasrec", 40, max_len=8, **SMALL).eval()
    items, skips = sessions(8)
    kept, _ = without_skips(items, skips)
    with torch.no_grad():
        assert (model.next_query(items, skips) - model.next_query(kept)).abs().max() > 1e-3


def batch(items, skips) -> BatchTensors:
    return BatchTensors(items=items, skips=skips, negatives=torch.zeros(0, dtype=torch.long), neg_logq=torch.zeros(0))


def test_training_loss_is_that_of_the_kept_plays_and_skips_still_enter_the_losses():
    torch.manual_seed(0)
    model = build_model("sasrec", 40, max_len=8, read_skipped=False, **SMALL)
    items, skips = sessions(9, seed=1)  # windows of max_len + 1 plays
    kept, _ = without_skips(items, skips)
    plain = LossConfig(rec="full_softmax", nce_weight=0.0, skip_penalty="none")
    objective = Objective(plain, "sasrec", mask_prob=0.2, n_items=38)
    # the same targets (every kept play after a kept play: row 0's first kept play, after three
    # skipped plays, has no context) and the same queries as the session without skips
    _, got, _ = objective(model, batch(items, skips))
    _, want, _ = objective(model, batch(kept, torch.zeros_like(skips)))
    torch.testing.assert_close(got, want)
    reading = build_model("sasrec", 40, max_len=8, **SMALL)
    reading.load_state_dict(model.state_dict())
    assert not torch.isclose(objective(reading, batch(items, skips))[1], want)
    # the skip penalty and the skip-InfoNCE still see the skipped plays
    for cfg in (LossConfig(rec="full_softmax", nce_weight=0.0), LossConfig(rec="full_softmax", skip_penalty="none")):
        objective = Objective(cfg, "sasrec", mask_prob=0.2, n_items=38)
        assert not torch.isclose(objective(model, batch(items, skips))[0], objective(model, batch(kept, torch.zeros_like(skips)))[0])


def test_read_skipped_is_refused_where_it_does_not_apply():
    load_config(overrides=["model.read_skipped=false"])
    load_config(overrides=["model.name=bert4rec", "model.read_skipped=false"])
    with pytest.raises(ConfigError, match="read_skipped"):
        load_config(overrides=["model.name=gru4rec", "model.read_skipped=false"])
    with pytest.raises(ConfigError, match="skip_inputs"):
        load_config(overrides=["model.skip_inputs=true", "model.read_skipped=false"])
    with pytest.raises(ValueError, match="read_skipped"):
        build_model("sasrec", 40, read_skipped=False, skip_inputs=True)


@pytest.mark.parametrize("name", ["sasrec", "bert4rec"])
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("read_skipped", [True, False])
def test_the_state_at_one_column_equals_that_column_of_the_full_pass(name, norm_first, read_skipped):
    """``encode(at=...)`` (the last block computes one column: next_query, evaluation, serving)."""
    torch.manual_seed(0)
    model = build_model(name, 40, max_len=8, norm_first=norm_first, read_skipped=read_skipped, **SMALL).eval()
    items, skips = sessions(8)
    rows = torch.arange(items.shape[0])
    with torch.no_grad():
        full = model.encode(items, skips)
        for column in range(items.shape[1]):
            at = torch.full((items.shape[0],), column)
            torch.testing.assert_close(model.encode(items, skips, at=at), full[rows, at])
