"""The gateway daemon (`netfence gateway`): one per host, root, resident while workloads
use it (or always, as a service).

It owns the gateway's Envoy and every member (member.py). A workload joins with an `add`
request on the daemon's socket, sent by the very process that claimed the workload's
name (checked: SO_PEERCRED); the daemon keeps a pidfd of that process, which then execs
into the workload's signal forwarder (same PID), and tears the member down the moment it
exits, whoever killed it. Each member's resources are published through the files Envoy
watches (files, not an xDS server: Envoy restores every listener alone when it restarts,
and no gRPC stack is needed). A publication that only adds goes at once, with one wait
for Envoy; one that removes anything goes in stages: clusters first, then listeners,
then what no listener names any more, so that no listener ever names a cluster Envoy has
dropped. Starts that arrive together are published together.

If Envoy dies, every workload fails closed (nothing else listens in their namespaces)
and the daemon starts it again from the same files. If the daemon dies, Envoy dies with
it (a parent-death signal): closed as well, until the next `netfence run --gateway`
starts a daemon; `netfence gateway` under a service manager restarts it at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from netfence.backends import Endpoint, FileSpec, ProcessSpec, proxy_env, write_file
from netfence.backends.envoy.gateway import (
    NEW_WORKLOAD_WATCHES,
    Publication,
    WorkloadResources,
    applied,
    gateway_process,
    inotify_instances,
    publication,
    rejected,
    route_files_in_use,
    workload_of,
)
from netfence.errors import NetfenceError, UsageError
from netfence.handoff import STARTER_LOG
from netfence.runtimes import netns, reload, state
from netfence.runtimes.base import WORKLOAD_PROXY_PORT, WorkloadSpec
from netfence.runtimes.control import PEER_PID, PROGRESS, ControlServer, Message
from netfence.runtimes.gateway import LOCK_NAME, PID_NAME, SOCKET_NAME, gateway_dir, spares
from netfence.runtimes.gateway.member import MEMBER_NAME, Ingress, Member
from netfence.runtimes.logs import tail
from netfence.runtimes.namespace import processes
from netfence.runtimes.namespace.launch import LOOPBACK, free_port
from netfence.runtimes.signals import StopSignals
from netfence.runtimes.supervisor import Updates
from netfence.runtimes.waiting import wait_for

if TYPE_CHECKING:
    from netfence.profile.model import Profile

log = logging.getLogger("netfence")

# An on-demand daemon exits this long after its last workload (a client starting its
# servers one after another finds it warm).
IDLE_EXIT_S = 30.0
PUBLISH_TIMEOUT = 30.0
MAX_RESTARTS_PER_MINUTE = 5
LOCK_WAIT_S = 5.0
# How long a stopping daemon gives its workloads to exit (their grace, and some).
STOP_WAIT_S = 15.0
INOTIFY_SYSCTL = Path("/proc/sys/fs/inotify/max_user_instances")
# What the daemon raises that limit to when it is lower: about 500 workloads.
INOTIFY_INSTANCES = 1024
# Left for other processes of root and for removed workloads' files while they drain.
INOTIFY_SPARE = 48


class Gateway:
    def __init__(self, directory: Path, idle_exit: float | None) -> None:
        self.directory = directory
        self.idle_exit = idle_exit
        self.lock = threading.Lock()
        self.members: dict[str, Member] = {}
        self.pending = 0  # adds in progress
        self.closing = False
        self.idle_since = time.monotonic()
        self.envoy: tuple[ProcessSpec, subprocess.Popen[bytes]] | None = None
        # Warm runs' helper (cli/starter.py): without it, runs only start slower.
        self.starter: tuple[ProcessSpec, subprocess.Popen[bytes]] | None = None
        self.starter_restarts: list[float] = []
        self.restarts: list[float] = []
        self.spares = spares.Spares()
        # Publication: what Envoy was last told, and the coalescing of requests for more.
        self.published: dict[str, WorkloadResources] = {}
        # Each file's content as last written: compared, not hashed (a workload's route
        # files are the very strings compiled for it: the same object at each publication).
        self.written: dict[Path, str] = {}
        self.turn = threading.Condition()
        self.asked = 0
        self.done = 0
        self.failed: tuple[int, NetfenceError] | None = None
        self.publishing = False
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # -- the main loop ----------------------------------------------------------------

    def serve(self) -> int:
        with StopSignals() as signals, self._only_one():
            _raise_limits()
            spares.remove_stale()
            self._adopt()
            self._start_envoy()
            pid_file = self.directory / PID_NAME
            me = os.getpid()
            pid_file.write_text(f"{me} {state.process_start_time(me) or ''}\n")
            server = ControlServer(self.directory, self.handle, name=SOCKET_NAME,
                                   concurrent=True)
            log.warning("gateway: serving on %s", server.path)
            try:
                self._start_starter()
                self._loop(signals)
            finally:
                server.close()
                if self.starter is not None:
                    processes.stop_all([self.starter])
                self._stop_all()
                self.spares.close()
                if self.envoy is not None:
                    processes.stop_all([self.envoy])
                # Nothing of it stays (its log goes too: a daemon that is killed keeps it).
                shutil.rmtree(self.directory, ignore_errors=True)
        return 0

    @contextlib.contextmanager
    def _only_one(self) -> Iterator[None]:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if not wait_for(lambda: _try_lock(fd), LOCK_WAIT_S, 0.05):
                raise UsageError("a netfence gateway already runs on this host",
                                 remedy="`netfence run --gateway` uses it")
            yield
        finally:
            os.close(fd)

    def _loop(self, signals: StopSignals) -> None:
        while True:
            with self.lock:
                members = list(self.members.values())
            envoy_fd = self._envoy_pidfd()
            watched = [m.pidfd for m in members] + [self.wake_r, signals.fileno()]
            if envoy_fd is not None:
                watched.append(envoy_fd)
            # Awake for the spare namespace when it is due (not more often than 20 times a
            # second while a start keeps it from being made).
            refill = self.spares.due_in()
            timeout = 1.0 if refill is None else min(1.0, max(refill, 0.05))
            try:
                ready, _, _ = select.select(watched, [], [], timeout)
            finally:
                if envoy_fd is not None:
                    os.close(envoy_fd)
            if signals.fileno() in ready or signals.take():
                signals.drain()
                log.warning("gateway: stopping its workloads")
                return
            if self.wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self.wake_r, 4096)
            for member in members:
                if member.pidfd in ready:
                    self.retire(member)
            self._watch_envoy()
            self._watch_starter()
            for member in members:
                if member.pidfd not in ready and member.dnsmasq_exited():
                    with contextlib.suppress(NetfenceError):
                        member.revive_dnsmasq()
            with self.lock:
                quiet = not self.pending
            self.spares.refill(quiet)
            if self._idle_out():
                log.warning("gateway: no workload for %.0f s; exiting", self.idle_exit)
                return

    def _idle_out(self) -> bool:
        if self.idle_exit is None:
            return False
        with self.lock:
            if self.members or self.pending:
                self.idle_since = time.monotonic()
                return False
            if time.monotonic() - self.idle_since < self.idle_exit:
                return False
            self.closing = True  # adds from here on are told to start a new daemon
            return True

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self.wake_w, b".")

    # -- Envoy --------------------------------------------------------------------------

    def _start_envoy(self) -> None:
        bootstrap, spec = gateway_process(self.directory)
        write_file(bootstrap)
        current = self._current()
        files = publication(self.directory, list(current.values()))
        self._write(_all_files(files))
        self.envoy = (spec, processes.start(spec))
        self._until_applied(_all_files(files), "its configuration")
        self.published = current

    def _adopt(self) -> None:
        """The workloads a killed daemon left: the running ones are taken over (their
        Envoy died with that daemon: they have been closed since), what the others left
        is removed."""
        for record in state.all_states():
            if not record.gateway or record.runtime != "namespace":
                continue
            if not (Path(record.state_dir) / MEMBER_NAME).exists():
                continue  # not added yet: its run is asking for it (or gives up)
            pidfd: int | None = None
            with contextlib.suppress(OSError):
                pidfd = os.pidfd_open(record.supervisor_pid)
            record.kill_orphans()  # its dnsmasq, started by the old daemon
            record.processes, record.leftovers = [], []
            if pidfd is None or not record.alive:
                _remove_left(record)
                if pidfd is not None:
                    os.close(pidfd)
                continue
            upstream = json.loads((Path(record.state_dir) / MEMBER_NAME).read_text())
            member = Member(self.directory, record, pidfd, self._logs_for(record.name, False),
                            Endpoint(str(upstream["upstream"][0]), int(upstream["upstream"][1])),
                            learn=False, publish=self.publish)
            try:
                member.adopt()
            except (NetfenceError, OSError, ValueError, KeyError) as exc:
                log.error("gateway: %s: cannot take it over (%s); stopping it",
                          record.name, exc)
                state.kill(record.supervisor_pid, record.supervisor_start)
                member.close()
                os.close(pidfd)
                _remove_left(record)
                continue
            self.members[record.name] = member
            self._serve_updates(member, record)
            log.warning("gateway: took %s over", record.name)

    def _serve_updates(self, member: Member, record: state.WorkloadState,
                       profile: Profile | None = None) -> None:
        """Its control socket, for `netfence update`; the profile it runs (read from what
        `Member` saved when not given: a daemon taking it over)."""
        from netfence.profile.loader import parse_profile

        if profile is None:
            saved = json.loads((member.state_dir / MEMBER_NAME).read_text())
            profile = parse_profile(saved["profile"], record.policy or "netfence run")
        spec = WorkloadSpec(name=record.name, command=tuple(record.command), profile=profile,
                            proxy="envoy", policy_source=record.policy)
        member.control = ControlServer(member.state_dir, Updates(spec, member, record).handle)

    def _start_starter(self) -> None:
        log_path = self.directory / STARTER_LOG
        spec = ProcessSpec(name="the gateway's starter",
                           argv=(sys.executable, "-m", "netfence", "gateway-starter"),
                           ready=(), stdout=log_path, stderr=log_path)
        self.starter = (spec, processes.start(spec))

    def _from_starter(self, pid: int) -> bool:
        """Whether `pid` is one of the starter's workers (its child)."""
        starter = self.starter
        return (starter is not None and starter[1].poll() is None
                and state.parent_of(pid) == starter[1].pid)

    def _envoy_pidfd(self) -> int | None:
        if self.envoy is None or self.envoy[1].poll() is not None:
            return None
        try:
            return os.pidfd_open(self.envoy[1].pid)
        except OSError:
            return None

    def _watch_envoy(self) -> None:
        """Start Envoy again if it died (a few times a minute at most): every workload's
        listeners come back from the files."""
        assert self.envoy is not None
        spec, proc = self.envoy
        if proc.poll() is not None and _may_restart(self.restarts):
            log.warning("gateway: envoy exited (status %s); starting it again: %s",
                        proc.returncode, tail(spec.stderr) or "no output")
            try:
                self._start_envoy()
            except NetfenceError as exc:
                log.error("gateway: %s", exc)

    def _watch_starter(self) -> None:
        """Start the starter again if it died (as seldom as Envoy): runs meanwhile do
        their own work, only slower."""
        if self.starter is None:
            return
        spec, proc = self.starter
        if proc.poll() is not None and _may_restart(self.starter_restarts):
            log.warning("gateway: its starter exited (status %s); starting it again: %s",
                        proc.returncode, tail(spec.stderr) or "no output")
            with contextlib.suppress(NetfenceError):
                self._start_starter()

    # -- requests -------------------------------------------------------------------------

    def handle(self, request: Message) -> Message:
        if request.get("op") == "add":
            return self._add(request)
        if request.get("op") == "status":
            with self.lock:
                return {"workloads": sorted(self.members)}
        raise UsageError("unknown request")

    def _add(self, request: Message) -> Message:
        from netfence.profile.loader import parse_profile
        from netfence.runtimes.resolver import host_resolver, parse_endpoint

        name = state.check_name(str(request.get("name")))
        # The run's process asks, or a starter's worker for it (handoff.py).
        peer = int(request.get("pid") or request[PEER_PID])
        if peer != request[PEER_PID] and not self._from_starter(request[PEER_PID]):
            raise UsageError(f"{name}: the asking process speaks for another")
        record = state.load(name)
        if record is None or record.supervisor_pid != peer or not record.gateway:
            raise UsageError(f"{name}: the asking process did not start this workload")
        with self.lock:
            if self.closing:
                return {"retry": True}
            self.pending += 1
        try:
            source = str(request.get("source") or "netfence run")
            profile = parse_profile(request.get("profile"), source)
            upstream = request.get("dns_upstream")
            resolver = parse_endpoint(str(upstream)) if upstream else host_resolver()
            old = self.members.get(name)
            if old is not None:
                self.retire(old)  # its process has exited: the claim checked that
            self._check_room()
            pidfd = os.pidfd_open(peer)
            member = Member(self.directory, record, pidfd, self._logs_for(name), resolver,
                            learn=bool(request.get("learn")), publish=self.publish,
                            made=self.spares)
            try:
                if not state.is_running(peer, record.supervisor_start):
                    raise NetfenceError(f"{name}: the asking process has exited")
                member.start(profile, _ingress(request))
                with self.lock:
                    self.members[name] = member
                self._wake()  # watch its pidfd from now on
                url = (_url(str(request.get("transport")), member.ingress.port)
                       if member.ingress is not None else None)
                placed: Message = {"env": proxy_env(f"{LOOPBACK}:{WORKLOAD_PROXY_PORT}"),
                                   "netns": str(member.nsfile), "url": url}
                # Its namespace is there: its sandbox may be made meanwhile, held before
                # the workload runs until the reply (client.py).
                with contextlib.suppress(OSError):  # the asker is gone: its pidfd says so
                    request.get(PROGRESS, lambda _placed: None)(placed)
                self.publish()  # while its dnsmasq starts
                member.ready()  # then the workload may start: both are up
            except BaseException:
                self._drop(member)
                raise
            assert member.resources is not None
            record.decision_logs = [str(p) for p in member.resources.decision_logs]
            record.policy = source
            record.url = url
            state.save(record)
            self._serve_updates(member, record, profile)
            return placed
        finally:
            with self.lock:
                self.pending -= 1

    def _check_room(self) -> None:
        """One more workload must not take Envoy past the host's inotify instances: it
        aborts when it cannot watch a file (and would again at every restart)."""
        with self.lock:
            current = [m.resources for m in self.members.values() if m.resources]
        # What the new one may watch (route files, filter resources), and room for drains.
        needed = inotify_instances(current) + NEW_WORKLOAD_WATCHES + INOTIFY_SPARE
        if needed > _inotify_limit():
            raise NetfenceError(
                f"the shared gateway serves {len(current)} workloads, as many as this "
                f"host's fs.inotify.max_user_instances ({_inotify_limit()}) allows",
                remedy="raise it (sysctl fs.inotify.max_user_instances=4096), or run "
                       "this workload without --gateway")

    def _logs_for(self, name: str, fresh: bool = True) -> Path:
        """The workload name's log directory, emptied for a new run: Envoy keeps every
        access-log path it ever opened, so the paths are one set per name, reused, never
        one per run."""
        logs = self.directory / "logs" / name
        logs.mkdir(mode=0o700, parents=True, exist_ok=True)
        for old in logs.iterdir() if fresh else ():
            with contextlib.suppress(OSError):
                os.truncate(old, 0)
        return logs

    def _drop(self, member: Member) -> None:
        """A member that failed to start: out of Envoy (if it got in) and removed."""
        with self.lock:
            if self.members.get(member.name) is member:
                del self.members[member.name]
        with contextlib.suppress(NetfenceError):
            self.publish()
        member.close()
        os.close(member.pidfd)

    def retire(self, member: Member) -> None:
        """Its workload has exited: its listeners go, then its DNS, namespace and state."""
        with self.lock:
            if self.members.get(member.name) is not member:
                return  # retired already
            del self.members[member.name]
        if member.control is not None:
            member.control.close()
        try:
            self.publish()
        except NetfenceError as exc:
            log.error("gateway: %s: %s", member.name, exc)
        member.close()
        os.close(member.pidfd)
        if _still_its(member):
            shutil.rmtree(member.state_dir, ignore_errors=True)
        log.info("gateway: %s removed", member.name)

    def _stop_all(self) -> None:
        """The daemon stops: every workload gets its stop signal (through its forwarder),
        and its fence is removed once it has gone."""
        with self.lock:
            members = list(self.members.values())
        for member in members:
            state.kill(member.record.supervisor_pid, member.record.supervisor_start,
                       signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT_S
        for member in members:
            select.select([member.pidfd], [], [], max(0.0, deadline - time.monotonic()))
            state.kill(member.record.supervisor_pid, member.record.supervisor_start)
            self.retire(member)

    # -- publication ------------------------------------------------------------------------

    def _current(self) -> dict[str, WorkloadResources]:
        with self.lock:
            return {n: m.resources for n, m in self.members.items() if m.resources is not None}

    def publish(self) -> None:
        """Until Envoy applies a publication made after this call (one publication serves
        every request made while the previous one ran)."""
        with self.turn:
            self.asked += 1
            mine = self.asked
            while self.done < mine and self.publishing:
                self.turn.wait()
            if self.done >= mine:
                if self.failed is not None and self.failed[0] >= mine:
                    raise self.failed[1]
                return
            self.publishing = True
            upto = self.asked
        error: NetfenceError | None = None
        try:
            self._publish_now()
        except NetfenceError as exc:
            error = exc
        with self.turn:
            self.publishing = False
            self.done = upto
            if error is not None:
                self.failed = (upto, error)
            self.turn.notify_all()
        if error is not None:
            raise error

    def _publish_now(self) -> None:
        current = self._current()
        if _only_adds(self.published, current):
            # Nothing goes that a listener names: every file at once (route and filter
            # files first: a listener naming a missing filter file is rejected), one
            # wait. Whichever Envoy reads first, no listener names a cluster, route or
            # filter file it drops; one naming a cluster it has not loaded yet is taken
            # (its connections fail until the cluster comes: seen with 1.40), and
            # `applied` holds only once every file's version is reported, with nothing
            # warming.
            files = _all_files(publication(self.directory, list(current.values())))
            self._write(files)
            self._until_applied(files, "the new resources")
            self.published = current
            return
        during = publication(self.directory, _both(self.published, current))
        final = publication(self.directory, list(current.values()))
        # Every route file and every cluster, old and new, before the listeners name them.
        self._write([*during.routes, during.clusters])
        self._until_applied([during.clusters], "the new clusters")
        self._write([final.listeners, final.runtime])
        self._until_applied([final.listeners, final.runtime, *final.routes],
                            "the new listeners")
        # Then what no listener names any more (nothing when only route configurations
        # went: asking Envoy again for the clusters applied above costs a round trip).
        if final.clusters.content != during.clusters.content:
            self._write([final.clusters])
            self._until_applied([final.clusters], "the clusters")
        self.published = current
        keep = route_files_in_use(self.directory, list(current.values()))
        for spec in during.routes:
            if spec.path not in keep:
                with contextlib.suppress(FileNotFoundError):
                    spec.path.unlink()
                self.written.pop(spec.path, None)

    def _write(self, files: list[FileSpec]) -> None:
        for spec in files:
            if self.written.get(spec.path) != spec.content:
                write_file(spec)
                self.written[spec.path] = spec.content

    def _until_applied(self, files: list[FileSpec], what: str) -> None:
        def taken() -> bool:
            if applied(self.directory, files):
                return True
            if self.envoy is not None and self.envoy[1].poll() is not None:
                # The main loop starts it again, from the files as they are now.
                raise NetfenceError(f"the gateway's Envoy exited before it took {what}")
            try:
                refused = rejected(self.directory)
            except OSError:
                return False  # not answering yet (starting)
            if refused:
                names = sorted({workload_of(listener) for listener in refused})
                raise NetfenceError(
                    f"the gateway's Envoy refused the listeners of {', '.join(names)}: "
                    f"{next(iter(refused.values()))}")
            return False

        if not wait_for(taken, PUBLISH_TIMEOUT, reload.SETTLE_INTERVAL):
            stderr = self.envoy[0].stderr if self.envoy is not None else None
            raise NetfenceError(
                f"the gateway's Envoy did not take {what} within {PUBLISH_TIMEOUT:.0f} s: "
                f"{(tail(stderr) if stderr else '') or 'no output'}")


def _may_restart(history: list[float]) -> bool:
    """Whether a process may be started again now (and if so, counted in `history`)."""
    now = time.monotonic()
    history[:] = [t for t in history if now - t < 60]
    if len(history) >= MAX_RESTARTS_PER_MINUTE:
        return False
    history.append(now)
    return True


def _inotify_limit() -> int:
    try:
        return int(INOTIFY_SYSCTL.read_text())
    except (OSError, ValueError):
        return 128  # the kernel's default


def _raise_limits() -> None:
    """What Envoy needs for many workloads, which it inherits: open files (about 16 per
    idle workload, 2 per proxied connection) up to the hard limit, and inotify instances
    (one per file it watches; 128 by default for all of root's processes together)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    before = _inotify_limit()
    if before < INOTIFY_INSTANCES:
        try:
            INOTIFY_SYSCTL.write_text(str(INOTIFY_INSTANCES))
        except OSError as exc:
            log.warning("gateway: cannot raise fs.inotify.max_user_instances from "
                        "%d (%s): it serves fewer workloads", before, exc.strerror or exc)
            return
        log.warning("gateway: raised fs.inotify.max_user_instances from %d to %d "
                    "(its Envoy watches about three files per workload)", before, INOTIFY_INSTANCES)


def _all_files(files: Publication) -> list[FileSpec]:
    return [*files.routes, files.clusters, files.listeners, files.runtime]


def _both(before: dict[str, WorkloadResources],
          after: dict[str, WorkloadResources]) -> list[WorkloadResources]:
    """Every workload of either, each updated one with its clusters, route configurations
    and filter resources old and new: its listeners name the old ones until the new
    listeners are applied."""
    out = {**before, **after}
    for name, new in after.items():
        old = before.get(name)
        if old is None or old is new or _keeps_names(old, new):
            continue
        renewed = {c["name"]: c for c in new.clusters}
        # In the old order (the file unchanged but for what changed), new ones last.
        clusters = [renewed.pop(c["name"], c) for c in old.clusters]
        out[name] = dataclasses.replace(new, clusters=[*clusters, *renewed.values()],
                                        routes={**old.routes, **new.routes},
                                        filters={**old.filters, **new.filters})
    return list(out.values())


def _only_adds(before: dict[str, WorkloadResources],
               after: dict[str, WorkloadResources]) -> bool:
    """Whether going from `before` to `after` removes nothing a listener may name: every
    workload stays, each keeping its names (an update's are mostly the same: _workload's
    suffixes)."""
    return all(name in after and _keeps_names(old, after[name])
               for name, old in before.items())


def _keeps_names(old: WorkloadResources, new: WorkloadResources) -> bool:
    """Whether a workload's new resources have every cluster, route configuration and
    filter resource its old listeners name."""
    return (old.routes.keys() <= new.routes.keys()
            and old.filters.keys() <= new.filters.keys()
            and {c["name"] for c in old.clusters} <= {c["name"] for c in new.clusters})


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _ingress(request: Message) -> Ingress | None:
    """Where clients reach a workload that serves HTTP (None for stdio)."""
    target = request.get("target_port")
    if request.get("transport", "stdio") == "stdio" or not isinstance(target, int):
        return None
    port = request.get("port")
    return Ingress(target, port if isinstance(port, int) else free_port())


def _url(transport: str, port: int) -> str:
    path = {"sse": "/sse", "streamable-http": "/mcp"}.get(transport, "/")
    return f"http://{LOOPBACK}:{port}{path}"


def _remove_left(record: state.WorkloadState) -> None:
    """What a workload whose process has gone left (its fence's daemon was killed)."""
    if record.netns:
        netns.remove(record.netns)
    shutil.rmtree(record.state_dir, ignore_errors=True)


def _still_its(member: Member) -> bool:
    """Whether the state dir is still the member's (a new run of the name may have
    claimed it since the workload exited)."""
    record = state.load(member.name)
    if record is not None:
        return (record.supervisor_pid, record.supervisor_start) == (
            member.record.supervisor_pid, member.record.supervisor_start)
    return not state.claimant_alive(member.state_dir)


def serve(idle_exit: float | None) -> int:
    """`netfence gateway`: serve until stopped (or, on demand, until idle)."""
    return Gateway(gateway_dir(), idle_exit).serve()
