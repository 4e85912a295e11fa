"""The workload's resident parent once the fence is up: `netfence run` execs (same PID: the
MCP client that started it keeps its child, its stdio and gets the exit status) into
forwarder.sh, run by dash, which runs the sandbox and passes stop signals into it as
runtime._Forwarder does: no Python process stays per workload.

bwrap 0.8 passes no signal on (a TERM to it kills the sandbox, the workload's handler never
runs), hence a forwarder at all; dash because it is small (about 150 KiB resident).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NoReturn

from netfence import handoff
from netfence.errors import NetfenceError
from netfence.keyring import leave_session_keyring
from netfence.runtimes.base import WORKLOAD_STOP_GRACE
from netfence.runtimes.namespace.sandbox import LAUNCH_ENV
from netfence.runtimes.netfilter import SYSTEM_PATH
from netfence.runtimes.signals import STOP_SIGNALS

SCRIPT = Path(__file__).resolve().with_name("forwarder.sh")
# Reset to their defaults for the forwarder (which traps the stop signals) and again for the
# sandbox: Python leaves PIPE and XFSZ ignored across an exec, and a shell's background job
# starts with INT and QUIT ignored. env also unblocks them: one that came, blocked, just
# before the exec is delivered then, and ends the forwarder before the sandbox starts.
DEFAULT_SIGNALS = "INT,QUIT,TERM,HUP,PIPE,XFSZ"
_REMEDIES = {"dash": "apt-get install dash", "env": "apt-get install coreutils",
             "sleep": "apt-get install coreutils", "setsid": "apt-get install util-linux"}


def _program(name: str) -> str:
    found = shutil.which(name, path=SYSTEM_PATH)
    if found is None:
        raise NetfenceError(f"{name} is not installed", remedy=_REMEDIES[name])
    return found


def forwarder_argv(sandbox: Sequence[str], info_file: Path,
                   grace: float = WORKLOAD_STOP_GRACE) -> list[str]:
    """The forwarder's argv around `sandbox` (nsenter or bwrap first, by absolute path),
    whose bwrap writes its --info-fd into `info_file` (a regular file: a pipe or FIFO
    bwrap never wrote would block the reader; read when a stop signal comes, so it must
    stay until the forwarder exits). Every program by absolute path, and the environment
    is LAUNCH_ENV whatever the caller's (env -i)."""
    if not SCRIPT.is_file():
        raise NetfenceError(f"{SCRIPT} is missing", remedy="reinstall netfence")
    if not sandbox or not os.path.isabs(sandbox[0]) or "=" in sandbox[0]:
        # env would take NAME=VALUE for a variable, and look a bare name up on PATH.
        raise ValueError(f"the sandbox's program must be an absolute path: {sandbox[:1]}")
    if not grace > 0:
        raise ValueError(f"grace must be positive: {grace}")
    for name in ("setsid", "sleep"):  # run by the script, found on LAUNCH_ENV's PATH
        _program(name)
    env = [f"{key}={value}" for key, value in LAUNCH_ENV.items()]
    return [_program("env"), "-i", f"--default-signal={DEFAULT_SIGNALS}", *env,
            _program("dash"), str(SCRIPT), str(info_file.absolute()), f"{grace:.3f}", "--",
            *sandbox]


def exec_into(sandbox: Sequence[str], info_file: Path, keep_fds: Iterable[int]) -> NoReturn:
    """Become the forwarder of `sandbox` (this PID, stdin/stdout/stderr as they are), with
    a session keyring of its own (keyring.py).

    Exactly `keep_fds` (and 0-2) are inherited: every other descriptor is made
    close-on-exec, none is closed here. The caller opened `info_file` (0600, new and empty,
    in its 0700 state dir) and names that descriptor in the sandbox argv's --info-fd and in
    `keep_fds`, with the resolv.conf pipe and the pinned grants; at least one of 3-9 must
    stay out of `keep_fds` (the forwarder passes stdin through it: dash names no other).

    Stop signals: block them (signal.pthread_sigmask) before the caller's last look at its
    StopSignals queue, then call this: one that comes afterwards stays pending across the
    exec and ends the forwarder (128+N) before the sandbox starts; none is lost. They are
    blocked here too, and unblocked again if the exec fails.

    In a starter's worker (handoff.py), the run's process is the one that execs (and
    leaves its keyring): it gets the argv and these descriptors."""
    argv, keep = _checked(sandbox, info_file, keep_fds)
    worker = handoff.worker()
    if worker is not None:
        worker.hand_over(argv, LAUNCH_ENV, keep)
    leave_session_keyring()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    changed: list[tuple[int, bool]] = []
    try:
        changed = handoff.inherit_only(keep)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a closed or broken stream
                stream.flush()
        os.execve(argv[0], argv, LAUNCH_ENV)
    except BaseException:
        for fd, inheritable in changed:
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, inheritable)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        raise


def hand_over_early(sandbox: Sequence[str], info_file: Path, keep_fds: Iterable[int]) -> None:
    """In a starter's worker: exec_into for the run's process, this worker going on (the
    sandbox held at its gate, which this worker opens once the fence is up). SIGUSR1 to
    the forwarder ends the held sandbox, and the forwarder with status 1 (forwarder.sh)."""
    worker = handoff.worker()
    if worker is None:
        raise ValueError("only a starter's worker hands a run over early")
    argv, keep = _checked(sandbox, info_file, keep_fds)
    worker.send_exec(argv, LAUNCH_ENV, keep)


def _checked(sandbox: Sequence[str], info_file: Path, keep_fds: Iterable[int]
             ) -> tuple[list[str], list[int]]:
    """The forwarder's argv and the descriptors it keeps, once they and the info file are
    as exec_into needs them."""
    keep = sorted(set(keep_fds))
    if not set(keep).isdisjoint((0, 1, 2)):
        raise ValueError(f"stdin, stdout and stderr are inherited anyway: {keep}")
    if set(keep).issuperset(range(3, 10)):
        raise NetfenceError("no descriptor of 3-9 is left for the forwarder's stdin "
                            f"(the sandbox keeps {keep})",
                            remedy="move some to 10 or above (fcntl F_DUPFD_CLOEXEC)")
    missing = set(keep) - set(_open_fds())
    if missing:
        raise ValueError(f"descriptors to keep are not open: {sorted(missing)}")
    if info_file.stat().st_size:
        # An earlier run's child-pid: the forwarder would find it is not bwrap's child, and
        # could only kill this sandbox, never stop it gracefully.
        raise NetfenceError(f"{info_file} is not empty", remedy="open it with O_TRUNC")
    return forwarder_argv(sandbox, info_file), keep


def _open_fds() -> list[int]:
    return [int(name) for name in os.listdir("/proc/self/fd")]
