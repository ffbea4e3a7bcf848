"""Training at MSSD scale, as a user runs it: `negrec-fast train` in a fresh process on a
generated MSSD-format log of the papers' size (450K sessions of 10-20 plays, 1M tracks; d=128,
2 layers, K=1000 sampled negatives, batch 256), with `train.profile = true`.

Reports sequences/s, targets/s, the projected epoch time (steps per epoch x mean step time),
the training process's peak RSS (and the device's peak memory on a GPU) and the step-time breakdown
(data, forward, loss, backward, optimizer) for the dense Adam and the row-wise sparse Adam
item table. On CPU a few dozen steps are timed (an epoch is ~1,760 steps); the same command
on a machine with a GPU gives its figures (`--device cuda`; target there: <= 10 s per epoch on
one H100).

    python benches/bench_mssd_scale.py --work /tmp/mssd-scale [--steps 30] [--device auto]
    pytest benches/bench_mssd_scale.py --benchmark-only   # NEGREC_SCALE_SESSIONS/_ITEMS/_STEPS

The log and its prepared folder are cached in --work (generating them takes about a minute).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

SESSIONS, ITEMS = 450_000, 1_000_000
OPTIMIZERS = ("sparse_adam", "adam")


def dataset(work: Path, sessions: int, items: int) -> Path:
    """The prepared folder of a generated log (cached)."""
    from negrec_fast.data import prepare
    from negrec_fast.synthetic import generate_mssd

    out = work / f"mssd-{sessions}-{items}"
    if not (out / "manifest.json").exists():
        work.mkdir(parents=True, exist_ok=True)
        log = generate_mssd(work / f"mssd-{sessions}-{items}.csv", n_sessions=sessions, n_items=items, seed=0)
        prepare(log, out, format="mssd", overwrite=True, progress=False)
        log.unlink()
    return out


def run(data: Path, work: Path, optimizer: str, steps: int, device: str, batch_size: int, threads: int) -> dict:
    """One `negrec-fast train` process stopped after `steps` steps; its profile and peak RSS."""
    name = f"{optimizer}-{device}-{int(time.time())}"
    cmd = [sys.executable, "-m", "negrec_fast", "train", f"data.path={data}", f"train.optimizer={optimizer}",
           f"train.max_steps={steps}", f"train.batch_size={batch_size}", "train.profile=true", "train.progress=false",
           f"train.device={device}", f"train.threads={threads}", f"run.dir={work / 'runs'}", f"run.name={name}"]
    tic = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - tic
    profile = json.loads((work / "runs" / name / "profile.json").read_text())["unfinished_epoch"]
    manifest = json.loads((data / "manifest.json").read_text())
    steps_per_epoch = -(-manifest["n_sessions"] // batch_size)  # sessions of <= 21 plays: one window each
    return {
        "optimizer": optimizer,
        "command_seconds": wall,
        "steps_per_epoch": steps_per_epoch,
        "projected_epoch_seconds": steps_per_epoch * profile["step_ms"] / 1000,
        **profile,
    }


def measure(work: Path, sessions: int, items: int, steps: int, device: str, batch_size: int, threads: int) -> dict:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    data = dataset(work, sessions, items)
    runs = [run(data, work, opt, steps, device, batch_size, threads) for opt in OPTIMIZERS]
    return {
        "sessions": sessions, "items": items, "batch_size": batch_size, "timed_steps": steps, "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine(),
        "threads": threads, "torch": torch.__version__, "runs": runs,
    }


def test_mssd_scale_training(benchmark, tmp_path_factory):
    sessions = int(os.environ.get("NEGREC_SCALE_SESSIONS", SESSIONS))
    items = int(os.environ.get("NEGREC_SCALE_ITEMS", ITEMS))
    steps = int(os.environ.get("NEGREC_SCALE_STEPS", 30))
    work = Path(os.environ.get("NEGREC_SCALE_WORK", tmp_path_factory.mktemp("mssd_scale")))
    result = benchmark.pedantic(measure, args=(work, sessions, items, steps, "auto", 256, 0), rounds=1, iterations=1)
    benchmark.extra_info.update(result)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="/tmp/mssd-scale")
    p.add_argument("--sessions", type=int, default=SESSIONS)
    p.add_argument("--items", type=int, default=ITEMS)
    p.add_argument("--steps", type=int, default=30, help="timed optimizer steps per run")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch's default)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="results JSON")
    args = p.parse_args()
    result = measure(Path(args.work), args.sessions, args.items, args.steps, args.device, args.batch_size, args.threads)
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
