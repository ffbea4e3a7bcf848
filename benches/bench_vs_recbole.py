"""Side by side with RecBole 1.2.1: SASRec trained with the full-catalogue softmax (CE) on the
same interactions and the same leave-one-out split, runs alternating on one machine.

Both sides: 2 layers, d=128, 8 heads, feed-forward 128, dropout 0.2, max_len 50, batch 256,
Adam lr 1e-3, no weight decay, no gradient clipping, CPU; early stopping on validation NDCG@10
with the same patience (epochs without improvement) under an epoch cap; full ranking, no item
excluded but the padding ids (RecBole's full sort masks no history for sequential models;
negrec-fast runs with eval.exclude_seen=false). Results (mean ± std over seeds) go to --out.

Data:
- ``--data FILE.inter``: a RecBole atomic file (e.g. ml-100k.inter). RecBole reads the file as is;
  negrec-fast prepares it with ``--format recbole`` (one sequence per user, by timestamp).
- ``--data LOG.csv``: an MSSD-format log; ``--synthetic-sessions N`` generates one
  (negrec_fast.synthetic.generate_mssd). negrec-fast trains on it with its skips (nce on);
  RecBole gets the kept plays only (it has no notion of skips), written as an .inter.
Users (sessions) are kept when RecBole and negrec-fast give them the same validation and test
targets (>= 4 interactions; >= 4 kept plays for MSSD); the test (user, item) pairs of both
sides are compared and any difference is reported.

RecBole venv (its own, so its pins do not touch this project's):
    python3 -m venv /work/recbole-venv
    /work/recbole-venv/bin/pip install torch 'numpy<2' 'pandas<2.2' 'scipy<1.14' recbole==1.2.1
Run (torch >= 2.6 needs TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 for RecBole; set here):
    python benches/bench_vs_recbole.py --data /work/data/ml-100k/ml-100k.inter --seeds 3
    python benches/bench_vs_recbole.py --synthetic-sessions 20000 --seeds 3
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = dict(n_layers=2, n_heads=8, d_model=128, d_ff=128, dropout=0.2, max_len=50, batch_size=256, lr=1e-3)
MIN_TARGETS = 4  # plays a user needs for a training target, a validation and a test target on both sides
METRICS = (("HR@10", "hit@10"), ("NDCG@10", "ndcg@10"), ("MRR@10", "mrr@10"))


def prepare_data(args) -> tuple[Path, Path, str, bool]:
    """The negrec-fast dataset folder, RecBole's data_path and dataset name, and whether the data has skips."""
    from negrec_fast.data import load_dataset, prepare

    work = Path(args.work)
    if args.data and args.data.endswith(".inter"):
        # not the file's own stem: RecBole 1.2.1 reads its bundled copy for a dataset named
        # "ml-100k", whatever data_path says
        name = f"{Path(args.data).stem}-seq"
        ds_dir = work / f"negrec-{name}"
        prepare(args.data, ds_dir, format="recbole", min_length=MIN_TARGETS, overwrite=True, progress=False)
        write_inter(load_dataset(ds_dir), work / "recbole" / name / f"{name}.inter", kept_only=False)
        return ds_dir, work / "recbole", name, False
    log = Path(args.data) if args.data else work / "mssd-synth.csv"
    if not args.data:
        from negrec_fast.synthetic import generate_mssd

        work.mkdir(parents=True, exist_ok=True)
        generate_mssd(log, n_sessions=args.synthetic_sessions, n_items=args.synthetic_items, seed=0)
    name = log.stem
    # keep sessions with >= MIN_TARGETS kept plays (skip_2 = False), so both sides have the same targets
    with open(log, newline="") as fh:
        rows = list(csv.DictReader(fh))
    kept: dict[str, int] = {}
    for r in rows:
        kept[r["session_id"]] = kept.get(r["session_id"], 0) + (r["skip_2"] == "False")
    filtered = work / f"{name}.filtered.csv"
    with open(filtered, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if kept[r["session_id"]] >= MIN_TARGETS)
    ds_dir = work / f"negrec-{name}"
    prepare(filtered, ds_dir, format="mssd", max_length=None, overwrite=True, progress=False)
    write_inter(load_dataset(ds_dir), work / "recbole" / name / f"{name}.inter", kept_only=True)
    return ds_dir, work / "recbole", name, True


