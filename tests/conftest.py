"""Shared fixtures. Real data lives beside the project in ../shared/data and is never copied in."""

import os
import shutil
import tempfile
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


# ONNX exports (GTVAutoSegLib/onnxnets.py) of the test session go to a folder of their own, not the
# user's cache; subprocesses inherit it. Tests that look at the cache set their own.
_CACHE = tempfile.mkdtemp(prefix="gtvautoseg-test-cache-")
os.environ["GTVAUTOSEG_CACHE"] = _CACHE


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_CACHE, ignore_errors=True)
