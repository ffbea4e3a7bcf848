"""Shared fixtures: paths to the real sample data in ../shared/data, and GPU skipping."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


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
