"""The namespace runtime: the workload in fresh network (and mount, PID, IPC) namespaces
whose only interface is loopback; the fence's listeners appear on that loopback (egress
proxy 127.0.0.1:3128, DNS 127.0.0.1:53); the proxies themselves run, and dial out, in the
host's namespace. No veth: nothing inside can reach a host service.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from netfence.backends import (
    DecisionRecord,
    Endpoint,
    NetworkProxy,
    Placement,
    ProcessSpec,
    ProxySetup,
    get_backend,
    write_setup,
)
from netfence.backends.dnsmasq import dns_setup
from netfence.errors import NetfenceError, PrivilegeError
from netfence.policy import compile_policy
from netfence.runtimes import state
from netfence.runtimes.base import Runtime, WorkloadSpec
from netfence.runtimes.namespace import netns, processes, sandbox
from netfence.runtimes.namespace.relay import Relays
from netfence.runtimes.resolver import host_resolver

log = logging.getLogger("netfence")

EGRESS_PORT = 3128
DNS_PORT = 53
LOOPBACK = "127.0.0.1"
STOP_GRACE = 10.0
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
# A minimal environment: the host's variables (tokens, cloud keys) stay out of the fence.
_PASSED_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TERM", "TZ")


class Interrupted(Exception):
    """A stop signal arrived before the workload started."""


def require_root() -> None:
    if os.geteuid() != 0:
        raise PrivilegeError(
            "netfence run needs root to create network namespaces; run it with sudo"
        )


def ns_name(name: str) -> str:
    return f"netfence-{name}"


def _url(spec: WorkloadSpec, port: int) -> str:
    path = {"sse": "/sse", "streamable-http": "/mcp"}.get(spec.transport, "/")
    return f"http://{LOOPBACK}:{port}{path}"


class Fence:
    """One workload's fence; every step registers its own undo on `self.undo`."""

    def __init__(self, spec: WorkloadSpec, backend: NetworkProxy, state_dir: Path) -> None:
        self.spec = spec
        self.backend = backend
        self.state_dir = state_dir
        self.undo = contextlib.ExitStack()
        self.url: str | None = None
        self.setup = ProxySetup(files=(), processes=())

    def start(self) -> None:
        spec = self.spec
        nsfile = netns.create(ns_name(spec.name))
        self.undo.callback(netns.remove, ns_name(spec.name))
        policy = compile_policy(spec.profile, netns.host_addresses())
        relays = Relays()
        self.undo.callback(relays.close)

        inside = Endpoint(LOOPBACK, EGRESS_PORT, nsfile)
        if self.backend.listens_in_netns:
            egress = inside
        else:
            egress = Endpoint(LOOPBACK, _free_port())
            relays.tcp(inside, egress)
        dns = Endpoint(LOOPBACK, _free_port())
        relays.udp(Endpoint(LOOPBACK, DNS_PORT, nsfile), dns)
        relays.tcp(Endpoint(LOOPBACK, DNS_PORT, nsfile), dns)

        ingress_listen = ingress_upstream = None
        if spec.transport != "stdio":
            assert spec.target_port is not None
            ingress_listen = Endpoint(LOOPBACK, spec.port or _free_port())
            ingress_upstream = relays.tcp(
                Endpoint(LOOPBACK, 0), Endpoint(LOOPBACK, spec.target_port, nsfile)
            )
            self.url = _url(spec, ingress_listen.port)

        placement = Placement(
            state_dir=self.state_dir,
            egress_listen=egress,
            workload_proxy=f"{LOOPBACK}:{EGRESS_PORT}",
            dns_listen=dns,
            upstream_resolver=spec.dns_upstream or host_resolver(),
            ingress_listen=ingress_listen,
            ingress_upstream=ingress_upstream,
            workload_name=spec.name,
        )
        self.setup = self.backend.setup(policy, placement) + dns_setup(policy, placement)
        write_setup(self.setup, self.state_dir)
        started: list[tuple[ProcessSpec, subprocess.Popen[bytes]]] = []
        self.undo.callback(processes.stop_all, started)
        for proc_spec in self.setup.processes:
            log.info("starting %s", proc_spec.name)
            started.append((proc_spec, processes.start(proc_spec)))
        # Relay threads start only after the last fork with a preexec hook.
        relays.start()
        for proc_spec, proc in started:
            processes.wait_ready(proc_spec, proc)

    def workload_env(self, user: sandbox.SandboxUser) -> dict[str, str]:
        env = {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env.update(HOME=user.home, USER=user.name, LOGNAME=user.name)
        env.update(self.spec.env)
        env.update(self.setup.env)
        return env

    def run_workload(self, stdio: tuple[int, int, int]) -> int:
        spec = self.spec
        user = sandbox.resolve_user(spec.user)
        resolv_r, resolv_w = os.pipe()
        os.write(resolv_w, f"nameserver {LOOPBACK}\noptions timeout:2 attempts:2\n".encode())
        os.close(resolv_w)
        info_r, info_w = os.pipe()
        argv = sandbox.sandbox_argv(
            netns.netns_path(ns_name(spec.name)), user, spec.command, resolv_r, info_w,
            hidden=(state.STATE_ROOT, netns.NETNS_DIR),
        )
        # Forward stop signals from before the sandbox exists: one that arrives while it
        # starts is delivered as soon as the workload's PID is known, never lost.
        forwarder = _Forwarder()
        previous = {s: signal.signal(s, forwarder) for s in _FORWARDED}
        try:
            proc = subprocess.Popen(
                argv, env=self.workload_env(user), pass_fds=(resolv_r, info_w),
                stdin=stdio[0], stdout=stdio[1], stderr=stdio[2], process_group=0,
            )
            os.close(resolv_r)
            os.close(info_w)
            init_pid = sandbox.read_child_pid(info_r)
            os.close(info_r)
            forwarder.attach(proc, init_pid)
            return forwarder.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def close(self) -> None:
        self.undo.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


class _Forwarder:
    """A signal handler passing stop signals to the command; kills the sandbox when the
    command is gone, already being stopped, or still running after the grace."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.init_pid: int | None = None
        self.pending: list[int] = []
        self.deadline: float | None = None

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        if self.proc is None:
            self.pending.append(signum)
        else:
            self._deliver(self.proc, signum)

    def _deliver(self, proc: subprocess.Popen[bytes], signum: int) -> None:
        targets = sandbox.workload_pids(self.init_pid) if self.init_pid else []
        for pid in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        if not targets or self.deadline is not None:
            _kill(proc)
        if self.deadline is None:
            self.deadline = time.monotonic() + STOP_GRACE

    def attach(self, proc: subprocess.Popen[bytes], init_pid: int | None) -> None:
        self.init_pid = init_pid
        self.proc = proc
        for signum in self.pending:
            self._deliver(proc, signum)

    def wait(self) -> int:
        """The sandbox's exit status, shell-style (128 + N for a signal)."""
        assert self.proc is not None
        while True:
            try:
                code = self.proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if self.deadline is not None and time.monotonic() > self.deadline:
                    _kill(self.proc)
        return code if code >= 0 else 128 - code


def _kill(proc: subprocess.Popen[bytes]) -> None:
    # bwrap runs with --die-with-parent semantics for its init: killing the bwrap we
    # started tears down the whole PID namespace.
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


def _raise_interrupted(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


class NamespaceRuntime(Runtime):
    name = "namespace"

    def run(self, spec: WorkloadSpec) -> int:
        require_root()
        # Logs and sockets the proxies create in the state dir are for root only.
        os.umask(0o077)
        sandbox.bwrap_path()
        sandbox.resolve_user(spec.user)  # a bad --user fails before anything is built
        backend = get_backend(spec.proxy)
        state.check_name(spec.name)
        _reap_stale()
        state_dir = state.claim(spec.name)
        if spec.detach:
            return self._detach(spec, backend, state_dir)
        return self._supervise(spec, backend, state_dir, None)

    def _detach(self, spec: WorkloadSpec, backend: NetworkProxy, state_dir: Path) -> int:
        ready_r, ready_w = os.pipe()
        if os.fork() == 0:
            os.close(ready_r)
            os.setsid()
            code = 1
            try:
                code = self._supervise(spec, backend, state_dir, ready_w)
            finally:
                os._exit(code)
        os.close(ready_w)
        with os.fdopen(ready_r, "rb") as fh:
            message = fh.read().decode(errors="replace")
        if not message.startswith("ok"):
            raise NetfenceError(message or f"workload {spec.name} failed to start")
        return 0

    def _supervise(
        self, spec: WorkloadSpec, backend: NetworkProxy, state_dir: Path, ready_fd: int | None
    ) -> int:
        previous = {s: signal.signal(s, _raise_interrupted) for s in _FORWARDED}
        fence = Fence(spec, backend, state_dir)
        stdio = (0, 1, 2)
        log_path = state_dir / "workload.log"
        try:
            fence.start()
            if ready_fd is not None:
                fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                devnull = os.open(os.devnull, os.O_RDONLY)
                stdio = (devnull, fd, fd)
                _redirect_own_stdio(fd)
            me = os.getpid()
            state.save(state.WorkloadState(
                name=spec.name, runtime=self.name, proxy=backend.name,
                command=list(spec.command), supervisor_pid=me,
                supervisor_start=state.process_start_time(me) or "", started_at=time.time(),
                state_dir=str(state_dir), url=fence.url,
                decision_logs=[str(p) for p in fence.setup.decision_logs],
                workload_log=str(log_path) if ready_fd is not None else None,
            ))
            if fence.url:
                log.warning("%s: clients connect to %s", spec.name, fence.url)
            if ready_fd is not None:
                os.write(ready_fd, f"ok {fence.url or ''}".encode())
                os.close(ready_fd)
                ready_fd = None
            # Signal handling passes to run_workload's forwarder: no gap in which a
            # SIGTERM would kill the supervisor before it tears the fence down.
            return fence.run_workload(stdio)
        except (NetfenceError, Interrupted) as exc:
            if ready_fd is not None:
                os.write(ready_fd, str(exc).encode())
                os.close(ready_fd)
            if isinstance(exc, Interrupted):
                return 130
            raise
        finally:
            with _ignoring_signals():
                fence.close()
                _remove_tree(state_dir)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def list(self) -> list[state.WorkloadState]:
        _reap_stale()
        return [s for s in state.all_states() if s.runtime == self.name and s.alive]

    def stop(self, name: str) -> None:
        require_root()
        current = state.load(state.check_name(name))
        if current is None:
            raise NetfenceError(f"no workload named {name!r}", remedy="see `netfence ps`")
        if current.alive:
            os.kill(current.supervisor_pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE + processes.STOP_GRACE * 3 + 5
            while current.alive and time.monotonic() < deadline:
                time.sleep(0.05)
            if current.alive:
                raise NetfenceError(f"{name} did not stop within the grace period")
        _cleanup(current.name)

    def decisions(self, name: str, follow: bool = False) -> Iterator[DecisionRecord]:
        current = state.load(state.check_name(name))
        if current is None:
            raise NetfenceError(f"no workload named {name!r}", remedy="see `netfence ps`")
        backend = get_backend(current.proxy)
        with contextlib.ExitStack() as stack:
            handles = [stack.enter_context(open(p, errors="replace"))
                       for p in current.decision_logs if Path(p).exists()]
            while True:
                got = False
                for fh in handles:
                    for line in fh:
                        record = backend.parse_decision(line)
                        if record is not None:
                            got = True
                            yield record
                if not follow or not current.alive:
                    return
                if not got:
                    time.sleep(0.2)


def _redirect_own_stdio(fd: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)


@contextlib.contextmanager
def _ignoring_signals() -> Iterator[None]:
    # A second Ctrl-C must not interrupt the teardown half way.
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in _FORWARDED}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _cleanup(name: str) -> None:
    netns.remove(ns_name(name))
    _remove_tree(state.state_dir(name))


def _reap_stale() -> None:
    """Remove what a killed supervisor left (its proxies died with it: PDEATHSIG)."""
    if os.geteuid() != 0:
        return
    for record in state.all_states():
        if record.runtime == NamespaceRuntime.name and not record.alive:
            _cleanup(record.name)
