"""The supervisor that every runtime shares: claim the name, detach if asked, start the
fence, launch the workload, pass it stop signals, tear everything down; and `stop` and
`logs` for the workloads it records.

A runtime supplies what differs: the checks before anything exists (`prepare`), its
Fence (`fence`), and the removal of what a workload left (`remove`).
"""

from __future__ import annotations

import abc
import ctypes
import dataclasses
import gc
import logging
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from netfence.backends import NetworkProxy, get_backend
from netfence.errors import NetfenceError, UsageError
from netfence.policy.learn import Used, learned_profile, summary
from netfence.profile.defaults import DEFAULT_PORTS
from netfence.runtimes import state
from netfence.runtimes.base import WORKLOAD_STOP_GRACE, Fence, Runtime, WorkloadSpec
from netfence.runtimes.caller import caller_permissions
from netfence.runtimes.control import ControlServer, Message
from netfence.runtimes.detach import ReadyPipe, detach, redirect_own_stdio
from netfence.runtimes.logs import (
    Entry,
    PolicyChange,
    decision_records,
    log_time,
    read_decisions,
    record_policy_change,
)
from netfence.runtimes.signals import Interrupted, StopSignals

if TYPE_CHECKING:
    from netfence.profile.model import Profile

log = logging.getLogger("netfence")

SUPERVISOR_LOG = "supervisor.log"


class SupervisedRuntime(Runtime):
    """A runtime whose every workload has a netfence process supervising it."""

    # How long a supervisor may take to remove its fence once the workload has gone.
    teardown_time: float = 20.0

    @abc.abstractmethod
    def prepare(self, spec: WorkloadSpec) -> WorkloadSpec:
        """Everything that can be checked before anything is created (one-line errors);
        the spec completed with what the checks decided (the file grants)."""

    @abc.abstractmethod
    def fence(self, spec: WorkloadSpec, backend: NetworkProxy, record: state.WorkloadState,
              signals: StopSignals) -> Fence:
        """The fence for this run (nothing is created yet)."""

    @abc.abstractmethod
    def remove(self, name: str, record: state.WorkloadState | None) -> bool:
        """Remove what a workload whose supervisor is gone left behind; whether anything
        of it was found (the record counts when there is one)."""

    # -- run ------------------------------------------------------------------------

    def run(self, spec: WorkloadSpec) -> int:
        backend = get_backend(spec.proxy)
        state.check_name(spec.name)
        spec = self.prepare(spec)
        # The state dir holds root's configs, logs and sockets: for root only.
        os.umask(0o077)
        # From the claim to the end of the teardown a stop signal is only recorded: the
        # start gives up at its next step, the workload gets it, the teardown is not cut
        # short, and the claim never stays behind.
        with StopSignals() as signals:
            state_dir = state.claim(spec.name)
            if spec.detach:
                # `netfence run` itself stays interruptible while it waits for the start.
                return detach(spec.name,
                              lambda ready: self._supervise(spec, backend, state_dir, ready,
                                                            signals),
                              in_parent=signals.restore)
            return self._supervise(spec, backend, state_dir, ReadyPipe(), signals)

    def _supervise(self, spec: WorkloadSpec, backend: NetworkProxy, state_dir: Path,
                   ready: ReadyPipe, signals: StopSignals) -> int:
        me = os.getpid()
        # Saved before anything starts, so whatever this supervisor leaves if it is killed
        # outright is found (and removed) by the next netfence command.
        record = state.WorkloadState(
            name=spec.name, runtime=self.name, proxy=backend.name, command=list(spec.command),
            supervisor_pid=me, supervisor_start=state.process_start_time(me) or "",
            started_at=time.time(), state_dir=str(state_dir), policy=spec.policy_source)
        state.save(record)
        if ready.detached:
            redirect_own_stdio(state_dir / SUPERVISOR_LOG)
        fence: Fence | None = None
        launched = False
        try:
            fence = self.fence(spec, backend, record, signals)
            try:
                fence.start()
            finally:
                self.report(None)  # the progress display ends before any other output
            if not fence.releases_memory:
                release_memory()
            _record(record, fence)
            fence.launch(detached=ready.detached)
            launched = True
            _record(record, fence)
            if fence.url and not ready.detached:  # detached: `netfence run` says it
                log.warning("%s: clients connect to %s", spec.name, fence.url)
            ready.ok(fence.url)
            updates = Updates(spec, fence, record)
            control = _control(state_dir, updates)
            try:
                return fence.wait()
            finally:
                if control is not None:
                    control.close()  # no update runs once the teardown begins
                spec = updates.spec  # learn mode writes what the last policy allowed
        except (NetfenceError, Interrupted) as exc:
            ready.failed(exc)
            if isinstance(exc, Interrupted):
                return exc.exit_code
            raise
        finally:
            self._teardown(spec, backend, fence, launched, state_dir)

    def _teardown(self, spec: WorkloadSpec, backend: NetworkProxy, fence: Fence | None,
                  launched: bool, state_dir: Path) -> None:
        complete = True
        if fence is not None:
            try:
                fence.close()
            except NetfenceError as exc:
                complete = False
                log.warning("%s: teardown incomplete (%s); `netfence stop %s` retries it",
                            spec.name, exc, spec.name)
        if spec.learn is not None and launched and fence is not None:
            # After the proxies stopped (their logs are complete), before the state dir
            # (which holds the logs) goes; never for a start that failed, which would
            # replace the file with an empty profile.
            write_learned(spec.learn, spec.profile, backend.name, fence.setup.decision_logs)
        if complete:
            shutil.rmtree(state_dir, ignore_errors=True)
        # Otherwise the record stays: `stop` (or, for some runtimes, the next command)
        # finds the dead supervisor's leftovers through it.

    # -- stop, logs -------------------------------------------------------------------

    def _record_of(self, name: str) -> state.WorkloadState | None:
        record = state.load(state.check_name(name))
        return record if record is not None and record.runtime == self.name else None

    def _missing(self, name: str) -> NetfenceError:
        return NetfenceError(f"no {self.name} workload named {name!r}",
                             remedy="see `netfence ps`")

    def stop(self, name: str) -> None:
        record = self._record_of(name)
        if record is not None and record.alive:
            pid, started = record.supervisor_pid, record.supervisor_start
            state.kill(pid, started, signal.SIGTERM)
            if not state.wait_gone(pid, started, WORKLOAD_STOP_GRACE + self.teardown_time):
                # A supervisor that hangs is killed: what it leaves is removed just below.
                log.warning("%s: the supervisor did not stop in time; killing it", name)
                state.kill(pid, started)
                state.wait_gone(pid, started, 5.0)
        if record is not None:
            record.kill_orphans()
        if not self.remove(name, record) and record is None:
            raise self._missing(name)
        shutil.rmtree(state.state_dir(name), ignore_errors=True)

    def decisions(self, name: str, follow: bool = False) -> Iterator[Entry]:
        record = self._record_of(name)
        if record is None:
            raise self._missing(name)
        yield from read_decisions(record, follow)


