"""Start, watch and stop the fence's own processes (never anything we did not start)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Collection, Mapping

from netfence.backends import Endpoint, ProcessSpec
from netfence.errors import NetfenceError
from netfence.runtimes.logs import tail
from netfence.runtimes.namespace import bindshim
from netfence.runtimes.netfilter import program_path
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


def start(spec: ProcessSpec, handed: Mapping[Endpoint, socket.socket] | None = None
          ) -> subprocess.Popen[bytes]:
    """Start `spec`'s process. Of `handed` (listening sockets by the address a process
    binds for them: bindshim.py), it inherits those for its ready endpoints."""
    search = program_path()  # for a wrapper's programs too (Squid's runs `squid`)
    program = shutil.which(spec.argv[0], path=search) or spec.argv[0]
    env = {**os.environ, "PATH": search}
    given = handed_to(spec, handed or {})
    if given:
        env |= bindshim.environment(given)
    with open(spec.stdout, "ab") as out, open(spec.stderr, "ab") as err:
        # The hook makes each start a full fork of the supervisor (about 2.5 ms, where
        # Python uses vfork without one; 10 ms of the gateway daemon's), and is kept: the
        # death signal is armed before Popen returns (setpriv would arm it after, leaving a
        # killed supervisor's proxy running and not yet recorded). Not for a process
        # whose drop of root would clear it (its owner's record lists it: kill_orphans).
        hook = None if spec.drops_root and os.geteuid() == 0 else _die_with_supervisor
        try:
            return subprocess.Popen(
                (program, *spec.argv[1:]), env=env,
                stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=True, preexec_fn=hook, close_fds=True,
                pass_fds=tuple(sock.fileno() for sock in given.values()),
            )
        except FileNotFoundError:
            raise NetfenceError(f"{spec.name}: {spec.argv[0]} is not installed",
                                remedy="run `netfence doctor`") from None


def handed_to(spec: ProcessSpec, handed: Mapping[Endpoint, socket.socket]
              ) -> dict[Endpoint, socket.socket]:
    """Those of `handed` that are `spec`'s process's: for its ready endpoints."""
    return {at: sock for at, sock in handed.items() if at in spec.ready}


def check_running(spec: ProcessSpec, proc: subprocess.Popen[bytes]) -> None:
    """Raises, with what it printed, if the process has exited."""
    if proc.poll() is not None:
        raise NetfenceError(
            f"{spec.name} exited with status {proc.returncode} while starting: "
            f"{tail(spec.stderr) or tail(spec.stdout) or 'no output'}"
        )


def wait_ready(spec: ProcessSpec, proc: subprocess.Popen[bytes],
               check: Callable[[], None] = lambda: None, timeout: float = READY_TIMEOUT,
               handed: Collection[Endpoint] = ()) -> None:
    """Until every ready endpoint accepts connections; a process that exits is an error.
    `check` runs each round: it raises to give up (a stop signal came). A socket handed
    to the process listens from the start: whether the process serves it is the
    backend's to say (NetworkProxy.settled)."""
    pending = [at for at in spec.ready if at not in handed]

    def listening() -> bool:
        check_running(spec, proc)
        pending[:] = [e for e in pending if not accepts(e, e.netns)]
        return not pending

    if not wait_for(listening, timeout, READY_INTERVAL, check):
        raise NetfenceError(f"{spec.name} did not start listening on "
                            f"{', '.join(map(str, pending))} within {timeout:.0f} s")


_SYS_PROCESS_MADVISE = 440  # x86-64 and arm64 alike
_MADV_PAGEOUT = 21


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("length", ctypes.c_size_t)]


def page_out(pid: int) -> None:
    """Reclaim the pages of `pid`'s read-only file mappings (its program text and
    libraries) that it alone maps: a proxy touches most of its binary while starting
    (Envoy: about 46 MiB of its 60, registering its extensions) and little of it after.
    Only clean pages, never written: nothing goes to swap, and a page used again is read
    back from the file (process_madvise MADV_PAGEOUT, Linux 5.10). Best effort."""
    ranges: list[tuple[int, int]] = []
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if (len(fields) > 5 and "w" not in fields[1] and fields[5].startswith("/")
                        and not fields[5].rstrip().endswith("(deleted)")):
                    low, high = (int(x, 16) for x in fields[0].split("-"))
                    ranges.append((low, high - low))
        fd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        for first in range(0, len(ranges), 512):  # IOV_MAX is 1024
            chunk = ranges[first:first + 512]
            vectors = (_IoVec * len(chunk))(*(_IoVec(a, n) for a, n in chunk))
            _libc.syscall(_SYS_PROCESS_MADVISE, fd, vectors, len(chunk), _MADV_PAGEOUT, 0)
    finally:
        os.close(fd)


