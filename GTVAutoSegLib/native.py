"""Keep the chatter of native libraries (ITK, GDCM, VTK) off the user's terminal.

ITK and GDCM print warnings straight to the C++ ``std::cerr`` (file descriptor 2), around Python's
``sys.stderr``: a truncated MHA gives two or three lines of ITK text before our one-line error, and a
batch log collects dozens of VTK lines. The promise of one line on stderr for a refused input holds
only if file descriptor 2 itself is redirected while native code runs; what it caught is logged at
debug level, so ``--debug``-style logging can still show it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
from typing import Iterator

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_depth = 0


@contextlib.contextmanager
def quiet_stderr(what: str = "native code") -> Iterator[None]:
    """Redirect file descriptor 2 to a temporary file for the block; log what was caught.

    Nested uses redirect once. Python's own ``sys.stderr`` is flushed first so nothing of ours is
    swallowed. If the descriptor cannot be redirected (no fd 2, as under some GUIs), the block runs
    unchanged.
    """
    global _depth
    with _lock:
        _depth += 1
        outer = _depth == 1
    if not outer:
        try:
            yield
        finally:
            with _lock:
                _depth -= 1
        return
    saved = sink = None
    try:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
            sink = tempfile.TemporaryFile()
            os.dup2(sink.fileno(), 2)
        except (OSError, ValueError, AttributeError):
            saved = None
        yield
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
        if sink is not None:
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace").strip()
            sink.close()
            if text:
                logger.debug("%s wrote to stderr: %s", what, text)
        with _lock:
            _depth -= 1


@contextlib.contextmanager
def python_stderr_apart() -> Iterator[None]:
    """Python's ``sys.stderr`` on a duplicate of file descriptor 2 for the block, so that what we
    print (errors, warnings, progress) reaches the terminal even while another thread has fd 2
    itself redirected by :func:`quiet_stderr` (a CT read ahead while the model loads, the next case
    of a batch read while this one's error is printed). Native code still writes fd 2 and is
    caught. Nothing changes when ``sys.stderr`` is not fd 2 (a test's capture, a GUI)."""
    old = sys.stderr
    try:
        fd = old.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    if fd != 2:
        yield
        return
    old.flush()
    new = os.fdopen(os.dup(2), "w", buffering=1, encoding=getattr(old, "encoding", None) or "utf-8",
                    errors=getattr(old, "errors", None) or "backslashreplace")
    sys.stderr = new
    try:
        yield
    finally:
        try:
            new.flush()
        finally:
            sys.stderr = old
            new.close()
