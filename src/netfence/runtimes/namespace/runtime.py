"""The namespace runtime: the workload in fresh network (and mount, PID, IPC) namespaces
whose only interface is loopback; the fence's listeners appear on that loopback (egress
proxy 127.0.0.1:3128, DNS :53, the transparent listener :15001, on 127.0.0.1 and ::1),
and every connection to another address is redirected to them (redirect.py); the
proxies themselves run, and dial out, in the host's namespace. No veth: nothing inside
can reach a host service.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from netfence import handoff
from netfence.backends import (
    DNS_PORT,
    Endpoint,
    Forward,
    NetworkProxy,
    Placement,
    ProcessSpec,
    ProxySetup,
    write_file,
    write_setup,
)
from netfence.backends.dnsmasq import dns_setup
from netfence.backends.relay import relay_setup
from netfence.errors import NetfenceError
from netfence.keyring import leave_session_keyring
from netfence.policy import compile_policy
from netfence.runtimes import netns, reload, state
from netfence.runtimes.base import (
    TRANSPARENT_PORT,
    WORKLOAD_PROXY_PORT,
    WORKLOAD_STOP_GRACE,
    Fence,
    ProgressHook,
    WorkloadSpec,
)
from netfence.runtimes.logs import tail
from netfence.runtimes.namespace import bindshim, holder, processes, redirect, sandbox
from netfence.runtimes.namespace.holder import Holder
from netfence.runtimes.namespace.launch import (
    DEFAULT_PATH,
    LOOPBACK,
    LOOPBACKS,
    free_port,
    ns_name,
    resolv_conf,
    workload_argv,
    workload_env,
)
from netfence.runtimes.resolver import host_resolver
from netfence.runtimes.signals import StopSignals
from netfence.runtimes.supervisor import SupervisedRuntime, release_memory

if TYPE_CHECKING:
    from netfence.profile.hosts import IPAddress
    from netfence.profile.model import IPNetwork, Profile
    from netfence.runtimes.namespace.relay import Relays

log = logging.getLogger("netfence")

WORKLOAD_LOG = "workload.log"
MAX_REVIVALS_PER_MINUTE = 5


def _url(spec: WorkloadSpec, port: int) -> str:
    path = {"sse": "/sse", "streamable-http": "/mcp"}.get(spec.transport, "/")
    return f"http://{LOOPBACK}:{port}{path}"


class NamespaceFence(Fence):
    """One workload's fence; every step registers its own undo on `self.undo`."""

    releases_memory = True  # once idle (processes.IdleWatch)

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
        self.forwarder: _Forwarder | None = None
        # The write end of the held sandbox's gate (bwrap's --block-fd), until launch.
        self.gate: int | None = None
        self.holder: Holder | None = None
        self.started: list[tuple[ProcessSpec, subprocess.Popen[bytes]]] = []
        # Listening sockets in the namespace, handed to the proxy (bindshim.py), by the
        # address it binds for each; kept open for the fence's life.
        self.handed: dict[Endpoint, socket.socket] = {}
        self.placement: Placement | None = None
        self.host_addresses: tuple[IPAddress | IPNetwork, ...] = ()
        # What each generated file holds (digests), for an update to write only changes.
        self.written: dict[Path, str] = {}
        # Held while fence processes are replaced: by an update, or after one died.
        self.changing = threading.Lock()
        self.revivals: dict[str, list[float]] = {}

    def start(self) -> None:
        spec = self.spec
        self.report("creating the network namespace")
        nsfile = self._namespaces()
        transparent = self.backend.transparent
        # The routes and rules go in while the fence is built (their programs: about 6 ms),
        # in place before start returns.
        redirecting = redirect.begin(nsfile, DNS_PORT, TRANSPARENT_PORT if transparent else None,
                                     enter=self.holder.nsenter() if self.holder else ())
        self.undo.callback(redirecting.close)
        if not transparent:
            log.warning("%s: programs that ignore the proxy variables cannot connect (the "
                        "%s proxy has no transparent path; --proxy envoy has one)",
                        spec.name, self.backend.name)
        self.signals.check()
        # Read once: an update keeps them (other workloads' interfaces come and go, and a
        # change here would drain the transparent path's TLS connections and restart DNS).
        self.host_addresses = netns.host_addresses()
        policy = compile_policy(spec.profile, self.host_addresses,
                                learn=spec.learn is not None)
        # What cannot listen in the namespace is reached through relays (the fence's DNS;
        # Squid's egress; rootless, everything): Envoy listeners as root, carried by the
        # proxy's Envoy or one of their own; rootless, the supervisor's (holder.py).
        rootless = self.holder is not None
        inside = Endpoint(LOOPBACK, WORKLOAD_PROXY_PORT, nsfile)
        forwards: list[Forward] = []
        if self.backend.listens_in_netns and not rootless:
            egress = inside
        else:
            egress = Endpoint(LOOPBACK, free_port())  # on the host's loopback
            if self.backend.takes_sockets and bindshim.library() is not None:
                self.handed[egress] = bindshim.listen(
                    inside, self.holder.open_socket if self.holder else netns.open_socket)
                self.undo.callback(self.handed[egress].close)
            else:
                forwards.append(Forward(inside, egress))
        dns = Endpoint(LOOPBACK, free_port())
        for loopback in LOOPBACKS:
            forwards += [Forward(Endpoint(loopback, DNS_PORT, nsfile), dns, "udp"),
                         Forward(Endpoint(loopback, DNS_PORT, nsfile), dns, "tcp")]
        transparent_inside = tuple(Endpoint(loopback, TRANSPARENT_PORT, nsfile)
                                   for loopback in LOOPBACKS if transparent)
        transparent_listen = transparent_inside
        if rootless and transparent:
            transparent_listen = (Endpoint(LOOPBACK, free_port()),)
        carried = self.backend.carries_relays and not rootless

        relays: Relays | None = None
        if spec.transport != "stdio" or rootless:
            # Python's (asyncio: imported only when needed).
            from netfence.runtimes.namespace.relay import Relays

            relays = Relays(self.holder.open_socket) if self.holder else Relays()
            self.undo.callback(relays.close)
        if rootless:
            assert relays is not None
            for forward in forwards:
                if forward.protocol == "udp":
                    relays.udp(forward.listen, forward.target)
                else:
                    relays.tcp(forward.listen, forward.target)
            for at in transparent_inside:
                relays.tcp(at, transparent_listen[0], state_destination=True)
            forwards = []
        ingress_listen = ingress_upstream = None
        if spec.transport != "stdio":
            assert spec.target_port is not None and relays is not None
            # Into the namespace, which no Envoy cluster can dial.
            ingress_listen = Endpoint(LOOPBACK, spec.port or free_port())
            ingress_upstream = relays.tcp(
                Endpoint(LOOPBACK, 0), Endpoint(LOOPBACK, spec.target_port, nsfile)
            )
            self.url = _url(spec, ingress_listen.port)

        placement = Placement(
            state_dir=self.state_dir,
            egress_listen=egress,
            workload_proxy=f"{LOOPBACK}:{WORKLOAD_PROXY_PORT}",
            dns_listen=dns,
            upstream_resolver=spec.dns_upstream or host_resolver(),
            ingress_listen=ingress_listen,
            ingress_upstream=ingress_upstream,
            workload_name=spec.name,
            transparent_listen=transparent_listen,
            relays=tuple(forwards) if carried else (),
            unprivileged=rootless,
            transparent_proxy_protocol=rootless,
        )
        self.placement = placement
        started = self.started
        self.undo.callback(_stop_fence, relays, started, self._held())
        # The proxy starts while the DNS config is generated (a long allowlist takes a
        # while to render, and the proxy a while to load it).
        parts: list[Callable[[], ProxySetup]] = [
            lambda: self.backend.setup(policy, placement), lambda: dns_setup(policy, placement)]
        if forwards and not carried:
            parts.insert(0, lambda: relay_setup(forwards, self.state_dir,
                                                placement.programs.get("envoy")))
        written = ProxySetup(files=(), processes=())
        for part in parts:
            setup = part()
            write_setup(setup, self.state_dir)
            self.written.update(reload.digests(setup))
            written += setup
            # Kept without the files' text: with a long allowlist, megabytes never read again.
            self.setup += dataclasses.replace(setup, files=tuple(
                dataclasses.replace(f, content="") for f in setup.files))
            for proc_spec in setup.processes:
                self.signals.check()
                log.info("starting %s", proc_spec.name)
                self.report(f"starting {proc_spec.name}")
                self.record.leftovers += proc_spec.leaves  # saved by _own
                started.append((proc_spec, processes.start(proc_spec, self.handed)))
                self._own(started[-1][1].pid)
        # Relay threads start only after the last fork with a preexec hook.
        if relays is not None:
            relays.start()
        redirecting.result()
        # bwrap makes the sandbox while the proxies start (about 8 ms), and holds the
        # workload at its gate until launch.
        self._hold()
        for proc_spec, proc in started:
            self.report(f"waiting for {proc_spec.name}")
            processes.wait_ready(proc_spec, proc, self.signals.check, handed=self.handed)
        # A listener file the proxy refused leaves it running without that listener: said
        # now, with the reason, rather than found out by the workload.
        reload.settle(self.backend, written, [p.stderr for p in written.processes],
                      "its configuration", self._alive)
        self._check_handed()

    def _held(self) -> frozenset[int]:
        return frozenset(map(bindshim.inode, self.handed.values()))

    def _alive(self) -> None:
        """Raises when a stop signal came or a fence process exited (a proxy that exits
        on its configuration is said at once, not after the settle timeout)."""
        self.signals.check()
        for spec, proc in self.started:
            processes.check_running(spec, proc)

    def _check_handed(self) -> None:
        """A proxy that serves but did not take its handed socket (the shim not loaded)
        listens where the workload cannot reach it: said, rather than a workload whose
        connections wait forever."""
        for spec, proc in self.started:
            mine = processes.handed_to(spec, self.handed)
            if mine and not bindshim.taken(proc.pid, mine.values()):
                raise NetfenceError(
                    f"{spec.name} did not take the listening socket made for it in the "
                    "workload's namespace", remedy=f"see {spec.stderr}")

    def update(self, profile: Profile) -> None:
        with self.changing:
            self._update(profile)

    def _update(self, profile: Profile) -> None:
        assert self.placement is not None
        placement = self.placement
        policy = compile_policy(profile, self.host_addresses,
                                learn=self.spec.learn is not None)
        new = self.backend.setup(policy, placement) + dns_setup(policy, placement)
        fence = [spec for spec, _ in self.started if spec.role != "relay"]
        steps = reload.plan(fence, self.written, new)
        for file in steps.files:
            write_file(file)
            self.written[file.path] = reload.digest(file.content)
        running = {spec.name: i for i, (spec, _) in enumerate(self.started)}
        for spec, signum in steps.signals:
            self.started[running[spec.name]][1].send_signal(signum)
        for spec in steps.restarts:
            at = running[spec.name]
            processes.stop_all([self.started[at]], held=self._held())
            state.remove_leftovers(list(spec.leaves))
            log.info("restarting %s", spec.name)
            self._restart(at, spec)
        reload.settle(self.backend, new, [p.stderr for p in new.processes])

    def _restart(self, at: int, spec: ProcessSpec) -> None:
        proc = processes.start(spec, self.handed)
        self.started[at] = (spec, proc)
        self._own(proc.pid)
        processes.wait_ready(spec, proc, handed=self.handed)

    def _revive(self) -> None:
        """Start again a fence process that died under the running workload (the fence
        was closed meanwhile: nothing else listens where it did); a few times a minute
        at most, so that one dying at once is not restarted in a loop."""
        if not self.changing.acquire(blocking=False):
            return  # an update replaces processes now; the next round looks again
        try:
            for at, (spec, proc) in enumerate(self.started):
                if proc.poll() is None:
                    continue
                now = time.monotonic()
                recent = [t for t in self.revivals.get(spec.name, []) if now - t < 60]
                if len(recent) >= MAX_REVIVALS_PER_MINUTE:
                    if len(recent) == MAX_REVIVALS_PER_MINUTE:
                        log.error("%s: %s keeps exiting; the fence stays closed (%s)",
                                  self.spec.name, spec.name, tail(spec.stderr) or "no output")
                        recent.append(now)  # said once
                    self.revivals[spec.name] = recent
                    continue
                self.revivals[spec.name] = [*recent, now]
                state.remove_leftovers(list(spec.leaves))
                log.warning("%s: %s exited (status %s); starting it again", self.spec.name,
                            spec.name, proc.returncode)
                try:
                    self._restart(at, spec)
                except NetfenceError as exc:
                    log.error("%s: %s", self.spec.name, exc)
        finally:
            self.changing.release()

    def _namespaces(self) -> Path:
        """The workload's network namespace: root's under /run/netns; without root, one
        owned by a user namespace of the caller's, kept by a holder process."""
        if os.geteuid() == 0:
            nsfile = netns.create(ns_name(self.spec.name))
            self.undo.callback(netns.remove, ns_name(self.spec.name))
            return nsfile
        self.holder = Holder()
        self.undo.callback(self.holder.close)
        self._own(self.holder.pid)
        return self.holder.netns

    def workload_env(self, user: sandbox.SandboxUser) -> dict[str, str]:
        return workload_env(self.spec, user, self.setup.env)

    def launch(self, detached: bool) -> None:
        # start held it, detached as the spec says (a detached supervisor's ReadyPipe too).
        assert self.gate is not None and detached == self.spec.detach
        self.signals.check()
        # The fence is up and settled (start returned): the workload runs. (A sandbox that
        # failed has closed its end: its exit status is wait's.)
        with contextlib.suppress(BrokenPipeError):
            os.write(self.gate, b"\0")

    def _hold(self) -> None:
        """The sandbox made, the workload held at the gate that launch opens. The gate's
        write end closes only once the sandbox is gone (undo's order): bwrap takes the
        pipe's end for a go. (A supervisor killed outright closes it while bwrap, whose
        parent it is, dies with it: a workload could start for that moment, in a namespace
        whose only interface is loopback.)"""
        spec = self.spec
        stdio = (0, 1, 2)
        if spec.detach:
            # The workload's output is kept in its state dir; nothing reads its stdin.
            log_path = self.state_dir / WORKLOAD_LOG
            out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            devnull = os.open(os.devnull, os.O_RDONLY)
            self.undo.callback(os.close, out)
            self.undo.callback(os.close, devnull)
            stdio = (devnull, out, out)
            self.record.workload_log = str(log_path)
        user = sandbox.resolve_user(spec.user)
        resolv_r = resolv_conf()
        info_r, info_w = os.pipe()
        gate_r, self.gate = os.pipe()
        self.undo.callback(os.close, self.gate)  # after the forwarder's close, below
        pinned = sandbox.pin(spec.files)
        try:
            argv = workload_argv(
                spec, self.holder.netns if self.holder else netns.netns_path(ns_name(spec.name)),
                user, self.workload_env(user), resolv_r, info_w, pinned, self.holder,
                gate=gate_r)
            self.signals.check()
            leave_session_keyring()  # this thread's: the one that starts it
            # A signal that arrives from here on waits in the queue until the forwarder
            # passes it to the workload.
            proc = subprocess.Popen(
                argv, env=sandbox.LAUNCH_ENV,
                pass_fds=(resolv_r, info_w, gate_r, *pinned.values()),
                stdin=stdio[0], stdout=stdio[1], stderr=stdio[2], process_group=0,
            )
        finally:
            for fd in pinned.values():
                os.close(fd)
            os.close(gate_r)
        os.close(resolv_r)
        os.close(info_w)
        init_pid = sandbox.read_child_pid(info_r)
        os.close(info_r)
        self.forwarder = _Forwarder(proc, init_pid, self.signals)
        # Stops the sandbox if the supervisor gives up before waiting for it.
        self.undo.callback(self.forwarder.close)
        self._own(proc.pid, *([init_pid] if init_pid else []))

    def wait(self) -> int:
        assert self.forwarder is not None
        return self.forwarder.wait(
            processes.IdleWatch([p for _s, p in self.started], then=release_memory),
            watch=self._revive)

    def _own(self, *pids: int) -> None:
        for pid in pids:
            self.record.own(pid)
        state.save(self.record)

    def close(self) -> None:
        self.undo.close()