class IdleWatch:
    """Pages the fence's processes out (page_out), then calls `then`, once, when they
    have used next to no CPU for IDLE_SECONDS: a long-running workload's idle fence holds
    what it uses, while a busy fence, whose pages are in use, is left alone (a page-out
    under load would stall it on reading them back), and a short run ends before it
    costs anything."""

    IDLE_SECONDS = 2.0
    IDLE_TICKS = 2  # clock ticks (10 ms each) of CPU in that time: timers, not traffic

    def __init__(self, procs: list[subprocess.Popen[bytes]],
                 then: Callable[[], None] = lambda: None) -> None:
        self.procs = procs
        self.then = then
        self.since = time.monotonic()
        self.cpu = self._cpu()
        self.done = False

    def _cpu(self) -> int:
        total = 0
        for proc in self.procs:
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open(f"/proc/{proc.pid}/stat", encoding="ascii") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
        return total

    def tick(self) -> None:
        if self.done or time.monotonic() - self.since < self.IDLE_SECONDS:
            return
        cpu = self._cpu()
        if cpu - self.cpu <= self.IDLE_TICKS:
            for proc in self.procs:
                if proc.poll() is None:
                    page_out(proc.pid)
            self.then()
            self.done = True
        self.since, self.cpu = time.monotonic(), cpu


def stop_all(started: list[tuple[ProcessSpec, subprocess.Popen[bytes]]],
             grace: float = FENCE_STOP_GRACE, held: frozenset[int] = frozenset()) -> None:
    """Ask every process to stop at once, then kill what is still running after the grace.
    `held`: the inodes of sockets handed to them, which they keep to the end (see _idle)."""
    for spec, proc in started:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(spec.stop_signal)
    begun = time.monotonic()
    for spec, proc in started:
        own = grace if spec.stop_grace is None else min(grace, spec.stop_grace)
        # One that may be killed after its grace may be killed as soon as it is idle.
        idle = spec.stop_grace is not None and _until_idle(proc, begun + own, held)
        if idle or not exits_within(proc, max(0.0, begun + own - time.monotonic())):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        proc.wait()


def exits_within(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Whether `proc` exits within `timeout` seconds, seen the moment it does (a pidfd);
    Popen.wait(timeout) polls at growing intervals, up to 50 ms late."""
    if proc.poll() is not None:
        return True
    try:
        fd = os.pidfd_open(proc.pid)  # not reaped yet (poll said so): still our child
    except OSError:  # no pidfds (Linux < 5.3)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


# Twice in a row, this far apart: a process that sleeps between two steps of its work
# (it would be runnable again at once) is not taken for idle.
IDLE_SAMPLES = 2
IDLE_INTERVAL = 0.002


def _until_idle(proc: subprocess.Popen[bytes], deadline: float,
                held: frozenset[int] = frozenset()) -> bool:
    """Whether `proc` became idle (see _idle) before `deadline`; False once it exited."""
    seen = 0
    while proc.poll() is None and time.monotonic() < deadline:
        seen = seen + 1 if _idle(proc.pid, held) else 0
        if seen == IDLE_SAMPLES:
            return True
        time.sleep(IDLE_INTERVAL)
    return False


def _idle(pid: int, held: frozenset[int] = frozenset()) -> bool:
    """Whether `pid` sleeps holding no TCP socket: it has taken its stop signal (closed
    its listeners) and every connection to it has ended. Squid logs a transaction within
    the event-loop round that ends it, before it sleeps again (it closes a socket only
    after that socket's close handlers ran), so it has nothing left to write. A handed
    listening socket (inode in `held`) stays open in it to the end and is not counted:
    with no connection left, nothing is left to log whether or not it has stopped."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            if stat.read().rsplit(")", 1)[1].split()[0] != "S":
                return False
        fds = os.listdir(f"/proc/{pid}/fd")
    except (OSError, IndexError):
        return False
    for fd in fds:
        try:
            # sockfs names each socket's protocol: TCP, TCPv6, UDP, UNIX...
            kind = os.getxattr(f"/proc/{pid}/fd/{fd}", "system.sockprotoname")
        except OSError:
            continue  # not a socket (or closed meanwhile)
        if kind.rstrip(b"\0").startswith(b"TCP") and not (
                held and bindshim.inode_at(f"/proc/{pid}/fd/{fd}") in held):
            return False
    return True
