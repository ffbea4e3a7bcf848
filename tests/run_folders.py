"""Run folders for tests: overrides for a seconds-long training run, and a folder holding a
randomly initialised model for tests of code that loads trained runs."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from negrec_fast.checkpoint import save_checkpoint
from negrec_fast.config import Config
from negrec_fast.data import load_dataset, prepare
from negrec_fast.models import build_model_for
from negrec_fast.run_folder import CHECKPOINT_FORMAT
from negrec_fast.synthetic import generate_mssd


def generated_dataset(root: Path, **log) -> Path:
    """A generate_mssd log (keyword arguments as there) prepared into ``root/prepared``."""
    raw = generate_mssd(root / "log.csv", **log)
    prepare(raw, root / "prepared", format="mssd", progress=False)
    return root / "prepared"


def tiny(dataset_dir: Path, run_dir: Path, *extra: str, batch_size: int = 32) -> list[str]:
    """Overrides that train a tiny SASRec on ``dataset_dir`` for 2 epochs into ``run_dir``."""
    return [
        f"data.path={dataset_dir}",
        "model.d_model=16",
        "model.n_heads=2",
        "model.n_layers=1",
        "model.d_ff=16",
        "loss.n_negatives=40",
        f"train.batch_size={batch_size}",
        "train.epochs=2",
        "train.progress=false",
        "train.patience=0",
        "eval.ks=[1, 10]",
        f"run.dir={run_dir.parent}",
        f"run.name={run_dir.name}",
        *extra,
    ]


def random_run(dataset_dir: Path, run_dir: Path, model: str = "sasrec", max_len: int = 8, seed: int = 0,
               skip_inputs: bool = False, read_skipped: bool = True) -> Path:
    """``run_dir`` with config, dataset.json and a ``best.pt`` of a tiny random ``model``."""
    options = {"name": model, "d_model": 16, "n_layers": 1, "dropout": 0.1, "skip_inputs": skip_inputs,
               "read_skipped": read_skipped}
    if model != "gru4rec":
        options.update(n_heads=2, d_ff=16)
    cfg = Config.from_dict({"data": {"path": str(dataset_dir), "max_len": max_len}, "model": options})
    dataset = load_dataset(dataset_dir)
    torch.manual_seed(seed)
    net = build_model_for(cfg, dataset.vocab_size)
    run_dir.mkdir(parents=True)
    info = {"path": str(Path(dataset_dir).resolve()), "checksum": dataset.manifest.get("checksum")}
    (run_dir / "dataset.json").write_text(json.dumps(info))
    save_checkpoint(run_dir / "best.pt", {"format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "model": net.state_dict()})
    return run_dir
