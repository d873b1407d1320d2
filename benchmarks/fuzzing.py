"""What the atheris fuzzers here share: only the library instrumented, an empty corpus folder seeded
with valid inputs, then libFuzzer's loop over ``check_one``."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path


def run(check_one, seeds, modules: list[str]) -> None:
    """Fuzz ``check_one`` (one input's bytes; an exception is a finding) from ``seeds()`` with the
    command line's libFuzzer options; ``modules``: the library modules to instrument."""
    import atheris

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # Only the library is instrumented; torch, pydicom, ITK and the rest are imported plainly (fast start).
    with atheris.instrument_imports(include=["GTVAutoSegLib"]):
        for module in modules:
            importlib.import_module(module)
    corpus = [a for a in sys.argv[1:] if not a.startswith("-")]
    if corpus and not any(any(Path(c).iterdir()) for c in corpus if Path(c).is_dir()):  # empty: seed it
        for k, seed in enumerate(seeds()):
            (Path(corpus[0]) / f"seed{k}").write_bytes(seed)
    atheris.Setup(sys.argv, check_one)
    atheris.Fuzz()


def seeded_run(script: Path, corpus: Path, runs: int, rss_limit_mb: int, timeout_s: float):
    """One fuzzer (``script``) run as CI runs it: a fixed seed, number of runs and hash seed (a slow
    machine runs the same inputs as a fast one), ``corpus`` an empty folder it seeds. Returns the
    finished process (libFuzzer reports on stderr)."""
    import subprocess

    return subprocess.run([sys.executable, str(script), f"-runs={runs}", "-seed=1", f"-rss_limit_mb={rss_limit_mb}",
                           "-timeout=20", str(corpus)], capture_output=True, text=True, timeout=timeout_s,
                          cwd=corpus.parent, env={**os.environ, "PYTHONHASHSEED": "0"})