def _stop_fence(relays: Relays | None,
                started: list[tuple[ProcessSpec, subprocess.Popen[bytes]]],
                held: frozenset[int]) -> None:
    # The connections relayed to the proxies end first, so that their log lines are
    # written while the proxies still run (Squid is killed soon after its stop signal).
    if relays is not None:
        relays.close()
    processes.stop_all([s for s in started if s[0].role == "relay"])
    fence = [s for s in started if s[0].role != "relay"]
    for directory in (d for spec, _ in fence for d in spec.watches):
        shutil.rmtree(directory, ignore_errors=True)
    processes.stop_all(fence, held=held)
    state.remove_leftovers([pattern for spec, _ in started for pattern in spec.leaves])


class _Forwarder:
    """Passes stop signals to the command; kills the sandbox when the command is gone or
    not yet started, already being stopped, or still running after the grace."""

    def __init__(self, proc: subprocess.Popen[bytes], init_pid: int | None,
                 signals: StopSignals) -> None:
        self.proc = proc
        self.init_pid = init_pid
        self.init_fd = sandbox.open_init(init_pid, proc.pid)
        # Readable the moment the sandbox exits: no polling delay added to every run.
        self.exit_fd: int | None = os.pidfd_open(proc.pid)
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
            self.deadline = time.monotonic() + WORKLOAD_STOP_GRACE

    def _kill(self) -> None:
        # The init first: bwrap's --die-with-parent is not armed yet in a sandbox that is
        # still starting, and whatever survived would keep our stdout open.
        if self.init_fd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.init_fd, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()

    def wait(self, idle: processes.IdleWatch | None = None,
             watch: Callable[[], None] = lambda: None) -> int:
        """The sandbox's exit status, shell-style (128 + N for a signal). `idle` is
        ticked and `watch` called meanwhile, until a stop signal came."""
        assert self.exit_fd is not None
        while True:
            # A signal from before the sandbox existed is delivered on the first round.
            for signum in self.signals.take():
                self._deliver(signum)
            ready, _, _ = select.select([self.exit_fd, self.signals.fileno()], [], [], 0.1)
            if self.exit_fd in ready:
                code = self.proc.wait()
                break
            if ready:
                self.signals.drain()  # a stop signal: delivered at the top, at once
            if self.deadline is not None and time.monotonic() > self.deadline:
                self._kill()
            elif self.deadline is None and not ready:
                watch()
                if idle is not None:
                    idle.tick()
        if code == -signal.SIGKILL and self.killed_for is not None:
            return 128 + self.killed_for  # stopped on that signal's account
        return code if code >= 0 else 128 - code

    def close(self) -> None:
        """Kill the sandbox if it still runs; release the pidfds."""
        if self.proc.poll() is None:
            self._kill()
            self.proc.wait()
        for fd in (self.exit_fd, self.init_fd):
            if fd is not None:
                os.close(fd)
        self.exit_fd = self.init_fd = None


