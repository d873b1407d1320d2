"""Shared fixtures. Real data lives beside the project in ../shared/data and is never copied in."""

from pathlib import Path

import pytest
import torch

torch.set_flush_denormal(True)  # untrained nets on CPU slow down 2-4x on denormals
torch.set_num_threads(2)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; tests that need it skip with a clear reason when it is absent."""
    if not (SHARED_DATA / "README.md").exists():
        pytest.skip(f"real data not found at {SHARED_DATA} (see README: Data)")
    return SHARED_DATA