def write_inter(ds, path: Path, kept_only: bool) -> None:
    """The dataset's users and plays (kept ones only for data with skips) as a RecBole .inter whose
    timestamp is the play's position: RecBole reads timestamps as float32 after min-max
    normalisation, so on raw unix times plays seconds apart tie and fall back to file order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fh.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for s in range(ds.n_sessions):
            items, skips = ds.session(s)
            user = ds.session_keys[s].as_py()
            for pos, item in enumerate(ds.decode(items[skips == 0] if kept_only else items)):
                fh.write(f"{user}\t{item}\t{pos}\n")


def split_pairs(ds_dir: Path, which: str) -> list[tuple[str, str]]:
    """negrec-fast's (user, item) targets of a split."""
    from negrec_fast.data import load_dataset

    ds = load_dataset(ds_dir)
    target = np.asarray(getattr(ds, f"{which}_target"))
    pairs = []
    for s in np.flatnonzero(target >= 0):
        items, _ = ds.session(int(s))
        pairs.append((ds.session_keys[int(s)].as_py(), ds.decode([items[target[s]]])[0]))
    return pairs


def run_recbole(args, data_path: Path, name: str, seed: int) -> dict:
    out = Path(args.work) / f"recbole-{name}-seed{seed}.json"
    spec = dict(SHARED, data_path=str(data_path), dataset=name, seed=seed, epochs=args.recbole_epochs or args.epochs,
                patience=args.patience,
                min_interactions=MIN_TARGETS,
                checkpoint_dir=str(Path(args.work) / "recbole-saved"))
    spec_path = out.with_suffix(".spec.json")
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1", OMP_NUM_THREADS=str(args.threads))
    subprocess.run([args.recbole_python, str(HERE / "vs_recbole" / "recbole_worker.py"), str(spec_path), str(out)],
                   check=True, env=env, cwd=args.work)
    return json.loads(out.read_text())


