"""negrec-fast experiment: grid expansion and its checks (nothing trained), then a real tiny grid
run, interrupted, resumed and continued, its results table checked against the runs' own
test_metrics.json, and the command line (the built-in paper-b grid, one seed)."""

from __future__ import annotations

import csv
import json
import re
import shutil
import statistics
from itertools import product
from pathlib import Path

import pytest
import torch

from negrec_fast import experiment
from negrec_fast.cli import main
from negrec_fast.config import LossConfig
from negrec_fast.errors import ConfigError
from negrec_fast.experiment import load_grid, plan, run_experiment
from negrec_fast.report import paired_t_test

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]

TINY = {  # seconds-long runs on the generated test dataset
    "model.d_model": 16, "model.n_heads": 2, "model.n_layers": 1, "model.d_ff": 16, "loss.n_negatives": 40,
    "train.batch_size": 32, "train.epochs": 1, "train.progress": False, "train.patience": 0, "train.threads": 1,
    "eval.ks": [1, 10],
}
TINY_SET = [f"{k}={json.dumps(v)}" for k, v in TINY.items()]


def toml_value(value) -> str:
    return json.dumps(value)  # the values used here are written alike in JSON and TOML


def write_grid(path, axes: dict, fixed: dict | None = None, extra: str = "") -> str:
    lines = [extra, "[grid]"] + [f'"{k}" = {toml_value(v)}' for k, v in axes.items()]
    lines += ["[fixed]"] + [f'"{k}" = {toml_value(v)}' for k, v in (fixed or {}).items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_paper_b_is_four_models_with_and_without_infonce(dataset_dir, tmp_path):
    grid = load_grid("paper-b")
    assert grid.base == "loss.nce_weight=0"
    runs = plan(grid, tmp_path / "out", data=str(dataset_dir), overrides=TINY_SET, seeds=2)
    default = LossConfig().nce_weight
    assert default > 0
    cells = list(product(["sasrec", "bert4rec", "bpr", "wrmf"], [0, default]))
    assert len({r.cell for r in runs}) == 8 and len(runs) == 16
    expected = [(m, w, s) for m, w in cells for s in (0, 1)]
    assert [(r.config.model.name, r.config.loss.nce_weight, r.config.train.seed) for r in runs] == expected
    assert [r.run_dir for r in runs] == [
        tmp_path / "out" / "runs" / f"model.name={m},loss.nce_weight={w:g}-seed{s}" for m, w, s in expected
    ]
    losses = {r.config.model.name: r.config.loss.rec for r in runs}
    assert losses == {"sasrec": "sampled_softmax", "bert4rec": "sampled_softmax", "bpr": "bpr", "wrmf": "wrmf"}
    assert {r.config.data.path for r in runs} == {str(dataset_dir)}
    assert not (tmp_path / "out").exists()  # planning writes nothing
    # the grid that replaced experiments/skip_infonce.py
    runs = plan(load_grid(REPO / "experiments" / "skip_infonce.toml"), tmp_path / "out")
    assert [(r.config.model.name, r.config.loss.nce_weight) for r in runs[::3]] == list(
        product(["sasrec", "bert4rec"], [0, 0.1])
    )
    assert [r.seed for r in runs] == [0, 1, 2] * 4 and {r.config.data.path for r in runs} == {"synthetic"}


def test_toml_grid_expands_to_the_product_with_fixed_set_and_when(dataset_dir, tmp_path):
    path = tmp_path / "g.toml"
    path.write_text(
        'seeds = [0, 5]\nbase = "loss.nce_weight=0"\n'
        '[grid]\n"model.name" = ["sasrec", "bpr"]\nloss.nce_weight = [0, 0.1]\nmodel.d_model = [16, 32]\n'
        f'[fixed]\n"data.path" = "{dataset_dir}"\n"train.lr" = 0.005\n[fixed.loss]\nn_negatives = 40\n'
        '[when."model.name=bpr"]\n"train.lr" = 0.02\n'
    )
    runs = plan(load_grid(path), tmp_path / "out", overrides=["train.epochs=3", "train.lr=0.003"])
    axes = list(product(["sasrec", "bpr"], [0, 0.1], [16, 32]))
    assert len(runs) == len(axes) * 2 == 16
    names = [f"model.name={m},loss.nce_weight={w},model.d_model={d}-seed{s}" for m, w, d in axes for s in (0, 5)]
    assert [r.run_dir.name for r in runs] == names
    assert len({r.run_dir for r in runs}) == 16
    for run, (m, w, d, s) in zip(runs, [(*a, s) for a in axes for s in (0, 5)]):
        cfg = run.config
        assert (cfg.model.name, cfg.loss.nce_weight, cfg.model.d_model, cfg.train.seed) == (m, w, d, s)
        assert cfg.loss.n_negatives == 40 and cfg.train.epochs == 3  # [fixed.loss] table; --set
        assert cfg.train.lr == (0.02 if m == "bpr" else 0.003)  # --set over [fixed], [when] over both
        assert run.label == f"model.name={m} loss.nce_weight={w} model.d_model={d}"


@pytest.mark.parametrize(
    "grid, kwargs, match",
    [
        ('[grid]\n"model.nme" = ["sasrec"]\n', {}, r"g\.toml: \[grid\]: unknown config key 'model\.nme'"),
        ('[grid]\n"modle.name" = ["sasrec"]\n', {}, r"unknown config section \[modle\]"),
        ('[grid]\n"model.name" = ["sasrec"]\n[fixed]\n"train.lrr" = 0.1\n', {}, r"\[fixed\]: unknown config key 'train\.lrr'"),
        ('[grid]\n"model.name" = "sasrec"\n', {}, r'"model\.name" must be a non-empty list'),
        ('[grids]\n"model.name" = ["sasrec"]\n', {}, r"unknown entry 'grids'"),
        ('[grid]\n"train.seed" = [0, 1]\n', {}, r"train\.seed cannot be set: the seeds are"),
        ('[grid]\n"train.threads" = [1, 2]\n', {}, r"does not change what is trained"),
        ('[grid]\n"model.name" = ["sasrec"]\n', {"overrides": ["model.name=bpr"]}, r"--set sets 'model\.name', an axis"),
        ('[grid]\n"model.name" = ["sasrec"]\n', {"overrides": ["run.name=x"]}, r"--set: run\.name cannot be set"),
        ('base = "loss.nce_weight=0"\n[grid]\n"model.name" = ["sasrec"]\n', {}, r"base .* a key of \[grid\]"),
        ('[grid]\n"model.name" = ["sasrec"]\n[when."model.name=sine"]\n"train.lr" = 0.1\n', {}, r"matches no cell"),
        ('[grid]\n"loss.nce_weight" = [0, 0.0]\n', {}, r"give the same config"),
        ('seeds = 0\n[grid]\n"model.name" = ["sasrec"]\n', {}, r"seeds must be >= 1"),
        ('[grid]\n"model.name" = ["sasrec"]\n', {"data": "no/such/folder"}, r"not a processed dataset folder"),
    ],
)
def test_grid_errors_name_the_problem_before_anything_runs(dataset_dir, tmp_path, grid, kwargs, match):
    path = tmp_path / "g.toml"
    path.write_text(grid)
    options = {"data": str(dataset_dir), "overrides": TINY_SET, **kwargs}
    with pytest.raises(ConfigError, match=match):
        run_experiment(load_grid(path), tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()


def test_invalid_combinations_are_listed_by_cell(dataset_dir, tmp_path):
    # wrmf trains only with its own loss: the two wrmf cells are rejected, the others are fine
    grid = write_grid(
        tmp_path / "g.toml", {"model.name": ["sasrec", "wrmf"], "loss.nce_weight": [0, 0.1]}, {"loss.rec": "bce"}
    )
    with pytest.raises(ConfigError) as info:
        plan(load_grid(grid), tmp_path / "out", data=str(dataset_dir), overrides=TINY_SET)
    message = str(info.value)
    assert "2 of 4 cells are not valid configs" in message
    assert "model.name=wrmf loss.nce_weight=0:" in message and "model.name=wrmf loss.nce_weight=0.1:" in message
    assert "model.name=sasrec" not in message
    # a per-model override makes the grid valid
    path = tmp_path / "g.toml"
    path.write_text(path.read_text() + '[when."model.name=wrmf"]\n"loss.rec" = "wrmf"\n')
    runs = plan(load_grid(path), tmp_path / "out", data=str(dataset_dir), overrides=TINY_SET, seeds=1)
    assert [r.config.loss.rec for r in runs] == ["bce", "bce", "wrmf", "wrmf"]


def read_test(run_dir):
    return json.loads((run_dir / "test_metrics.json").read_text())["test"]


def test_experiment_runs_resumes_continues_and_reports(dataset_dir, tmp_path):
    grid = write_grid(
        tmp_path / "small.toml", {"model.name": ["sasrec", "bpr"], "loss.nce_weight": [0, 0.1]},
        {"data.path": str(dataset_dir), **TINY}, extra='seeds = 2\nbase = "loss.nce_weight=0"',
    )
    out = tmp_path / "exp"
    epochs = []
    count = [lambda record, best: epochs.append(record["epoch"])]
    first = run_experiment(grid, out, plots=experiment._has_matplotlib(), callbacks=count)
    assert len(first.runs) == 8 and len(first.trained) == 8 and not first.resumed and len(epochs) == 8
    dirs = {(r.config.model.name, r.config.loss.nce_weight, r.seed): r.run_dir for r in first.runs}
    before = {k: read_test(d) for k, d in dirs.items()}

    # interrupt: one run loses its test (tested again from last.pt), one is gone (trained again, stopped by
    # max_steps mid-epoch), one never got to a checkpoint (started over)
    tested, gone, started = dirs[("sasrec", 0.1, 1)], dirs[("bpr", 0.0, 0)], dirs[("bpr", 0.1, 1)]
    (tested / "test_metrics.json").unlink()
    shutil.rmtree(gone)
    for name in ("last.pt", "test_metrics.json"):
        (started / name).unlink()
    untouched = [d for d in dirs.values() if d not in (tested, gone, started)]
    mtimes = {d: (d / "test_metrics.json").stat().st_mtime_ns for d in untouched}
    epochs.clear()
    second = run_experiment(grid, out, overrides=["train.max_steps=2"], plots=False, callbacks=count)
    assert [r.run_dir for r in second.resumed] == [tested]
    assert [r.run_dir for r in second.trained] == [gone, started]
    assert [r.run_dir for r in second.unfinished] == [gone, started]  # both stopped by max_steps
    assert epochs == []
    assert (gone / "last.pt").is_file() and not (gone / "test_metrics.json").exists()

    epochs.clear()
    third = run_experiment(grid, out, plots=False, callbacks=count)
    assert [r.run_dir for r in third.resumed] == [gone, started] and not third.trained and len(epochs) == 2
    assert {d: (d / "test_metrics.json").stat().st_mtime_ns for d in untouched} == mtimes  # never re-run
    after = {k: read_test(d) for k, d in dirs.items()}
    for key, test in before.items():  # CPU, one thread: an interrupted run ends as the uninterrupted one did
        assert after[key] == pytest.approx(test, abs=1e-9), key

    # the table: a row per cell, mean ± std over the seeds' own test_metrics.json
    with open(out / "results.csv") as fh:
        rows = {row["variant"]: row for row in csv.DictReader(fh)}
    assert sorted(rows) == sorted(f"model.name={m}, loss.nce_weight={w}" for m in ("sasrec", "bpr") for w in ("0", "0.1"))
    for (model, weight), label in {(m, w): f"model.name={m}, loss.nce_weight={w:g}" for m in ("sasrec", "bpr")
                                   for w in (0.0, 0.1)}.items():
        row = rows[label]
        assert row["seeds"] == "2"
        for metric in ("HR@10", "NDCG@10", "skip_MRR@10"):
            values = [after[(model, weight, s)][metric] for s in (0, 1)]
            assert float(row[f"{metric}_mean"]) == pytest.approx(statistics.mean(values))
            assert float(row[f"{metric}_std"]) == pytest.approx(statistics.stdev(values))
            if weight:
                base = [after[(model, 0.0, s)][metric] for s in (0, 1)]
                assert row["base"] == f"model.name={model}, loss.nce_weight=0"
                rel = (statistics.mean(values) - statistics.mean(base)) / abs(statistics.mean(base))
                assert float(row[f"{metric}_rel"]) == pytest.approx(rel)
                p = float(row[f"{metric}_p"])
                assert p == pytest.approx(paired_t_test(values, base), nan_ok=True)
            else:
                assert row["base"] == ""
    md = (out / "results.md").read_text()
    assert "| model.name=bpr, loss.nce_weight=0.1 | 2 |" in md
    if experiment._has_matplotlib():
        assert (out / "validation_curves.png").read_bytes()[:4] == b"\x89PNG"
    recorded = json.loads((out / "experiment.json").read_text())
    assert recorded["axes"] == {"model.name": ["sasrec", "bpr"], "loss.nce_weight": [0, 0.1]}
    assert len(recorded["runs"]) == 8

    # the dataset folder written another way is the same dataset: nothing to do
    again = run_experiment(grid, out, data=f"{dataset_dir}/.", plots=False, callbacks=count)
    assert len(again.finished) == 8 and not again.trained and not again.resumed

    # the grid changed under existing run folders: an error naming them, nothing trained
    with pytest.raises(ConfigError, match=r"do not hold its runs(.|\n)*loss\.nce_weight=0-seed0: train\.lr: 0\.001 -> 0\.002"):
        run_experiment(grid, out, overrides=["train.lr=0.002"], callbacks=count)
    assert len(epochs) == 2
    assert {d: (d / "test_metrics.json").stat().st_mtime_ns for d in untouched} == mtimes


def test_cli_runs_paper_b(dataset_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "paper-b"
    args = ["experiment", "--grid", "paper-b", "--data", str(dataset_dir), "--seeds", "1", "--out", str(out),
            "--set", *TINY_SET[:5], "--set", *TINY_SET[5:]]
    assert main([*args, "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert "8 runs (8 cells x 1 seeds); nothing trained" in listed and not out.exists()
    monkeypatch.setattr(experiment, "_has_matplotlib", lambda: False)
    assert main(args) == 0
    captured = capsys.readouterr()
    progress = captured.err.splitlines()
    assert len([line for line in progress if line.startswith("[")]) == 8
    assert re.fullmatch(r"\[1/8\] model\.name=sasrec loss\.nce_weight=0 seed 0 \.\.\. done in \d+\.\ds, NDCG@10 0\.\d{4}",
                        progress[0])
    assert "plots skipped: they need matplotlib" in captured.err
    assert "| model.name=wrmf, loss.nce_weight=0.1 | 1 |" in captured.out
    assert "8 of 8 runs finished (8 trained and 0 resumed now)" in captured.out
    assert sorted(p.name for p in out.iterdir()) == [".lock", "experiment.json", "results.csv", "results.md", "runs"]
    assert main(args) == 0  # again: nothing left to train
    assert "finished before" in capsys.readouterr().err
    assert main(["experiment", "--grid", str(tmp_path / "none.toml"), "--data", str(dataset_dir)]) == 2
    assert "cannot read grid file" in capsys.readouterr().err


def test_a_failed_run_is_reported_and_the_others_still_run(dataset_dir, tmp_path, capsys, monkeypatch):
    grid = write_grid(tmp_path / "g.toml", {"model.name": ["bpr"]}, {"data.path": str(dataset_dir), **TINY})
    real_train = experiment.train

    def train(config=None, **kwargs):
        if config is not None and config.train.seed == 0:
            raise FloatingPointError("training loss became nan in epoch 1 (by batch 3)")
        return real_train(config, **kwargs)

    monkeypatch.setattr(experiment, "train", train)
    assert main(["experiment", "--grid", grid, "--seeds", "2", "--out", str(tmp_path / "out"), "--no-plots"]) == 1
    err = capsys.readouterr().err
    assert "[1/2] model.name=bpr seed 0 ... failed: training loss became nan" in err
    assert re.search(r"\[2/2\] model.name=bpr seed 1 \.\.\. done in", err)
    assert "failed runs:\n  model.name=bpr-seed0: FloatingPointError" in err
    if not torch.cuda.is_available():  # a device that cannot run fails at planning, not in each run
        with pytest.raises(ConfigError, match="'cuda' but CUDA is not available"):
            plan(load_grid(grid), tmp_path / "out2", overrides=["train.device=cuda"])
