"""Native libraries' chatter kept off the terminal (``native.quiet_stderr``), and our own lines not."""

import subprocess
import sys
import textwrap


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)


def test_the_clis_own_lines_are_not_caught_with_native_chatter():
    # What the CLI prints (an error while the next CT is read in a thread, a warning) goes to the
    # terminal; what native code writes to fd 2 meanwhile is still caught.
    done = _run("""
        import os, sys, threading
        from GTVAutoSegLib.native import python_stderr_apart, quiet_stderr
        inside, said = threading.Event(), threading.Event()
        def reader():
            with quiet_stderr("ITK"):
                inside.set()
                os.write(2, b"ITK chatter\\n")
                said.wait(10)
        with python_stderr_apart():
            t = threading.Thread(target=reader)
            t.start()
            inside.wait(10)
            print("gtvautoseg: error: one line", file=sys.stderr, flush=True)
            said.set()
            t.join()
        print("after", file=sys.stderr)
    """)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == ["gtvautoseg: error: one line", "after"]
