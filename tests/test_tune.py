"""Hyperparameter search: the space file and its errors, the per-epoch training hook, and
a small study (pruning, run folders, resume, outputs, CLI) on a tiny synthetic dataset."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from negrec_fast.cli import main
from negrec_fast.config import Config, load_config
from negrec_fast.errors import ConfigError
from negrec_fast.training import train
from negrec_fast.tune import Param, load_space, tune
from run_folders import tiny

needs_optuna = pytest.mark.skipif(importlib.util.find_spec("optuna") is None, reason="needs optuna")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_space_file_forms(tmp_path):
    space = write(tmp_path / "space.toml", """
["train.lr"]
low = 1e-4
high = 1e-2
log = true

["model.name"]
choices = ["sasrec", "gru4rec"]

[train]
batch_size = { low = 64, high = 512, step = 64 }

["loss.nce_weight"]
low = 0
high = 1
""")
    assert load_space(space, Config()) == [
        Param("train.lr", "float", low=1e-4, high=1e-2, log=True),
        Param("model.name", "categorical", choices=["sasrec", "gru4rec"]),
        Param("train.batch_size", "int", low=64, high=512, step=64),
        Param("loss.nce_weight", "float", low=0.0, high=1.0),  # a float key: float range from int bounds
    ]
    assert isinstance(load_space(space, Config())[3].low, float)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('["train.lr"]\nlow = 1e-4\nhigh = ', "invalid TOML"),
        ("", "no parameters to search"),
        ('["train.lrr"]\nlow = 1e-4\nhigh = 1e-2', '["train.lrr"]: unknown config key \'train.lrr\'; allowed keys: epochs'),
        ('["trian.lr"]\nlow = 1e-4\nhigh = 1e-2', '["trian.lr"]: unknown config section [trian]'),
        ('["lr"]\nlow = 1e-4\nhigh = 1e-2', '["lr"]: a searched key is section.key'),
        ('["train.lr"]\nlow = 1e-4', '["train.lr"]: give a range (low and high'),
        ('["train.lr"]\nlow = 1e-4\nhigh = 1e-2\nscale = "log"', '["train.lr"]: unknown field(s) scale; allowed: low'),
        ("[train]\nlr = 0.01", "'train.lr' must be a table of low/high/step/log or choices"),
        ('["train.batch_size"]\nlow = 1.5\nhigh = 8',
         '["train.batch_size"]: low must be an integer (train.batch_size is int), got 1.5'),
        ('["model.name"]\nlow = 1\nhigh = 2', '["model.name"]: model.name is str, not a number: search it with choices'),
        ('["train.lr"]\nlow = 1e-2\nhigh = 1e-4', '["train.lr"]: low (0.01) must be below high (0.0001)'),
        ('["train.lr"]\nlow = 0.0\nhigh = 1e-2\nlog = true', '["train.lr"]: log = true needs low > 0'),
        ('["train.lr"]\nlow = 1e-4\nhigh = 1e-2\nlog = true\nstep = 1e-4', "step and log = true cannot be combined"),
        ('["train.lr"]\nlow = 0\nhigh = 1e-2', '["train.lr"]: 0 does not give a valid config: train.lr must be > 0, got 0'),
        ('["model.name"]\nchoices = ["sasrec", "transformer"]',
         "'transformer' does not give a valid config: model.name must be one of"),
        ('["model.name"]\nchoices = []', "choices must be a non-empty list"),
        ('["model.name"]\nchoices = ["sasrec", "sasrec"]', "choices has duplicates"),
        ('["model.name"]\nchoices = ["sasrec"]\nlow = 1', "choices cannot be combined with low"),
        ('["eval.ks"]\nchoices = [[1, 10], [5, 10]]', "each choice must be a number, string or boolean, got [1, 10]"),
        ('["train.bf16"]\nchoices = [1, 0]', "1 does not give a valid config: train.bf16 must be bool"),
        ('["run.name"]\nchoices = ["a", "b"]', '["run.name"]: run.name cannot be searched'),
        ('["train.early_stopping_metric"]\nchoices = ["HR@10"]', "it is the objective of the study"),
        ('["train.lr"]\nlow = 1e-4\nhigh = 1e-2\n[train]\nlr = { low = 1e-3, high = 1e-2 }', "'train.lr' is given twice"),
    ],
)
def test_bad_space_file_names_file_and_key(tmp_path, text, message):
    space = write(tmp_path / "myspace.toml", text)
    with pytest.raises(ConfigError) as info:
        load_space(space, Config())
    assert str(space) in str(info.value)
    assert message in str(info.value)


def test_missing_space_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read search space file .*nope.toml"):
        load_space(tmp_path / "nope.toml", Config())


def test_tune_without_optuna(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna -> ImportError
    space = write(tmp_path / "space.toml", '["train.lr"]\nlow = 1e-4\nhigh = 1e-2\n')
    with pytest.raises(ConfigError, match=r"tune needs the optuna package .*pip install 'negrec-fast\[tune\]'"):
        tune(None, space, trials=1)
    assert main(["tune", "--space", str(space), "--trials", "1"]) == 2
    assert "negrec-fast tune: error: negrec-fast tune needs the optuna package" in capsys.readouterr().err


def test_epoch_callback_stops_a_run_that_stays_valid(dataset_dir, tmp_path):
    seen = []

    def stop_after_first(record, best):
        seen.append((record, best))
        return True

    run = tmp_path / "runs" / "cb"
    result = train(overrides=tiny(dataset_dir, run, batch_size=128), callbacks=[stop_after_first])
    assert result.completed and len(result.history) == 1
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [record for record, _ in seen] == lines
    best = seen[0][1]
    assert best["epoch"] == 1 and best["score"] == lines[0]["valid"]["NDCG@10"]
    assert json.loads((run / "test_metrics.json").read_text())["best_epoch"] == 1
    resumed = train(resume=run)  # the stopped run continues to train.epochs
    assert [h["epoch"] for h in resumed.history] == [1, 2]


def read_rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "study.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def metrics_lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@needs_optuna
def test_study_prunes_resumes_and_writes_outputs(dataset_dir, tmp_path, capsys):
    import optuna

    runs = tmp_path / "runs"
    space = write(tmp_path / "space.toml", '["train.lr"]\nlow = 1e-6\nhigh = 1e-2\nlog = true\n')
    folder = runs / "space"
    folder.mkdir(parents=True)
    storage = f"sqlite:///{folder / 'study.db'}"
    # a fast learner first, then a rate that learns nothing: the median pruner stops it after epoch 1
    study = optuna.create_study(study_name="space", storage=storage, direction="maximize")
    study.enqueue_trial({"train.lr": 1e-2})
    study.enqueue_trial({"train.lr": 1e-6})
    base = tiny(dataset_dir, runs / "base", batch_size=128)  # tune names each trial
    result = tune(None, space, trials=2, overrides=base, prune_startup=1)

    rows = read_rows(folder)
    assert [(r["trial"], r["state"]) for r in rows] == [("0", "COMPLETE"), ("1", "PRUNED")]
    good, bad = metrics_lines(folder / "trial-0000"), metrics_lines(folder / "trial-0001")
    assert len(good) == 2 and len(bad) == 1
    assert float(rows[0]["value"]) == max(line["valid"]["NDCG@10"] for line in good)
    assert float(rows[1]["value"]) == bad[0]["valid"]["NDCG@10"] < good[0]["valid"]["NDCG@10"]
    assert float(rows[0]["train.lr"]) == 1e-2 and float(rows[1]["train.lr"]) == 1e-6
    # the pruned trial is an ordinary finished run folder: best checkpoint tested
    assert json.loads((folder / "trial-0001" / "test_metrics.json").read_text())["best_epoch"] == 1
    assert result.best_trial == 0 and result.best_value == float(rows[0]["value"])
    best = load_config(folder / "best.toml")
    expected = load_config(None, [*base, "train.lr=0.01"])
    assert best == expected and best.run.dir == str(runs)
    summary = (folder / "summary.md").read_text()
    assert "1 complete, 1 pruned" in summary and "best: trial 0" in summary

    # a process killed mid-trial leaves it RUNNING: the next call fails it and re-runs its parameters
    study = optuna.load_study(study_name="space", storage=storage)
    killed = study.ask()
    lr = killed.suggest_float("train.lr", 1e-6, 1e-2, log=True)
    first_run = (folder / "trial-0000" / "metrics.jsonl").read_text()
    code = main(["tune", "--space", str(space), "--trials", "3", "--prune-startup", "1", *base])
    assert code == 0
    out = capsys.readouterr().out
    assert f"best config: {folder / 'best.toml'}" in out
    rows = read_rows(folder)
    assert [(r["trial"], r["state"]) for r in rows][:3] == [("0", "COMPLETE"), ("1", "PRUNED"), ("2", "FAIL")]
    assert rows[2]["note"] == "interrupted" and not (folder / "trial-0002").exists()
    assert len(rows) == 4 and rows[3]["state"] in ("COMPLETE", "PRUNED")
    assert float(rows[3]["train.lr"]) == lr and rows[3]["note"] == "re-run of trial 2"
    assert (folder / "trial-0000" / "metrics.jsonl").read_text() == first_run  # finished trials not re-run

    # the study has its 3 finished trials: the same command runs none
    again = tune(None, space, trials=3, overrides=base)
    assert len(again.rows) == 4

    # the same study with another base config or space is refused
    with pytest.raises(ConfigError, match=r"started with another base config \(train.epochs: 2 -> 3\)"):
        tune(None, space, trials=5, overrides=[*base, "train.epochs=3"])
    (tmp_path / "other").mkdir()
    wider = write(tmp_path / "other" / "space.toml", '["train.lr"]\nlow = 1e-7\nhigh = 1e-2\nlog = true\n')
    with pytest.raises(ConfigError, match=r"started with another search space \(differs in train.lr\)"):
        tune(None, wider, trials=5, overrides=base)


@needs_optuna
def test_trial_with_an_impossible_combination_fails_and_is_not_retried(dataset_dir, tmp_path):
    # valid for the config alone, but the tiny dataset has only 400 items: Trainer refuses it
    space = write(tmp_path / "negs.toml", '["loss.n_negatives"]\nchoices = [450]\n')
    base = tiny(dataset_dir, tmp_path / "runs" / "base", batch_size=128)
    result = tune(None, space, trials=1, overrides=base)
    (row,) = result.rows
    assert row["state"] == "FAIL" and "loss.n_negatives (450) must be smaller than the catalogue" in row["note"]
    assert result.best_config is None and not (result.study_dir / "best.toml").exists()
    assert "best: none completed yet" in (result.study_dir / "summary.md").read_text()
    assert len(tune(None, space, trials=1, overrides=base).rows) == 1  # a recorded failure is finished
    with pytest.raises(ConfigError, match="'negs' in .* maximizes its objective; skip_MRR@10 needs minimize"):
        tune(None, space, trials=2, overrides=[*base, "train.early_stopping_metric=skip_MRR@10"])
