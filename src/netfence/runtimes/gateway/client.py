"""`netfence run --gateway`: the fence from the shared gateway, then no netfence process.

The run claims the name and records itself as the workload's process, asks the daemon
for the fence (starting a daemon when none answers), then execs into the signal
forwarder that runs the sandbox: the same PID, so the MCP client that started it keeps
its child, its stdio (passed straight through) and gets the workload's exit status,
and the daemon, which holds a pidfd of this process, removes the fence when it exits.

Warm (a starter's worker does the run, handoff.py), the exec comes as soon as the daemon
says the workload's namespace is there, and bwrap makes the sandbox while the daemon
publishes the fence: bwrap holds the workload at a gate (--block-fd) that the worker
opens with the daemon's reply. A reply that is an error ends the held sandbox instead
(the forwarder's SIGUSR1) before the gate is ever closed: no workload runs without its
fence.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NoReturn

from netfence import handoff
from netfence.errors import NetfenceError, UsageError
from netfence.runtimes import control, state
from netfence.runtimes.base import WorkloadSpec
from netfence.runtimes.control import Message
from netfence.runtimes.detach import ReadyPipe, detach
from netfence.runtimes.gateway import LOG_NAME, SOCKET_NAME, gateway_dir
from netfence.runtimes.logs import tail
from netfence.runtimes.signals import STOP_SIGNALS, Interrupted, StopSignals
from netfence.runtimes.waiting import wait_for

log = logging.getLogger("netfence")

START_TIMEOUT = 20.0
# The daemon compiles the policy and waits for Envoy (and for starts that arrive with it).
ADD_TIMEOUT = 120.0
START_LOCK = "start.lock"
# How long a refused early run's forwarder gets to end its held sandbox, and then again
# once it has been killed.
REFUSE_WAIT_S = 5.0
INFO_NAME = "sandbox-info.json"


def unsupported(spec: WorkloadSpec) -> str | None:
    """Why this workload cannot use the gateway (it gets a fence of its own), or None."""
    return unsupported_for(spec.proxy, learn=spec.learn is not None)


def unsupported_for(proxy: str, learn: bool) -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if proxy != "envoy":
        return f"serves Envoy fences only (not --proxy {proxy})"
    if learn:
        return "has no learn mode"
    return None


def run(spec: WorkloadSpec, prepare: Callable[[WorkloadSpec], WorkloadSpec]) -> int:
    """Claim the name, then (detached or not) join the gateway and become the workload:
    this process, or in a starter's worker (handoff.py) the run's process it serves.
    `prepare` gives the spec with its checks done and its file-system view decided: it
    runs while the daemon builds the fence (a failed check then ends the run, and the
    daemon removes the fence once its process has exited)."""
    os.umask(0o077)
    worker = handoff.worker()
    if worker is not None and spec.detach:
        raise handoff.Fallback  # a detached run forks: the run's own process does it
    with StopSignals() as signals:
        state_dir = state.claim(spec.name, worker.pid if worker else None)
        if spec.detach:
            return detach(spec.name,
                          lambda ready: _join(spec, prepare, state_dir, ready, signals),
                          in_parent=signals.restore)
        return _join(spec, prepare, state_dir, ReadyPipe(), signals)


def _join(spec: WorkloadSpec, prepare: Callable[[WorkloadSpec], WorkloadSpec],
          state_dir: Path, ready: ReadyPipe, signals: StopSignals) -> int:
    from netfence.profile.loader import profile_data

    worker = handoff.worker()
    me = worker.pid if worker else os.getpid()
    record = state.WorkloadState(
        name=spec.name, runtime="namespace", proxy=spec.proxy, command=list(spec.command),
        supervisor_pid=me, supervisor_start=state.process_start_time(me) or "",
        started_at=time.time(), state_dir=str(state_dir), policy=spec.policy_source,
        gateway=True)
    if ready.detached:
        record.workload_log = str(state_dir / "workload.log")
    state.save(record)
    joined = False
    gate = _Gate()
    early = _Early(worker.pid if worker else None)
    try:
        signals.check()
        request = {"op": "add", "name": spec.name, "pid": me, "source": spec.policy_source,
                   "profile": profile_data(spec.profile),
                   "dns_upstream": str(spec.dns_upstream) if spec.dns_upstream else None,
                   "transport": spec.transport, "target_port": spec.target_port,
                   "port": spec.port}
        # The checks (one forks a process as the workload's user) in a thread while the
        # daemon works: about 7 ms of a warm start. Their error is raised once the daemon
        # has answered (leaving the block waits for them), so that the daemon never works
        # on a state directory removed meanwhile.
        with ThreadPoolExecutor(1, thread_name_prefix="netfence-prepare") as aside:
            prepared = aside.submit(prepare, spec)

            def placed(message: Message) -> None:
                # (waits for the checks, a few ms: their error leaves it to the late path)
                if worker is not None and prepared.exception() is None:
                    early.hand_over(lambda: _become_workload(
                        prepared.result(), state_dir, message, ready, signals, gate,
                        early=True))

            reply = ask(request, placed)
            joined = True
        spec = prepared.result()
        if early.done:
            early.release(gate)
        signals.check()
        gate.open()  # read by bwrap at once
        _become_workload(spec, state_dir, reply, ready, signals, gate)
    except BaseException as exc:
        if not isinstance(exc, Interrupted):  # (the run's process acts on a stop signal)
            early.refuse()
        ready.failed(exc)
        if not joined:  # else the daemon removes it all once this process has exited
            shutil.rmtree(state_dir, ignore_errors=True)
        if isinstance(exc, Interrupted):
            return exc.exit_code
        raise
    raise AssertionError("unreachable: the exec returns only by raising")


class _Gate:
    """A pipe bwrap reads one byte from before it runs the workload (--block-fd). Its end
    lets the workload run too: the write end stays open until the byte is written, or
    until the forwarder, and with it the sandbox, has gone (_Early.refuse)."""

    def __init__(self) -> None:
        read, self.write = os.pipe()
        self.read = _high(read)

    def open(self) -> None:
        with contextlib.suppress(OSError):  # nothing reads it any more: the run has ended
            os.write(self.write, b"\0")


class _Early:
    """A warm run's process exec'd into the forwarder before the fence is up, its sandbox
    held at the gate."""

    def __init__(self, run: int | None) -> None:
        self.run = run
        self.pidfd: int | None = None
        self.done = False

    def hand_over(self, become: Callable[[], None]) -> None:
        """`become` sends the run's process the exec; an error leaves it to the late path
        (the same steps once the daemon has answered, raising there)."""
        assert self.run is not None
        try:
            self.pidfd = os.pidfd_open(self.run)
            become()
        except (OSError, ValueError, NetfenceError):
            return
        self.done = True

    def release(self, gate: _Gate) -> NoReturn:
        """The fence is up: the workload runs, and this worker's part is over."""
        self.done = False
        gate.open()
        raise handoff.HandedOver

    def refuse(self) -> None:
        """The fence did not come up: the forwarder ends the held sandbox (exit status 1),
        then this returns; a forwarder that does not end within a while is killed (bwrap
        and the sandbox die with it)."""
        if not self.done or self.pidfd is None:
            return
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGUSR1)
            if not select.select([self.pidfd], [], [], REFUSE_WAIT_S)[0]:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
                select.select([self.pidfd], [], [], REFUSE_WAIT_S)
        self.done = False


