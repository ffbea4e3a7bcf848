"""TensorBoard scalars of a run, read back from the event file and compared with metrics.jsonl."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import pytest

from negrec_fast.errors import ConfigError
from negrec_fast.training import train
from run_folders import tiny


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="needs tensorboard")
def test_tensorboard_scalars_are_the_metrics_jsonl_values(dataset_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "tb"
    result = train(overrides=tiny(dataset_dir, run, "run.tensorboard=true", batch_size=128))
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    scalars = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}

    expected: dict[str, dict[int, float]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for name in ("train_loss", "rec_loss", "nce_loss", "sequences_per_s", "seconds"):
            expected.setdefault(f"train/{name}", {})[record["epoch"]] = record[name]
        for name, value in record["valid"].items():
            if math.isfinite(value):
                expected.setdefault(f"valid/{name}", {})[record["epoch"]] = value
    test = json.loads((run / "test_metrics.json").read_text())
    for name, value in test["test"].items():
        if math.isfinite(value):
            expected.setdefault(f"test/{name}", {})[test["best_epoch"]] = value

    assert "valid/NDCG@10" in expected and "valid/skip_MRR@10" in expected and "test/HR@10" in expected
    assert scalars.keys() == expected.keys()
    for tag, by_step in expected.items():  # event files hold float32
        assert scalars[tag] == pytest.approx(by_step, rel=1e-6, abs=1e-7), tag
    assert result.test == test["test"]


def test_tensorboard_on_without_tensorboard_fails_before_any_work(dataset_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    run = tmp_path / "no-tb"
    message = r"run.tensorboard = true needs the tensorboard package .*negrec-fast\[tensorboard\]"
    with pytest.raises(ConfigError, match=message):
        train(overrides=tiny(dataset_dir, run, "run.tensorboard=true", batch_size=128))
    assert not run.exists()
