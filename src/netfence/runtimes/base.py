"""What every runtime offers, and the description of a workload to run."""

from __future__ import annotations

import abc
import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from netfence.backends import DecisionRecord, Endpoint, get_backend
from netfence.errors import UsageError
from netfence.profile import Profile
from netfence.runtimes import state
from netfence.runtimes.state import WorkloadState

if TYPE_CHECKING:
    from netfence.runtimes.grants import FileGrants

Transport = Literal["stdio", "sse", "streamable-http"]
ENV_VAR = "NETFENCE_RUNTIME"
SUPPORTED = ("namespace", "docker")


@dataclass(frozen=True)
class WorkloadSpec:
    name: str
    command: tuple[str, ...]
    profile: Profile
    proxy: str
    transport: Transport = "stdio"
    target_port: int | None = None
    port: int | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    dns_upstream: Endpoint | None = None
    user: str | None = None
    detach: bool = False
    # Learn mode: let every public destination through and, at exit, write a profile
    # allowing exactly what was used to this file (namespace runtime).
    learn: Path | None = None
    # The host's whole file system instead of the view (namespace runtime; trusted
    # programs only).
    host_filesystem: bool = False
    # The file-system grants, checked: set by the runtime before anything starts.
    files: FileGrants | None = None


# Told each step while a fence starts, then None once the workload is about to start (or
# the start failed). The CLI shows it on stderr; a runtime imports no terminal library.
ProgressHook = Callable[[str | None], None]


class Runtime(abc.ABC):
    name: str
    progress: ProgressHook | None = None

    def report(self, step: str | None) -> None:
        if self.progress is not None:
            self.progress(step)

    @abc.abstractmethod
    def run(self, spec: WorkloadSpec) -> int:
        """Run the workload behind the fence; the workload's exit status (0 if detached)."""

    @abc.abstractmethod
    def list(self) -> list[WorkloadState]:
        """Workloads of this runtime that are running now."""

    @abc.abstractmethod
    def stop(self, name: str) -> None:
        """Stop a workload and remove everything it owns."""

    @abc.abstractmethod
    def decisions(self, name: str, follow: bool = False) -> Iterator[DecisionRecord]:
        """The fence's decision log for a workload."""


def read_decisions(workload: WorkloadState, follow: bool) -> Iterator[DecisionRecord]:
    """A workload's decision records, oldest first; with `follow`, then new ones as the
    proxies write them, until the workload ends."""
    backend = get_backend(workload.proxy)
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(open(p, errors="replace"))
                   for p in workload.decision_logs if Path(p).exists()]
        while True:
            got = False
            for fh in handles:
                for line in fh:
                    record = backend.parse_decision(line)
                    if record is not None:
                        got = True
                        yield record
            if not follow or not workload.alive:
                return
            if not got:
                time.sleep(0.2)


def tail(path: Path, lines: int = 5) -> str:
    """The last lines of a fence process's log, on one line, for an error message."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def get_runtime(name: str | None = None) -> Runtime:
    chosen = name if name is not None else os.environ.get(ENV_VAR) or "namespace"
    if chosen.strip().lower() == "namespace":
        from netfence.runtimes.namespace import NamespaceRuntime

        return NamespaceRuntime()
    if chosen.strip().lower() == "docker":
        from netfence.runtimes.docker import DockerRuntime

        return DockerRuntime()
    source = "--runtime" if name is not None else ENV_VAR
    raise UsageError(f"unknown runtime {chosen!r} ({source}); supported: {', '.join(SUPPORTED)}")


def _asked_for(chosen: str | None) -> bool:
    return chosen is not None or bool(os.environ.get(ENV_VAR))


def runtime_of(name: str, chosen: str | None = None) -> Runtime:
    """The runtime asked for (--runtime, NETFENCE_RUNTIME); else the one the workload was
    started with, so that `stop NAME` and `logs NAME` need no flag."""
    if not _asked_for(chosen):
        record = state.load(state.check_name(name))
        if record is not None:
            chosen = record.runtime
    return get_runtime(chosen)


def running(chosen: str | None = None) -> list[WorkloadState]:
    """The running workloads of the runtime asked for; else of every runtime, as their
    supervisors recorded them (no container engine is asked)."""
    if _asked_for(chosen):
        return get_runtime(chosen).list()
    others = [s for s in state.all_states() if s.runtime != "namespace" and s.alive]
    return sorted([*get_runtime("namespace").list(), *others], key=lambda s: s.name)
