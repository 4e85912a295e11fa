"""The namespace runtime: the workload in fresh network (and mount, PID, IPC) namespaces
whose only interface is loopback; the fence's listeners appear on that loopback (egress
proxy 127.0.0.1:3128, DNS 127.0.0.1:53); the proxies themselves run, and dial out, in the
host's namespace. No veth: nothing inside can reach a host service.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

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
from netfence.policy.learn import Used, learned_profile, summary
from netfence.profile import Profile
from netfence.runtimes import netns, state
from netfence.runtimes.base import ProgressHook, Runtime, WorkloadSpec, read_decisions
from netfence.runtimes.caller import caller_permissions
from netfence.runtimes.detach import ReadyPipe, detach, redirect_own_stdio
from netfence.runtimes.namespace import processes, sandbox
from netfence.runtimes.namespace.relay import Relays
from netfence.runtimes.resolver import host_resolver
from netfence.runtimes.signals import Interrupted, StopSignals

log = logging.getLogger("netfence")

EGRESS_PORT = 3128
DNS_PORT = 53
LOOPBACK = "127.0.0.1"
STOP_GRACE = 10.0
# A minimal environment: the host's variables (tokens, cloud keys) stay out of the fence.
_PASSED_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TERM", "TZ")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


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

    def __init__(self, spec: WorkloadSpec, backend: NetworkProxy, record: state.WorkloadState,
                 signals: StopSignals, report: ProgressHook | None = None) -> None:
        self.spec = spec
        self.record = record
        self.signals = signals
        self.report: ProgressHook = report or (lambda _step: None)
        self.backend = backend
        self.state_dir = Path(record.state_dir)
        self.undo = contextlib.ExitStack()
        self.url: str | None = None
        self.setup = ProxySetup(files=(), processes=())

    def start(self) -> None:
        spec = self.spec
        self.report("creating the network namespace")
        nsfile = netns.create(ns_name(spec.name))
        self.undo.callback(netns.remove, ns_name(spec.name))
        self.signals.check()
        policy = compile_policy(spec.profile, netns.host_addresses(),
                                learn=spec.learn is not None)
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
            self.signals.check()
            log.info("starting %s", proc_spec.name)
            self.report(f"starting {proc_spec.name}")
            started.append((proc_spec, processes.start(proc_spec)))
            self._own(started[-1][1].pid)
        # Relay threads start only after the last fork with a preexec hook.
        relays.start()
        for proc_spec, proc in started:
            self.report(f"waiting for {proc_spec.name}")
            processes.wait_ready(proc_spec, proc, self.signals.check)

    def workload_env(self, user: sandbox.SandboxUser) -> dict[str, str]:
        env = {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}
        env.setdefault("PATH", DEFAULT_PATH)
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
            netns.netns_path(ns_name(spec.name)), user, spec.command, self.workload_env(user),
            resolv_r, info_w, hidden=(state.STATE_ROOT, netns.NETNS_DIR), files=spec.files,
        )
        self.signals.check()
        # A signal that arrives from here on waits in the queue until the forwarder
        # passes it to the workload.
        proc = subprocess.Popen(
            argv, env=sandbox.LAUNCH_ENV, pass_fds=(resolv_r, info_w),
            stdin=stdio[0], stdout=stdio[1], stderr=stdio[2], process_group=0,
        )
        os.close(resolv_r)
        os.close(info_w)
        init_pid = sandbox.read_child_pid(info_r)
        os.close(info_r)
        self._own(proc.pid, *([init_pid] if init_pid else []))
        return _Forwarder(proc, init_pid, self.signals).wait()

    def _own(self, *pids: int) -> None:
        for pid in pids:
            self.record.own(pid)
        state.save(self.record)

    def close(self) -> None:
        self.undo.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


class _Forwarder:
    """Passes stop signals to the command; kills the sandbox when the command is gone or
    not yet started, already being stopped, or still running after the grace."""

    def __init__(self, proc: subprocess.Popen[bytes], init_pid: int | None,
                 signals: StopSignals) -> None:
        self.proc = proc
        self.init_pid = init_pid
        self.init_fd = sandbox.open_init(init_pid, proc.pid)
        # Readable the moment the sandbox exits: no polling delay added to every run.
        self.exit_fd = os.pidfd_open(proc.pid)
        self.signals = signals
        self.deadline: float | None = None
        self.killed_for: int | None = None

    def _deliver(self, signum: int) -> None:
        targets = sandbox.workload_pids(self.init_pid) if self.init_pid else []
        for pid in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        if not targets or self.deadline is not None:
            self.killed_for = self.killed_for or signum
            self._kill()
        if self.deadline is None:
            self.deadline = time.monotonic() + STOP_GRACE

    def _kill(self) -> None:
        # The init first: bwrap's --die-with-parent is not armed yet in a sandbox that is
        # still starting, and whatever survived would keep our stdout open.
        if self.init_fd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.init_fd, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()

    def wait(self) -> int:
        """The sandbox's exit status, shell-style (128 + N for a signal)."""
        try:
            while True:
                # A signal from before the sandbox existed is delivered on the first round.
                for signum in self.signals.take():
                    self._deliver(signum)
                exited, _, _ = select.select([self.exit_fd], [], [], 0.1)
                if exited:
                    code = self.proc.wait()
                    break
                if self.deadline is not None and time.monotonic() > self.deadline:
                    self._kill()
        finally:
            os.close(self.exit_fd)
            if self.init_fd is not None:
                os.close(self.init_fd)
        if code == -signal.SIGKILL and self.killed_for is not None:
            return 128 + self.killed_for  # stopped on that signal's account
        return code if code >= 0 else 128 - code


