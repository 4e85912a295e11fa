"""Start, watch and stop the fence's own processes (never anything we did not start)."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
import time
from collections.abc import Callable

from netfence.backends import ProcessSpec
from netfence.errors import NetfenceError
from netfence.runtimes.logs import tail
from netfence.runtimes.netns import accepts
from netfence.runtimes.waiting import wait_for

PR_SET_PDEATHSIG = 1
# How long a fence process has to exit after its stop signal, before SIGKILL.
FENCE_STOP_GRACE = 3.0
READY_TIMEOUT = 15.0
# Each round is a few syscalls; waiting longer between them costs every run.
READY_INTERVAL = 0.005
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_supervisor() -> None:
    # If the supervisor is killed outright, its proxies must not outlive it.
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def start(spec: ProcessSpec) -> subprocess.Popen[bytes]:
    with open(spec.stdout, "ab") as out, open(spec.stderr, "ab") as err:
        try:
            return subprocess.Popen(
                spec.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=True, preexec_fn=_die_with_supervisor, close_fds=True,
            )
        except FileNotFoundError:
            raise NetfenceError(f"{spec.name}: {spec.argv[0]} is not installed",
                                remedy="run `netfence doctor`") from None


def wait_ready(spec: ProcessSpec, proc: subprocess.Popen[bytes],
               check: Callable[[], None] = lambda: None, timeout: float = READY_TIMEOUT) -> None:
    """Until every ready endpoint accepts connections; a process that exits is an error.
    `check` runs each round: it raises to give up (a stop signal came)."""
    pending = list(spec.ready)

    def listening() -> bool:
        if proc.poll() is not None:
            raise NetfenceError(
                f"{spec.name} exited with status {proc.returncode} while starting: "
                f"{tail(spec.stderr) or tail(spec.stdout) or 'no output'}"
            )
        pending[:] = [e for e in pending if not accepts(e, e.netns)]
        return not pending

    if not wait_for(listening, timeout, READY_INTERVAL, check):
        raise NetfenceError(f"{spec.name} did not start listening on "
                            f"{', '.join(map(str, pending))} within {timeout:.0f} s")


def stop_all(started: list[tuple[ProcessSpec, subprocess.Popen[bytes]]],
             grace: float = FENCE_STOP_GRACE) -> None:
    """Ask every process to stop at once, then kill what is still running after the grace."""
    for spec, proc in started:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(spec.stop_signal)
    begun = time.monotonic()
    for spec, proc in started:
        own = grace if spec.stop_grace is None else min(grace, spec.stop_grace)
        try:
            proc.wait(max(0.0, begun + own - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
