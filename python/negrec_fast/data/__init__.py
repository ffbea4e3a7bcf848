"""Processed session datasets: `prepare` turns raw logs into a dataset folder, `load_dataset`
memory-maps one (see docs/design.md, "Processed dataset folder")."""

from negrec_fast.data.dataset import SessionDataset, load_dataset
from negrec_fast.data.prepare import prepare

__all__ = ["prepare", "load_dataset", "SessionDataset"]
