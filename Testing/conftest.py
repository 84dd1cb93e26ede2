"""Shared fixtures: paths to the real CT scans in ../shared/data (skipped when absent)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# training/ is a folder of scripts and a helper package, importable in tests.
sys.path.insert(0, str(REPO / "training"))

SHARED_DATA = Path(os.environ.get("LIVERTUMORSEG_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of small real CT scans; tests using it skip with a reason when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real CT data folder not found at {SHARED_DATA} (clone shared/ beside the repo)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _few_threads():
    """Keep torch to the machine's cores so parallel CI jobs do not oversubscribe."""
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    yield
