"""Set-up hooks for the Ray workers of tests/test_raybatch.py (``worker_process_setup_hook``)."""

import os
import signal
from pathlib import Path


def register_fakes() -> None:
    """The test networks of tests/fakes.py, registered in the worker as in the test process."""
    import fakes  # noqa: F401


def die_once_mid_case() -> None:
    """Like :func:`register_fakes`; moreover the first worker to write a label map, after the
    case's .seg.nrrd is already written under its temporary name, is killed (SIGKILL: no clean-up
    runs), once per batch (the marker file ``$GTV_TEST_DIE_MARKER``)."""
    register_fakes()
    from GTVAutoSegLib import io

    marker = Path(os.environ["GTV_TEST_DIE_MARKER"])
    original = io.write_labelmap

    def write_labelmap(mask, path, *args, **kwargs):
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # exactly one worker wins
        except FileExistsError:
            return original(mask, path, *args, **kwargs)
        os.write(fd, f"{os.getpid()} {path}\n".encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)

    io.write_labelmap = write_labelmap