class NamespaceRuntime(SupervisedRuntime):
    name = "namespace"
    # Three fence processes' grace, and the namespace's removal.
    teardown_time = processes.FENCE_STOP_GRACE * 3 + 5

    def run(self, spec: WorkloadSpec) -> int:
        why = None
        if spec.gateway:
            from netfence.runtimes.gateway import client

            why = client.unsupported(spec)
            if why is None:
                state.check_name(spec.name)
                return client.run(spec, self.prepare)
        if handoff.worker() is not None:
            raise handoff.Fallback  # a fence of its own: the run's process runs it
        if why is not None:
            log.warning("%s: the shared gateway %s; this workload gets a fence of its own",
                        spec.name, why)
        return super().run(spec)

    def prepare(self, spec: WorkloadSpec) -> WorkloadSpec:
        if os.geteuid() != 0:
            holder.probe()  # one line, before anything is claimed, when it cannot work
        sandbox.bwrap_path()
        user = sandbox.resolve_user(spec.user)  # a bad --user fails before anything is built
        path = spec.env.get("PATH") or os.environ.get("PATH") or DEFAULT_PATH
        _reap_stale()
        return sandbox.prepare(spec, user, path)  # the file-system view, checked

    def fence(self, spec: WorkloadSpec, backend: NetworkProxy, record: state.WorkloadState,
              signals: StopSignals) -> NamespaceFence:
        return NamespaceFence(spec, backend, record, signals, self.progress)

    def remove(self, name: str, record: state.WorkloadState | None) -> bool:
        # Without root there is nothing to remove: the namespaces end with their holder.
        names = {ns_name(name), *([record.netns] if record and record.netns else [])}
        found = os.geteuid() == 0 and any(netns.exists(n) for n in names)
        if found:
            for each in names:
                netns.remove(each)
        return found or record is not None

    def list(self) -> list[state.WorkloadState]:
        _reap_stale()
        running = [s for s in state.all_states() if s.runtime == self.name and s.alive]
        if os.geteuid() == 0 and any(s.gateway for s in running):
            # A gateway daemon that was killed: started again, it takes its workloads over.
            from netfence.runtimes.gateway import client, gateway_dir

            client.ensure_daemon(gateway_dir())
        return running


def _reap_stale() -> None:
    """Remove what a supervisor killed outright (or whose teardown failed) left behind
    (the caller's own: a user's state root holds only their workloads)."""
    for record in state.all_states():
        if record.runtime == NamespaceRuntime.name and not record.alive:
            record.kill_orphans()
            if os.geteuid() == 0:
                netns.remove(record.netns or ns_name(record.name))
            shutil.rmtree(record.state_dir, ignore_errors=True)