def _become_workload(spec: WorkloadSpec, state_dir: Path, reply: Message, ready: ReadyPipe,
                     signals: StopSignals, gate: _Gate, early: bool = False) -> None:
    from netfence.runtimes.namespace import forwarder, sandbox
    from netfence.runtimes.namespace.launch import resolv_conf, workload_argv, workload_env

    user = sandbox.resolve_user(spec.user)
    env = workload_env(spec, user, {str(k): str(v) for k, v in reply.get("env", {}).items()})
    resolv_r = _high(resolv_conf())
    info_path = state_dir / INFO_NAME
    info_fd = _high(os.open(info_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    pinned = {path: _high(fd) for path, fd in sandbox.pin(spec.files).items()}
    argv = workload_argv(spec, Path(str(reply["netns"])), user, env, resolv_r, info_fd, pinned,
                         gate=gate.read)
    if ready.detached:
        out = os.open(state_dir / "workload.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        os.close(devnull)
    url = reply.get("url")
    if url and not ready.detached:  # detached: `netfence run` says it
        log.warning("%s: clients connect to %s", spec.name, url)
    ready.ok(str(url) if url else None)
    keep = (resolv_r, info_fd, gate.read, *pinned.values())
    if early:
        forwarder.hand_over_early(argv, info_path, keep)
        return
    # Blocked, a stop signal from here on stays pending across the exec and ends the
    # forwarder before the sandbox starts; one that came before is ours to act on.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    signals.check()
    forwarder.exec_into(argv, info_path, keep)


def _high(fd: int) -> int:
    """The descriptor moved to 10 or above: the forwarder (dash) passes stdin to the
    sandbox through one of 3-9, which the sandbox's descriptors must leave free."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


def ask(request: Message, placed: Callable[[Message], None] | None = None) -> Message:
    """A request to the gateway daemon, started first if none answers (or the one that
    answers is exiting). Asked at once: a warm start need not connect twice. `placed`
    gets what the daemon says once the workload's namespace is there (an add's)."""
    directory = gateway_dir()
    for attempt in range(4):
        if attempt:
            ensure_daemon(directory)
        try:
            reply = control.ask(directory, "the netfence gateway", request,
                                socket_name=SOCKET_NAME, timeout=ADD_TIMEOUT,
                                progress=placed)
        except UsageError:
            raise
        except NetfenceError as exc:
            if "takes no requests" not in exc.message:
                raise
            continue  # none runs, or it exited in between
        if not reply.get("retry"):
            return reply
    raise NetfenceError("the netfence gateway keeps exiting",
                        remedy=f"see {directory / LOG_NAME}")


def answers(directory: Path) -> bool:
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(directory / SOCKET_NAME))
        except BlockingIOError:
            return True  # listening, with a full backlog
        except OSError:
            return False
    return True


def _spawn(log_path: Path) -> int:
    """Start the daemon as nobody's child (this process becomes the workload's forwarder,
    which must not inherit it): its PID."""
    read_fd, write_fd = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            os.close(read_fd)
            os.setsid()
            with open(log_path, "ab") as out:
                os.fchmod(out.fileno(), 0o600)
                daemon = subprocess.Popen(
                    [sys.executable, "-m", "netfence", "gateway", "--on-demand"],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=out, close_fds=True)
            os.write(write_fd, str(daemon.pid).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    os.waitpid(middle, 0)
    with os.fdopen(read_fd, "rb") as fh:
        text = fh.read().decode()
    if not text.isdigit():
        raise NetfenceError("the netfence gateway could not be started")
    return int(text)


def ensure_daemon(directory: Path) -> None:
    """Start the daemon unless one answers: one starter at a time."""
    if answers(directory):
        return
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(directory / START_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if answers(directory):
            return
        log_path = directory / LOG_NAME
        pid = _spawn(log_path)

        def up() -> bool:
            if not state.is_running(pid, started):
                raise NetfenceError(f"the netfence gateway exited while starting: "
                                    f"{tail(log_path) or 'no output'}")
            return answers(directory)

        started = state.process_start_time(pid) or ""

        if not wait_for(up, START_TIMEOUT, 0.01):
            raise NetfenceError(f"the netfence gateway did not start within "
                                f"{START_TIMEOUT:.0f} s", remedy=f"see {log_path}")
    finally:
        os.close(fd)
