"""The bundled default dataset: synthetic MSSD-format logs, generated and prepared once, cached.

Nothing is downloaded: the generator plants structure (session tastes; off-taste tracks are
skipped far more often) so that skips carry information about the next kept track.
"""

from __future__ import annotations

import os
from pathlib import Path

from negrec_fast.config import DataConfig


def cache_dir() -> Path:
    """``$NEGREC_CACHE`` or ``~/.cache/negrec-fast``."""
    return Path(os.environ.get("NEGREC_CACHE") or Path.home() / ".cache" / "negrec-fast")


def synthetic_dataset_path(data: DataConfig, *, progress: bool = True) -> Path:
    """Processed folder of the synthetic dataset described by ``data`` (built on first use)."""
    from negrec_fast.data import prepare
    from negrec_fast.synthetic import generate_mssd

    key = f"synthetic-s{data.synthetic_sessions}-i{data.synthetic_items}-seed{data.synthetic_seed}"
    out = cache_dir() / "datasets" / key
    if (out / "manifest.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = out.parent / f"{key}.csv.gz"
    if not raw.is_file():
        tmp = raw.with_name(f".{raw.name}.{os.getpid()}.tmp.csv.gz")
        generate_mssd(tmp, n_sessions=data.synthetic_sessions, n_items=data.synthetic_items, seed=data.synthetic_seed)
        os.replace(tmp, raw)
    prepare(raw, out, format="mssd", progress=progress)
    return out