def run_negrec(args, ds_dir: Path, name: str, seed: int, has_skips: bool) -> dict:
    out = Path(args.work) / f"negrec-{name}-seed{seed}.json"
    overrides = [
        f"data.path={ds_dir}", "loss.rec=full_softmax", f"model.d_model={SHARED['d_model']}",
        f"model.n_heads={SHARED['n_heads']}", f"model.n_layers={SHARED['n_layers']}", f"model.d_ff={SHARED['d_ff']}",
        f"model.dropout={SHARED['dropout']}", f"data.max_len={SHARED['max_len']}", f"train.batch_size={SHARED['batch_size']}",
        f"train.lr={SHARED['lr']}", "train.grad_clip=0", f"train.epochs={args.negrec_epochs or args.epochs}", f"train.patience={args.patience}",
        "train.early_stopping_metric=NDCG@10", "train.device=cpu", f"train.threads={args.threads}", "train.progress=false", f"train.seed={seed}",
        "eval.ks=[10]", "eval.exclude_seen=false", f"run.dir={Path(args.work) / 'runs'}", f"run.name={name}-seed{seed}",
        *([] if has_skips else ["loss.nce_weight=0"]), *args.negrec_override,
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    subprocess.run([sys.executable, __file__, "--negrec-worker", str(out), *overrides], check=True, env=env)
    return json.loads(out.read_text())


def negrec_worker(out: str, overrides: list[str]) -> None:
    """One negrec-fast run (a subprocess, like RecBole's): per-epoch validation with wall-clock times."""
    import shutil

    import torch

    from negrec_fast.config import load_config
    from negrec_fast.training import Trainer

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cfg = load_config(overrides=overrides)
    shutil.rmtree(Path(cfg.run.dir) / cfg.run.name, ignore_errors=True)
    tic = time.perf_counter()
    trainer = Trainer(cfg)
    setup = time.perf_counter() - tic
    log: list[dict] = []  # every validation: at epoch ends, and within epochs with train.eval_every
    validate = trainer._validate

    def timed_validate(record):
        improved = validate(record)
        log.append({"elapsed": time.perf_counter() - t0, "epoch": record["epoch"], "batch": record.get("batch"),
                    "valid": {r: record["valid"][n] for n, r in METRICS}})
        return improved

    trainer._validate = timed_validate
    t0 = time.perf_counter()
    result = trainer.fit()
    result_out = {
        "side": "negrec",
        "seed": cfg.train.seed,
        "setup_seconds": setup,
        "train_seconds": log[-1]["elapsed"],
        "epochs": [e for e in log if e["batch"] is None],
        "validations": log,
        "best_batch": result.best_batch,
        "best_epoch": result.best_epoch,
        "test": {r: result.test[n] for n, r in METRICS},
        "n_items": trainer.dataset.n_items,
        "overrides": overrides,
    }
    Path(out).write_text(json.dumps(result_out))


def summarize(runs: list[dict]) -> dict:
    """Per side: test metrics, per-epoch wall time, epochs run, best epoch and time to reach
    RecBole's epoch-1 validation HR@10 of the same seed (mean, std over seeds)."""
    by_seed = {(r["side"], r["seed"]): r for r in runs}
    out: dict = {}
    for side in ("recbole", "negrec"):
        rows = [r for r in runs if r["side"] == side]
        stats: dict[str, list[float]] = {}
        for r in rows:
            target = by_seed[("recbole", r["seed"])]["epochs"][0]["valid"]["hit@10"]
            reach = next((e["elapsed"] for e in r.get("validations", r["epochs"]) if e["valid"]["hit@10"] >= target),
                         float("nan"))
            times = np.diff([0.0] + [e["elapsed"] for e in r["epochs"]])
            values = {f"test_{n}": r["test"][k] for n, k in METRICS}
            values.update(epoch_seconds=float(times.mean()), epochs=len(r["epochs"]), best_epoch=r["best_epoch"],
                          train_seconds=r["train_seconds"], setup_seconds=r["setup_seconds"],
                          seconds_to_recbole_epoch1_HR10=reach)
            for k, v in values.items():
                stats.setdefault(k, []).append(float(v))
        out[side] = {k: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0) for k, v in stats.items()}
    return out


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--negrec-worker":
        negrec_worker(sys.argv[2], sys.argv[3:])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="a RecBole .inter file or an MSSD-format CSV log")
    p.add_argument("--synthetic-sessions", type=int, default=20_000, help="without --data: generate an MSSD log")
    p.add_argument("--synthetic-items", type=int, default=5_000)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="seeds run are FIRST_SEED .. FIRST_SEED + SEEDS - 1")
    p.add_argument("--epochs", type=int, default=50, help="epoch cap (both sides)")
    p.add_argument("--negrec-epochs", type=int, help="negrec-fast's epoch cap when not --epochs")
    p.add_argument("--recbole-epochs", type=int,
                   help="RecBole's epoch cap when not --epochs (1: only the time-to-quality baseline; its test "
                        "metrics are then epoch 1's, not converged ones)")
    p.add_argument("--patience", type=int, default=5, help="epochs without validation NDCG@10 improvement before stopping")
    p.add_argument("--max-len", type=int, default=SHARED["max_len"], help="input plays per sequence (both sides)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of each run")
    p.add_argument("--work", default="/tmp/vs_recbole", help="folder for datasets, runs and per-run JSON")
    p.add_argument("--recbole-python", default=os.environ.get("RECBOLE_PYTHON", "/work/recbole-venv/bin/python"))
    p.add_argument("--negrec-override", action="append", default=[], help="extra negrec-fast config override")
    p.add_argument("--out", help="results JSON (default WORK/results-NAME.json)")
    args = p.parse_args()
    SHARED["max_len"] = args.max_len
    Path(args.work).mkdir(parents=True, exist_ok=True)
    ds_dir, data_path, name, has_skips = prepare_data(args)
    runs = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for side in ("recbole", "negrec"):
            tic = time.perf_counter()
            r = run_recbole(args, data_path, name, seed) if side == "recbole" else run_negrec(args, ds_dir, name, seed, has_skips)
            print(f"{side} seed {seed}: {len(r['epochs'])} epochs, test {r['test']}, {time.perf_counter() - tic:.0f}s", file=sys.stderr)
            runs.append(r)
    recbole_test = sorted(map(tuple, runs[0].pop("test_pairs")))
    for r in runs:
        r.pop("test_pairs", None)
    negrec_test = sorted(split_pairs(ds_dir, "test"))
    check = {
        "negrec_test_targets": len(negrec_test),
        "recbole_test_targets": len(recbole_test),
        "same_test_pairs": negrec_test == recbole_test,
        "only_negrec": len(set(negrec_test) - set(recbole_test)),
        "only_recbole": len(set(recbole_test) - set(negrec_test)),
        "n_items": {"negrec": runs[1]["n_items"], "recbole": runs[0]["n_items"]},
    }
    result = {"data": args.data or f"synthetic MSSD ({args.synthetic_sessions} sessions, {args.synthetic_items} items)",
              "epochs_cap": {"recbole": args.recbole_epochs or args.epochs, "negrec": args.negrec_epochs or args.epochs}, "patience": args.patience, "threads": args.threads, "shared": SHARED,
              "has_skips": has_skips, "check": check, "summary": summarize(runs), "runs": runs}
    out = Path(args.out or Path(args.work) / f"results-{name}.json")
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({"check": check, "summary": result["summary"]}, indent=1))
    if not check["same_test_pairs"]:
        sys.exit("the two sides rank different test targets (see check)")


if __name__ == "__main__":
    main()
