"""No held-out play ever reaches training: one epoch of the trainer's batches, row by row,
against the validation and test target positions of each session."""

from __future__ import annotations

import numpy as np
import pytest

from negrec_fast.config import load_config
from negrec_fast.data import prepare
from negrec_fast.synthetic import generate_mssd
from negrec_fast.training import Trainer


@pytest.mark.parametrize("split", ["leave-last-out", "temporal"])
def test_no_validation_or_test_target_in_a_training_batch(tmp_path, split):
    raw = generate_mssd(tmp_path / "log.csv", n_sessions=300, n_items=200, seed=5)
    ds = prepare(raw, tmp_path / "ds", format="mssd", split=split, progress=False)
    max_len = 6  # shorter than most sessions: rows are windows of them
    cfg = load_config(overrides=[
        f"data.path={tmp_path / 'ds'}", f"data.max_len={max_len}", "train.batch_size=16",
        "loss.n_negatives=20", "train.progress=false", f"run.dir={tmp_path}", "run.name=run",
    ])
    loader = Trainer(cfg).loader
    rows_of: set[int] = set()
    for batch in loader.epoch(0):
        items, skips = batch.items.numpy(), batch.skips.numpy()
        for r, s in enumerate(batch.sessions.tolist()):
            rows_of.add(s)
            session_items, session_skips = (np.asarray(a) for a in ds.session(s))
            real = items[r] != 0
            n = int(real.sum())
            assert not real[: len(real) - n].any()  # left-padded
            end = int(ds.train_end[s])
            held_out = [int(p) for p in (ds.valid_target[s], ds.test_target[s]) if p >= 0]
            assert all(end <= p for p in held_out)  # every held-out play comes after the training plays
            # the row is a run of n consecutive plays of its session (items and skip flags) lying
            # wholly before train_end, hence before every held-out target position
            match = [
                o for o in range(len(session_items) - n + 1)
                if session_items[o : o + n].tolist() == items[r, real].tolist()
                and (session_skips[o : o + n] != 0).tolist() == skips[r, real].tolist()
            ]
            legit = [o for o in match if o + n <= end and not any(o <= p < o + n for p in held_out)]
            assert legit, f"session {s}: row {items[r].tolist()} is not a run of training plays"
    trainable = {s for s in range(len(ds)) if ds.train_end[s] >= 2}
    assert set(rows_of) == trainable  # every training session has rows: the check is not vacuous
    assert len(trainable) > 50 and (ds.test_target >= 0).sum() > 20
    with_targets = [s for s in trainable if ds.valid_target[s] >= 0 or ds.test_target[s] >= 0]
    # leave-last-out: sessions train on their prefix; temporal: held-out sessions never train
    assert len(with_targets) > 50 if split == "leave-last-out" else not with_targets
