"""Stopping the processes a test started: by the PID it holds, never by name."""

from __future__ import annotations

import subprocess


def stop(*procs: subprocess.Popen[bytes], timeout: float = 5) -> None:
    """SIGTERM to each still running, then wait; SIGKILL whichever outlives `timeout`."""
    running = [p for p in procs if p.poll() is None]
    for proc in running:
        proc.terminate()
    for proc in running:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
