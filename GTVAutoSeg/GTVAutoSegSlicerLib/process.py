"""The inference subprocess: started in its own process group, read line by line, ended as a tree.

Inference runs in a separate Python process so that the Slicer GUI stays responsive and a crash in
torch or the GPU driver cannot take Slicer down. Two reader threads drain stdout and stderr into a
queue (a full pipe would block the child); the owner calls ``readLines`` from its own thread (a
Qt timer in the widget, a sleep loop in scripts), so MRML is only ever touched from that thread.

Nothing here imports Qt or MRML.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

PROGRESS_PREFIX = "PROGRESS "


@dataclass
class Progress:
    """One ``PROGRESS <percent> <stage>`` line of the CLI."""

    percent: float
    stage: str


def parseProgressLine(line: str) -> Progress | None:
    """``"PROGRESS 45.0 classifier"`` -> ``Progress(45.0, "classifier")``; anything else -> None."""
    if not line.startswith(PROGRESS_PREFIX):
        return None
    parts = line[len(PROGRESS_PREFIX):].split(maxsplit=1)
    try:
        percent = float(parts[0])
    except (IndexError, ValueError):
        return None
    return Progress(max(0.0, min(100.0, percent)), parts[1].strip() if len(parts) > 1 else "")


def pythonExecutable() -> str:
    """The Python that runs the CLI.

    Inside Slicer ``sys.executable`` is the application's own interpreter binary, which needs
    Slicer's launcher environment; ``PythonSlicer`` is the launcher-wrapped interpreter meant for
    subprocesses. Outside Slicer (tests, plain Python with slicer-core) it is ``sys.executable``.
    """
    try:
        import slicer

        inSlicer = hasattr(slicer, "app")
    except ImportError:
        inSlicer = False
    if inSlicer:
        name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
        found = shutil.which("PythonSlicer")
        if found:
            return found
        for folder in (Path(sys.executable).parent, Path(sys.executable).parent.parent / "bin"):
            if (folder / name).is_file():
                return str(folder / name)
    return sys.executable


class ProcessProtocol(Protocol):
    """What the logic needs from a running inference process (tests may pass a fake)."""

    pid: int

    def readLines(self) -> list[tuple[str, str]]: ...

    def returnCode(self) -> int | None: ...

    def terminateTree(self, gracePeriod: float = 3.0) -> None: ...

    def stderrTail(self) -> list[str]: ...


class InferenceProcess:
    """A child process whose output is read by threads and whose whole tree can be ended.

    Args:
        args: the command line.
        env: the child's environment (None inherits ours).
        cwd: the child's working folder.
        stderrLines: how many of the last stderr lines to keep for error messages.
    """

    def __init__(self, args: list[str], env: dict[str, str] | None = None, cwd: str | None = None,
                 stderrLines: int = 50):
        self.args = list(args)
        self._lines: queue.Queue[tuple[str, str]] = queue.Queue()
        self._stderrTail: deque[str] = deque(maxlen=stderrLines)
        kwargs: dict = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            # Its own session and process group: ending the group ends whatever the CLI spawned
            # (data loader workers, compilers) without touching Slicer.
            kwargs["start_new_session"] = True
        self._popen = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            env=env, cwd=cwd, text=True, encoding="utf-8", errors="replace", bufsize=1, **kwargs,
        )
        self.pid = self._popen.pid
        self._readers = [
            threading.Thread(target=self._read, args=(self._popen.stdout, "stdout"), daemon=True),
            threading.Thread(target=self._read, args=(self._popen.stderr, "stderr"), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, name: str) -> None:
        for line in iter(stream.readline, ""):
            line = line.rstrip("\r\n")
            if name == "stderr":
                self._stderrTail.append(line)
            self._lines.put((name, line))
        stream.close()

    def readLines(self) -> list[tuple[str, str]]:
        """All ``(stream, line)`` pairs read since the last call, without blocking."""
        out = []
        while True:
            try:
                out.append(self._lines.get_nowait())
            except queue.Empty:
                return out

    def returnCode(self) -> int | None:
        """The exit status once the process has ended and its output has been read; else None."""
        code = self._popen.poll()
        if code is None:
            return None
        for reader in self._readers:
            reader.join(timeout=2.0)  # the pipes close when the process ends; this is quick
        return code

    def wait(self, timeout: float | None = None) -> int:
        code = self._popen.wait(timeout)
        for reader in self._readers:
            reader.join(timeout=2.0)
        return code

    def stderrTail(self) -> list[str]:
        return list(self._stderrTail)

    def terminateTree(self, gracePeriod: float = 3.0) -> None:
        """End the process and everything it started; return once it has exited.

        POSIX: SIGTERM to the process group, then SIGKILL after ``gracePeriod`` seconds.
        Windows: ``taskkill /T /F`` (the tree by parent PID).
        """
        if self._popen.poll() is not None:
            self._killGroupLeftovers()
            return
        if os.name == "nt":
            subprocess.run(["taskkill", "/PID", str(self.pid), "/T", "/F"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        else:
            self._signalGroup(signal.SIGTERM)
            deadline = time.monotonic() + gracePeriod
            while self._popen.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            self._signalGroup(signal.SIGKILL)
        self.wait()
        self._killGroupLeftovers()

    def _signalGroup(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)  # the group id is the child's pid (start_new_session)
        except (ProcessLookupError, PermissionError):
            pass

    def _killGroupLeftovers(self) -> None:
        # A grandchild may outlive the leader; the group id stays valid while any member lives.
        if os.name != "nt":
            self._signalGroup(signal.SIGKILL)
