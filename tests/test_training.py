"""End-to-end training on a small synthetic dataset: run folder, checkpoints, exact resume,
evaluation, recommendation and the CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from negrec_fast.checkpoint import load_checkpoint
from negrec_fast.cli import main
from negrec_fast.config import load_config
from negrec_fast.data import load_dataset
from negrec_fast.errors import ConfigError
from negrec_fast.evaluation import evaluate
from negrec_fast.recommend import Recommender
from negrec_fast.training import train
from run_folders import tiny


def comparable(history: list[dict]) -> list[dict]:
    """Epoch records without wall-clock fields."""
    return [{k: v for k, v in h.items() if k not in ("seconds", "sequences_per_s")} for h in history]


def test_run_folder_contents(dataset_dir, tmp_path):
    run = tmp_path / "run"
    result = train(overrides=tiny(dataset_dir, run))
    assert result.completed and result.run_dir == run
    names = {p.name for p in run.iterdir()}
    assert {"config.toml", "environment.json", "dataset.json", "metrics.jsonl", "best.pt", "last.pt",
            "test_metrics.json"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    assert load_config(run / "config.toml").data.path == str(dataset_dir)
    env = json.loads((run / "environment.json").read_text())
    assert env["versions"]["torch"] == torch.__version__ and env["device"] == "cpu"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert all(r["valid"]["n_kept"] > 0 and 0 <= r["valid"]["HR@10"] <= 1 for r in lines)
    assert lines[1]["train_loss"] < lines[0]["train_loss"]
    # checkpoints are plain tensors and containers: loadable with weights_only=True
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["progress"]["epoch"] == 2 and "optimizer" in last and "rng" in last
    best = load_checkpoint(run / "best.pt")
    assert best["epoch"] == result.best_epoch
    test = json.loads((run / "test_metrics.json").read_text())
    assert test["test"] == result.test and result.test["n_kept"] > 0


# Bitwise-equal runs need one intra-op thread: with several, CPU matmuls may split their sums
# differently from one call to the next (observed: 1 float32 ulp in one batch loss of 32).
ONE_THREAD = "train.threads=1"


def test_resume_after_max_steps_matches_uninterrupted_run(dataset_dir, tmp_path):
    full = train(overrides=tiny(dataset_dir, tmp_path / "full", ONE_THREAD))
    part = train(overrides=tiny(dataset_dir, tmp_path / "part", ONE_THREAD, "train.max_steps=5"))
    assert not part.completed and part.test is None
    assert load_checkpoint(part.run_dir / "last.pt")["progress"]["batch"] == 5
    # a resumed run uses its own config: max_steps=5 again, so it stops after 5 more steps
    resumed = train(resume=part.run_dir)
    while not resumed.completed:
        resumed = train(resume=part.run_dir)
    assert comparable(resumed.history) == comparable(full.history)
    assert resumed.test == full.test


@pytest.mark.parametrize("checkpoint_every", [1, 0], ids=["mid-epoch-checkpoints", "epoch-checkpoints"])
def test_killed_run_resumes_to_the_same_metrics(dataset_dir, tmp_path, checkpoint_every):
    reference = train(overrides=tiny(dataset_dir, tmp_path / "ref", ONE_THREAD, "train.epochs=3"))
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "negrec_fast", "train",
           *tiny(dataset_dir, run, ONE_THREAD, "train.epochs=3", f"train.checkpoint_every={checkpoint_every}")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # with per-epoch checkpoints only, kill once epoch 1 is logged: the run is then mid-epoch 2
    ready = (lambda: (run / "last.pt").exists()) if checkpoint_every else (
        lambda: (run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().count("\n") >= 1)
    deadline = time.monotonic() + 120
    while not ready():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint written in time"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    progress = load_checkpoint(run / "last.pt")["progress"]
    assert progress["epoch"] < 3, "the run finished before it could be killed"
    resumed = train(resume=run)
    assert resumed.completed
    assert comparable(resumed.history) == comparable(reference.history)
    assert resumed.test == reference.test


def test_resume_uses_the_thread_count_the_run_started_with(dataset_dir, tmp_path):
    threads = torch.get_num_threads()
    try:
        part = train(overrides=tiny(dataset_dir, tmp_path / "part", "train.max_steps=2", "train.threads=2"))
        assert load_config(part.run_dir / "config.toml").train.threads == 2
        torch.set_num_threads(1)
        train(resume=part.run_dir)
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        default = train(overrides=tiny(dataset_dir, tmp_path / "default", "train.max_steps=1"))
        assert load_config(default.run_dir / "config.toml").train.threads == 1  # resolved, not 0
    finally:
        torch.set_num_threads(threads)


def test_bad_config_fails_before_any_work(dataset_dir, tmp_path):
    with pytest.raises(ConfigError, match="train.lr must be > 0"):
        train(overrides=tiny(dataset_dir, tmp_path / "bad", "train.lr=0"))
    with pytest.raises(ConfigError, match="is not a processed dataset folder"):
        train(overrides=tiny(tmp_path / "nowhere", tmp_path / "bad2"))
    n_items = load_dataset(dataset_dir).n_items
    with pytest.raises(ConfigError, match=rf"loss.n_negatives \({n_items}\) must be smaller than the catalogue \({n_items} items"):
        train(overrides=tiny(dataset_dir, tmp_path / "bad3", f"loss.n_negatives={n_items}"))
    with pytest.raises(ConfigError, match="eval.sampled_candidates"):
        train(overrides=tiny(dataset_dir, tmp_path / "bad4", f"eval.sampled_candidates={n_items + 5}"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("bad")]


def test_resume_refuses_a_changed_dataset(dataset_dir, tmp_path):
    part = train(overrides=tiny(dataset_dir, tmp_path / "part", "train.max_steps=2"))
    info = json.loads((part.run_dir / "dataset.json").read_text())
    (part.run_dir / "dataset.json").write_text(json.dumps({**info, "checksum": "0" * 64}))
    with pytest.raises(ConfigError, match="changed since the run started"):
        train(resume=part.run_dir)


def test_resume_from_another_directory_with_more_epochs(dataset_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(dataset_dir.parent)
    part = train(overrides=tiny(Path(dataset_dir.name), tmp_path / "rel", "train.epochs=1"))  # relative data.path
    assert part.completed and len(part.history) == 1
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="'model.d_model' cannot change when resuming; allowed: train.checkpoint_every"):
        train(resume=part.run_dir, overrides=["model.d_model=32"])
    more = train(resume=part.run_dir, overrides=["train.epochs=2"])
    assert more.completed and [h["epoch"] for h in more.history] == [1, 2]


def test_early_stopping_on_skip_mrr_keeps_the_lowest(dataset_dir, tmp_path):
    result = train(overrides=tiny(dataset_dir, tmp_path / "skip", "train.epochs=3",
                                  "train.early_stopping_metric=skip_MRR@10", "train.early_stopping_guard=0"))
    scores = [h["valid"]["skip_MRR@10"] for h in result.history]
    assert result.best_epoch == 1 + scores.index(min(scores))


def popularity_hr10(dataset_dir: Path) -> float:
    """Validation HR@10 of recommending the 10 most played training items to everyone (loops)."""
    ds = load_dataset(dataset_dir)
    counts = [0] * ds.vocab_size
    for s in range(ds.n_sessions):
        items, _ = ds.session(s)
        for p in range(int(ds.train_end[s])):
            counts[int(items[p])] += 1
    top = sorted(range(2, ds.vocab_size), key=lambda i: -counts[i])[:10]
    targets = [int(ds.session(s)[0][ds.valid_target[s]]) for s in range(ds.n_sessions) if ds.valid_target[s] >= 1]
    return sum(t in top for t in targets) / len(targets)


@pytest.mark.parametrize("model", ["bert4rec", "gru4rec"])
def test_other_models_learn(dataset_dir, tmp_path, model):
    """The loss falls and validation HR@10 ends well above chance (10 / n_items)."""
    result = train(overrides=tiny(dataset_dir, tmp_path / model, f"model.name={model}", "train.lr=0.01",
                                  "loss.nce_context=encoder"))
    assert result.completed and result.test["n_kept"] > 0
    losses = [h["train_loss"] for h in result.history]
    assert losses[1] < losses[0]
    assert result.history[-1]["valid"]["HR@10"] > 3 * 10 / load_dataset(dataset_dir).n_items


@pytest.mark.parametrize("rec", ["full_softmax", "bce", "gbce"])
def test_other_recommendation_losses_learn(dataset_dir, tmp_path, rec):
    """The main loss falls; the full softmax also beats recommending the most popular items."""
    result = train(overrides=tiny(dataset_dir, tmp_path / rec, f"loss.rec={rec}", "train.lr=0.01"))
    rec_losses = [h["rec_loss"] for h in result.history]
    assert rec_losses[1] < rec_losses[0]
    if rec == "full_softmax":
        assert result.history[-1]["valid"]["HR@10"] > popularity_hr10(dataset_dir)


def test_evaluate_and_recommend(dataset_dir, tmp_path, capsys):
    run = tmp_path / "run"
    result = train(overrides=tiny(dataset_dir, run))
    assert evaluate(run, "test") == result.test
    assert json.loads((run / "eval_test.json").read_text())["metrics"] == result.test

    ds = load_dataset(dataset_dir)
    session = ds.decode(ds.items[ds.offsets[0]: ds.offsets[0] + 5])
    rec = Recommender.load(run)
    out = rec.recommend(session + ["no-such-track"], skipped=[session[1]], k=7, exclude_seen=True)
    assert len(out.items) == 7 and out.unknown == ["no-such-track"]
    assert not set(out.items) & set(session)
    assert out.scores == sorted(out.scores, reverse=True)
    kept_seen = rec.recommend(session, k=ds.n_items, exclude_seen=False)
    assert session[1] in kept_seen.items  # only excluded when asked
    assert session[1] not in rec.recommend(session, skipped=[session[1]], k=ds.n_items, exclude_seen=False).items

    assert main(["recommend", str(run), "--session", ",".join(session), "--k", "3", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["items"] == rec.recommend(session, k=3).items
    assert main(["evaluate", str(run), "--split", "valid"]) == 0
    assert "HR@10" in capsys.readouterr().out


def test_cli_reports_errors_cleanly(tmp_path, capsys):
    assert main(["train", "train.epochs=-1"]) == 2
    assert "train.epochs must be > 0, got -1" in capsys.readouterr().err


@pytest.mark.parametrize("whole_catalogue", [["loss.rec=full_softmax"], ["model.name=wrmf"]])
def test_whole_catalogue_losses_sample_no_negatives_whatever_the_catalogue(dataset_dir, tmp_path, whole_catalogue):
    from negrec_fast.training import Trainer

    n_items = load_dataset(dataset_dir).n_items
    overrides = [o for o in tiny(dataset_dir, tmp_path / "full") if not o.startswith(("loss.n_negatives", "model.name"))]
    cfg = load_config(overrides=[*overrides, *whole_catalogue, "train.epochs=1"])
    assert cfg.loss.n_negatives >= n_items  # the default is larger than this catalogue
    trainer = Trainer(cfg)
    assert trainer.loader.n_negatives == 0
    batch = next(iter(trainer.loader.epoch(0)))
    assert batch.negatives.numel() == 0
    result = trainer.fit()
    assert result.completed and result.history[0]["rec_loss"] > 0


def test_early_stopping_on_skip_mrr_is_guarded_by_hr(dataset_dir, tmp_path, monkeypatch):
    """Scripted validation results: epoch 3 has the lowest skip_MRR@10 but its HR@10 collapsed;
    epoch 1 (lower skip_MRR@10 than 2 and 4) is dropped once epoch 2 shows its HR@10 is weak."""
    import negrec_fast.training as training

    script = [(0.10, 0.02), (0.40, 0.10), (0.05, 0.01), (0.38, 0.08)]  # (HR@10, skip_MRR@10)
    valid = [{"n_kept": 50, "n_skipped": 20, "HR@10": hr, "HR@10_kept": hr, "skip_MRR@10": skip} for hr, skip in script]
    for guard, best in ((0.9, 4), (0.0, 3)):  # without the guard, the collapsed epoch 3 wins
        answers = iter(valid)
        monkeypatch.setattr(training, "evaluate_model", lambda *args: next(answers))
        cfg = load_config(overrides=tiny(dataset_dir, tmp_path / f"guard{guard}", "train.epochs=4",
                                         "train.early_stopping_metric=skip_MRR@10", f"train.early_stopping_guard={guard}"))
        trainer = training.Trainer(cfg)
        for _ in script:
            trainer._end_epoch()
        assert trainer.best["epoch"] == best and trainer.best["valid"] == valid[best - 1]


def test_a_diverged_run_stops_with_a_clear_error(dataset_dir, tmp_path):
    # a learning rate this large overflows the weights within the first epoch
    with pytest.raises(FloatingPointError, match=r"training loss became (nan|inf) in epoch 1"):
        train(overrides=tiny(dataset_dir, tmp_path / "diverged", "train.lr=1e30", "train.grad_clip=0"))


def test_resume_from_a_checkpoint_with_float_loss_sums(dataset_dir, tmp_path):
    """Checkpoints written before the loss sums moved to the device resume to the same history."""
    from negrec_fast.checkpoint import save_checkpoint

    full = train(overrides=tiny(dataset_dir, tmp_path / "full", ONE_THREAD))
    part = train(overrides=tiny(dataset_dir, tmp_path / "part", ONE_THREAD, "train.max_steps=5"))
    ckpt = load_checkpoint(part.run_dir / "last.pt")
    loss, rec, nce = ckpt["progress"].pop("loss_sums").tolist()
    ckpt["progress"]["epoch_sums"].update(loss=loss, rec=rec, nce=nce)
    save_checkpoint(part.run_dir / "last.pt", ckpt)
    resumed = train(resume=part.run_dir, overrides=["train.max_steps=0"])
    assert comparable(resumed.history) == comparable(full.history)


def test_validation_within_epochs_leaves_training_unchanged(dataset_dir, tmp_path):
    plain = train(overrides=tiny(dataset_dir, tmp_path / "plain", ONE_THREAD))
    every = train(overrides=tiny(dataset_dir, tmp_path / "every", ONE_THREAD, "train.eval_every=4"))
    n_batches = plain.history[0]["step"]
    records = [json.loads(line) for line in (every.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records == every.history
    expected = [(e, b) for e in (1, 2) for b in [*range(4, n_batches, 4), None]]
    assert [(r["epoch"], r.get("batch")) for r in records] == expected
    for r in records:
        if "batch" in r:
            assert r["step"] == (r["epoch"] - 1) * n_batches + r["batch"]
            assert r["epoch_progress"] == pytest.approx(r["batch"] / n_batches)
    # validating consumes no randomness and changes no weights: the epoch ends are the plain run's
    ends = [r for r in records if "batch" not in r]
    assert comparable(ends) == comparable(plain.history)
    best_score = max(r["valid"]["NDCG@10"] for r in records)
    assert every.best_valid["NDCG@10"] == best_score
    best = load_checkpoint(every.run_dir / "best.pt")
    assert (best["epoch"], best["batch"]) == (every.best_epoch, every.best_batch)


def test_early_stop_within_an_epoch_tests_that_model_and_stays_stopped(dataset_dir, tmp_path):
    seen = []

    def stop_at_first(record, best):
        seen.append(record)
        return True

    run = tmp_path / "stop"
    result = train(overrides=tiny(dataset_dir, run, ONE_THREAD, "train.eval_every=3"), callbacks=[stop_at_first])
    assert [(r["epoch"], r["batch"]) for r in seen] == [(1, 3)]
    assert (result.best_epoch, result.best_batch) == (1, 3) and result.completed
    saved = json.loads((run / "test_metrics.json").read_text())
    assert (saved["best_epoch"], saved["best_batch"]) == (1, 3)
    # the model tested is the one validated at batch 3: evaluating best.pt on valid gives its record
    best = load_checkpoint(run / "best.pt")
    assert best["valid"] == seen[0]["valid"]
    assert load_checkpoint(run / "last.pt")["progress"]["batch"] == 3
    again = train(resume=run)  # patience is 0: only the callback stopped it, so training goes on
    assert again.history[0] == seen[0] and len(again.history) > 1


def test_resume_across_validations_within_an_epoch(dataset_dir, tmp_path):
    extra = (ONE_THREAD, "train.eval_every=3", "train.patience=2", "train.epochs=3")
    full = train(overrides=tiny(dataset_dir, tmp_path / "full", *extra))
    part = train(overrides=tiny(dataset_dir, tmp_path / "part", *extra, "train.max_steps=6"))
    resumed = train(resume=part.run_dir)
    while not resumed.completed:
        resumed = train(resume=part.run_dir)
    assert comparable(resumed.history) == comparable(full.history)
    assert (resumed.best_epoch, resumed.best_batch, resumed.test) == (full.best_epoch, full.best_batch, full.test)


def test_patience_counts_epochs_of_steps_since_the_best_validation(dataset_dir, tmp_path):
    # lr 0.05 overfits the tiny log within a few epochs, so early stopping ends the run
    result = train(overrides=tiny(dataset_dir, tmp_path / "p", "train.eval_every=3", "train.patience=1",
                                  "train.epochs=30", "train.lr=0.05"))
    n_batches = next(r["step"] for r in result.history if "batch" not in r)
    assert result.history[-1]["epoch"] < 30, "early stopping never triggered"
    best_step, gaps = None, []
    for r in result.history:  # replay the rule from the records: NDCG@10 higher is better
        if best_step is None or r["valid"]["NDCG@10"] > best_score:
            best_step, best_score = r["step"], r["valid"]["NDCG@10"]
        gaps.append(r["step"] - best_step)
    assert gaps[-1] >= n_batches and all(g < n_batches for g in gaps[:-1])


def test_profile_splits_each_step_into_phases(dataset_dir, tmp_path):
    result = train(overrides=tiny(dataset_dir, tmp_path / "prof", "train.profile=true", "train.epochs=1"))
    part = train(overrides=tiny(dataset_dir, tmp_path / "part", "train.profile=true", "train.max_steps=3"))
    saved = json.loads((result.run_dir / "profile.json").read_text())
    epoch = result.history[0]["profile"]
    assert saved["epochs"] == [epoch] and saved["unfinished_epoch"] is None
    assert epoch["steps"] == result.history[0]["step"]
    phases = [epoch[f"{p}_ms"] for p in ("data", "forward", "loss", "backward", "optimizer")]
    assert all(p > 0 for p in phases) and sum(phases) == pytest.approx(epoch["step_ms"])
    # the profile counts the epoch's sequences, as the epoch record does (counts, not times:
    # rate x seconds on each side)
    record = result.history[0]
    assert epoch["sequences_per_s"] * epoch["step_ms"] * epoch["steps"] / 1000 == pytest.approx(
        record["sequences_per_s"] * record["seconds"])
    ds = load_dataset(dataset_dir)
    # targets: each session's kept training plays after its first (sessions of <= 21 plays: one window)
    assert max(np.diff(ds.offsets)) <= 21
    targets = sum(int((ds.session(k)[1][1:int(ds.train_end[k])] == 0).sum()) for k in range(ds.n_sessions))
    assert epoch["targets_per_s"] * epoch["step_ms"] * epoch["steps"] / 1000 == pytest.approx(targets)
    unfinished = json.loads((part.run_dir / "profile.json").read_text())["unfinished_epoch"]
    assert unfinished["steps"] == 3
    assert not (train(overrides=tiny(dataset_dir, tmp_path / "off", "train.max_steps=2")).run_dir / "profile.json").exists()
