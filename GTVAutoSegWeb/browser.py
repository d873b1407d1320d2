"""Debian's chromium as Playwright drives it here (the browser tests and the README's screenshot).

Playwright's own browser download cannot be reached from our machines, so it launches the system
chromium (``scripts/setup_system.sh browser`` installs it) with ``executable_path``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

CHROMIUM = "/usr/bin/chromium"


def browser_args() -> list[str]:
    """Flags for Debian's chromium here: no sandbox as root, no GPU, and none of its background
    connections (a closed network refuses them, many at a time)."""
    return ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def wait_for(condition, timeout_s: float, what: str, interval: float = 0.25) -> None:
    """Poll ``condition`` until it is true; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a ``gtvautoseg serve`` started by a test or script)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_server(process: subprocess.Popen, timeout_s: float = 60) -> None:
    """Stop a ``gtvautoseg serve`` started with ``start_new_session=True``: Ctrl+C to its process
    group (it cleans up its uploads), SIGKILL if it is still there after ``timeout_s``."""
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
