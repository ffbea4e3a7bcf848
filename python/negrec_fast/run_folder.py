"""The run folder, shared by train, evaluate, recommend, export and tune.

A run folder holds ``config.toml`` (the resolved config), ``environment.json`` (versions,
device, git commit), ``dataset.json`` (which processed dataset, with its checksum),
``metrics.jsonl`` (one line per epoch), ``best.pt`` / ``last.pt`` checkpoints (model,
optimizer, RNG and loader position; written atomically, loaded with ``weights_only=True``),
with ``run.tensorboard`` a ``tensorboard/`` event folder (``negrec_fast.tracking``), and at the
end ``test_metrics.json``. :func:`load_run` reads a trained model back with its dataset.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from negrec_fast.checkpoint import load_checkpoint
from negrec_fast.config import Config, to_toml
from negrec_fast.errors import ConfigError, InputError

CHECKPOINT_FORMAT = 1


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device {name!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {name!r} but CUDA is not available here")
    return device


def dataset_path(cfg: Config, *, progress: bool) -> Path:
    """The processed dataset folder of ``[data]`` (building the bundled synthetic one if asked)."""
    if cfg.data.path == "synthetic":
        from negrec_fast.bundled import synthetic_dataset_path

        return synthetic_dataset_path(cfg.data, progress=progress)
    path = Path(cfg.data.path)
    if not (path / "manifest.json").is_file():
        raise ConfigError(
            f"data.path {str(path)!r} is not a processed dataset folder (no manifest.json); "
            "create one with `negrec-fast prepare`, or use data.path=synthetic"
        )
    return path


def new_run_dir(cfg: Config) -> Path:
    """A new, empty ``run.dir/run.name`` (default name: model and time; a taken default name gets
    the process id appended, a taken explicit one is an error)."""
    parent = Path(cfg.run.dir)
    name = cfg.run.name or f"{cfg.model.name}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = parent / name
    if run_dir.exists() and any(run_dir.iterdir()):
        if cfg.run.name:
            raise ConfigError(f"run folder {run_dir} already exists; choose another run.name or use --resume")
        run_dir = parent / f"{name}-{os.getpid()}"
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def write_run_files(run_dir: Path, cfg: Config, device: torch.device, dataset_dir: Path, dataset) -> None:
    """The files a run starts with: config, environment, dataset record, an empty metrics log."""
    (run_dir / "config.toml").write_text(to_toml(cfg))
    write_json(run_dir / "environment.json", environment(device))
    write_json(
        run_dir / "dataset.json",
        {"path": str(dataset_dir.resolve()), "checksum": dataset.manifest.get("checksum"),
         "n_items": dataset.n_items, "n_sessions": dataset.manifest.get("n_sessions")},
    )
    (run_dir / "metrics.jsonl").write_text("")


def recorded_dataset(run_dir: Path) -> dict[str, Any]:
    """``dataset.json`` of a run: the dataset folder it was trained on and its checksum."""
    path = Path(run_dir) / "dataset.json"
    if not path.is_file():
        raise InputError(f"{path}: not found; it names the dataset (and vocabulary) the run was trained on")
    return json.loads(path.read_text())


@dataclass
class LoadedRun:
    """A trained model of a run folder, on ``device``, with its config and dataset."""

    model: torch.nn.Module
    config: Config
    dataset: Any  # negrec_fast.data.SessionDataset
    device: torch.device


def load_run(run_dir: str | Path, *, checkpoint: str = "best", device: str = "cpu") -> LoadedRun:
    """Load ``RUN_DIR/{checkpoint}.pt`` (``weights_only``) and the run's dataset; a missing or
    newer-format checkpoint, a missing vocabulary or a changed dataset is a clear error."""
    from negrec_fast.data import load_dataset
    from negrec_fast.data.dataset import VOCAB_FILE
    from negrec_fast.models import build_model_for

    run_dir = Path(run_dir)
    path = run_dir / f"{checkpoint}.pt"
    if not path.is_file():
        raise ConfigError(f"{run_dir} has no {checkpoint}.pt checkpoint (is it a finished run folder?)")
    dev = resolve_device(device)
    state = load_checkpoint(path, map_location=dev)
    version = state.get("format")
    if version != CHECKPOINT_FORMAT:
        newer = isinstance(version, int) and version > CHECKPOINT_FORMAT
        raise InputError(
            f"{path}: checkpoint format {version!r} is not supported (this negrec-fast reads format "
            f"{CHECKPOINT_FORMAT}{'; the run was written by a newer version, upgrade negrec-fast' if newer else ''})"
        )
    config = Config.from_dict(state["config"])
    info = recorded_dataset(run_dir)
    vocab_path = Path(info["path"]) / VOCAB_FILE
    if not vocab_path.is_file():
        raise InputError(
            f"{vocab_path}: the run's vocabulary is missing (the dataset named in {run_dir / 'dataset.json'} "
            "was moved or deleted)"
        )
    dataset = load_dataset(info["path"])
    if info.get("checksum") and dataset.manifest.get("checksum") != info["checksum"]:
        raise ConfigError(f"the dataset at {info['path']} changed since the run was trained (checksum differs)")
    model = build_model_for(config, dataset.vocab_size).to(dev)
    model.load_state_dict(state["model"])
    return LoadedRun(model=model, config=config, dataset=dataset, device=dev)


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, device and git commit, for the run folder."""
    import negrec_fast

    versions: dict[str, str | None] = {"python": platform.python_version(), "negrec_fast": negrec_fast.__version__}
    for name in ("torch", "triton", "numpy", "pyarrow"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    commit = _source_commit()
    return {
        "versions": versions,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "git_commit": commit,
        "argv": sys.argv,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _source_commit() -> str | None:
    """Git commit of the negrec-fast source checkout this package runs from (None when installed
    from a wheel, or when the enclosing repository is another project's)."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=5).stdout.strip()

    try:
        top = git("rev-parse", "--show-toplevel")
        if not top or not (Path(top) / "python" / "negrec_fast" / "run_folder.py").resolve() == Path(__file__).resolve():
            return None
        return git("rev-parse", "HEAD") or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as indented JSON, written atomically (temporary file, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


@contextmanager
def folder_lock(folder: Path, busy: str) -> Iterator[None]:
    """Holds ``folder/.lock`` exclusively (where fcntl exists); another holder gets
    ``ConfigError(busy)``."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(folder / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(busy) from None
        yield