class NamespaceRuntime(Runtime):
    name = "namespace"

    def run(self, spec: WorkloadSpec) -> int:
        require_root()
        # Logs and sockets the proxies create in the state dir are for root only.
        os.umask(0o077)
        sandbox.bwrap_path()
        user = sandbox.resolve_user(spec.user)  # a bad --user fails before anything is built
        path = spec.env.get("PATH") or os.environ.get("PATH") or DEFAULT_PATH
        spec = sandbox.prepare(spec, user, path)  # the file-system view, checked
        backend = get_backend(spec.proxy)
        state.check_name(spec.name)
        _reap_stale()
        state_dir = state.claim(spec.name)
        if spec.detach:
            return detach(spec.name, lambda ready: self._supervise(spec, backend, state_dir, ready))
        return self._supervise(spec, backend, state_dir, ReadyPipe())

    def _supervise(
        self, spec: WorkloadSpec, backend: NetworkProxy, state_dir: Path, ready: ReadyPipe
    ) -> int:
        me = os.getpid()
        # Saved before anything starts, so whatever this supervisor leaves if it is killed
        # outright is found and removed by the next netfence command.
        record = state.WorkloadState(
            name=spec.name, runtime=self.name, proxy=backend.name, command=list(spec.command),
            supervisor_pid=me, supervisor_start=state.process_start_time(me) or "",
            started_at=time.time(), state_dir=str(state_dir))
        state.save(record)
        # From here to the end of the teardown a stop signal is only recorded: the start
        # gives up at its next step, the workload gets it, the teardown is not cut short.
        with StopSignals() as signals:
            fence = Fence(spec, backend, record, signals, self.progress)
            ran = False
            try:
                stdio = self._start(spec, fence, detached=ready.detached)
                ready.ok(fence.url)
                ran = True
                return fence.run_workload(stdio)
            except (NetfenceError, Interrupted) as exc:
                ready.failed(exc)
                if isinstance(exc, Interrupted):
                    return exc.exit_code
                raise
            finally:
                fence.close()
                if spec.learn is not None and ran and fence.setup.decision_logs:
                    # After the proxies stopped (their logs are complete), before the state
                    # dir (which holds the logs) goes; never for a start that failed, which
                    # would replace the file with an empty profile.
                    write_learned(spec.learn, spec.profile, backend, fence.setup.decision_logs)
                _remove_tree(state_dir)

    def _start(self, spec: WorkloadSpec, fence: Fence,
               detached: bool) -> tuple[int, int, int]:
        """Start the fence and record the workload; the workload's stdin, stdout, stderr."""
        stdio = (0, 1, 2)
        log_path = fence.state_dir / "workload.log"
        try:
            fence.start()
        finally:
            self.report(None)  # the progress display ends before any other output
        if detached:
            fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            devnull = os.open(os.devnull, os.O_RDONLY)
            stdio = (devnull, fd, fd)
            redirect_own_stdio(log_path)
        fence.record.url = fence.url
        fence.record.decision_logs = [str(p) for p in fence.setup.decision_logs]
        fence.record.workload_log = str(log_path) if detached else None
        state.save(fence.record)
        if fence.url and not detached:  # detached: `netfence run` says it (detach.py)
            log.warning("%s: clients connect to %s", spec.name, fence.url)
        return stdio

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
        current.kill_orphans()
        _cleanup(current.name)

    def decisions(self, name: str, follow: bool = False) -> Iterator[DecisionRecord]:
        current = state.load(state.check_name(name))
        if current is None:
            raise NetfenceError(f"no workload named {name!r}", remedy="see `netfence ps`")
        yield from read_decisions(current, follow)


def write_learned(path: Path, profile: Profile, backend: NetworkProxy,
                  logs: tuple[Path, ...]) -> None:
    """Learn mode's result: a profile allowing what the workload used, from the decision
    log. A failure is reported, never raised: the workload's exit status stands."""
    used: list[Used] = []
    for log_path in logs:
        try:
            lines = log_path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            record = backend.parse_decision(line)
            if record is not None:
                used.append(Used(record.host, record.port, record.allowed, record.reason))
    try:
        # Written as the caller: a file they could write themselves, and theirs.
        with caller_permissions():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                os.fchmod(fh.fileno(), 0o644)  # a profile is no secret; the umask is 077
                fh.write(learned_profile(profile, used))
    except OSError as exc:
        log.error("--learn: cannot write %s: %s", path, exc.strerror or exc)
        return
    through, denied = summary(used)
    log.warning("learned %d destination(s) (%d request(s) denied); suggested "
                "profile written to %s", through, denied, path)


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _cleanup(name: str) -> None:
    netns.remove(ns_name(name))
    _remove_tree(state.state_dir(name))


def _reap_stale() -> None:
    """Remove what a supervisor killed outright left behind."""
    if os.geteuid() != 0:
        return
    for record in state.all_states():
        if record.runtime == NamespaceRuntime.name and not record.alive:
            record.kill_orphans()
            _cleanup(record.name)