class Updatable(Protocol):
    """What holds a workload's fence: a Fence, or its part of the shared gateway."""

    def update(self, profile: Profile) -> None: ...


class Updates:
    """`netfence update` for one running workload: the profile's network policy replaced,
    its file grants kept (the workload's view is fixed when it starts)."""

    def __init__(self, spec: WorkloadSpec, fence: Updatable,
                 record: state.WorkloadState) -> None:
        self.spec = spec
        self.fence = fence
        self.record = record

    def handle(self, request: Message) -> Message:
        from netfence.profile.loader import parse_profile

        if request.get("op") != "update" or not isinstance(request.get("profile"), dict):
            raise UsageError("unknown request")
        source = str(request.get("source") or "netfence update")
        new = parse_profile(request["profile"], source)
        old = self.spec.profile
        profile = dataclasses.replace(old, name=new.name, network=new.network)
        try:
            self.fence.update(profile)
        except UsageError:
            raise  # refused before anything changed
        except NetfenceError as exc:
            # Part of the fence may have taken the new policy: all of it goes back.
            try:
                self.fence.update(old)
            except NetfenceError as again:
                raise NetfenceError(f"{exc.message}; going back to the old policy failed "
                                    f"too: {again}", remedy=f"netfence stop {self.spec.name}"
                                    ) from None
            raise NetfenceError(f"{exc.message}; the old policy stays",
                                remedy=exc.remedy) from None
        self.spec = dataclasses.replace(self.spec, profile=profile)
        self.record.policy = source
        state.save(self.record)
        added, removed = policy_difference(old, profile)
        record_policy_change(Path(self.record.state_dir), PolicyChange(
            time=log_time(), source=source, added=added, removed=removed))
        log.warning("%s: policy now %s", self.spec.name, source)
        kept = [key for key in ("read", "write", "allow_unix_socket")
                if getattr(new, key) and getattr(new, key) != getattr(old, key)]
        return {"added": list(added), "removed": list(removed), "grants_ignored": kept}


def _control(state_dir: Path, updates: Updates) -> ControlServer | None:
    try:
        return ControlServer(state_dir, updates.handle)
    except OSError as exc:  # e.g. a state dir whose path is too long for a Unix socket
        log.warning("%s: `netfence update` will not reach this workload (control socket: "
                    "%s)", updates.spec.name, exc.strerror or exc)
        return None


def policy_difference(old: Profile, new: Profile) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What a policy change allows anew and no longer allows, as profile entries."""
    def entries(profile: Profile) -> list[str]:
        out = profile.network.outbound
        ports = out.allow_port if out.allow_port is not None else DEFAULT_PORTS
        items = [f"host {h}" for h in out.allow_host]
        items += [f"port {p}" for p in ports] + [f"cidr {c}" for c in out.allow_cidr]
        items += [f"inbound {h}" for h in profile.network.inbound.allow_host]
        if out.insecure_allow_all:
            items.append("insecure_allow_all")
        return items

    before, after = entries(old), entries(new)
    was, now = set(before), set(after)  # 100,000 names: each looked up once
    return tuple(e for e in after if e not in was), tuple(e for e in before if e not in now)


def release_memory() -> None:
    """Give back to the system what building the fence's configs took (a long allowlist
    makes many short-lived objects): the supervisor stays for the workload's lifetime."""
    gc.collect()
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return
    trim(0)


def _record(record: state.WorkloadState, fence: Fence) -> None:
    record.url = fence.url
    record.decision_logs = [str(p) for p in fence.setup.decision_logs]
    state.save(record)


def write_learned(path: Path, profile: Profile, proxy: str, logs: tuple[Path, ...]) -> None:
    """Learn mode's result: a profile allowing what the workload used, from the decision
    log. A failure is reported, never raised: the workload's exit status stands."""
    used = [Used(r.host, r.port, r.allowed, r.reason) for r in decision_records(logs, proxy)]
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
