"""Shared fixtures: paths to the real sample data in ../shared/data, a small generated dataset
for training runs, and GPU skipping."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory) -> Path:
    """A prepared 500-session, 400-item generated MSSD log (shared by the training-run tests)."""
    from run_folders import generated_dataset

    return generated_dataset(tmp_path_factory.mktemp("synthetic"), n_sessions=500, n_items=400, seed=3)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of the licensed real samples (read in place, never copied into the repo)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def mssd_sample(shared_data: Path) -> Path:
    return shared_data / "mssd" / "log_mini_head201.csv"


@pytest.fixture(scope="session")
def lfm1k_sample(shared_data: Path) -> Path:
    return shared_data / "lastfm_1k" / "userid-timestamp-artid-artname-traid-traname.head5000.tsv"


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny tensors (more only add contention on a busy machine);
    use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
