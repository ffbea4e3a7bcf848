"""negrec-fast: sequential recommendation that learns from negative feedback (skips).

The Rust extension (`negrec_fast._core`) does ingest and sampling; `negrec_fast.kernels`
holds the Triton fused losses; `negrec_fast.models` and `negrec_fast.losses` are plain
PyTorch. Heavy submodules load on first use, so `import negrec_fast` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> submodule that defines it
_LAZY = {
    "NegrecError": "negrec_fast.errors",
    "InputError": "negrec_fast.errors",
    "ConfigError": "negrec_fast.errors",
    "prepare": "negrec_fast.data",
    "load_dataset": "negrec_fast.data",
    "SessionDataset": "negrec_fast.data",
    "BatchLoader": "negrec_fast.sampling",
    "NegativeSampler": "negrec_fast.sampling",
    "generate_mssd": "negrec_fast.synthetic",
    "train": "negrec_fast.training",
    "evaluate": "negrec_fast.evaluation",
    "Recommender": "negrec_fast.recommend",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'negrec_fast' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:  # pragma: no cover
    from negrec_fast.data import SessionDataset, load_dataset, prepare
    from negrec_fast.errors import ConfigError, InputError, NegrecError
    from negrec_fast.evaluation import evaluate
    from negrec_fast.recommend import Recommender
    from negrec_fast.sampling import BatchLoader, NegativeSampler
    from negrec_fast.synthetic import generate_mssd
    from negrec_fast.training import train
