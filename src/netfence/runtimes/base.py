"""The runtime interface: the workload a runtime is asked to run, the fence it builds for
that workload, and what every runtime offers the CLI.

supervisor.py drives a Fence through its life; a runtime supplies only what differs.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from netfence.backends import Endpoint, ProxySetup
from netfence.errors import UsageError
from netfence.runtimes.logs import Entry
from netfence.runtimes.state import WorkloadState

if TYPE_CHECKING:
    from netfence.profile.model import Profile
    from netfence.runtimes.grants import FileGrants

Transport = Literal["stdio", "sse", "streamable-http"]

# Where the workload finds its fence, whichever runtime placed it: the egress proxy its
# proxy variables name (and DNS on backends.base.DNS_PORT, as its resolv.conf says).
WORKLOAD_PROXY_PORT = 3128
# Where the workload's other connections land, redirected, when the backend is transparent.
TRANSPARENT_PORT = 15001
# How long a workload has to exit after a stop signal is passed to it, before SIGKILL.
WORKLOAD_STOP_GRACE = 10.0


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
    # allowing exactly what was used to this file.
    learn: Path | None = None
    # The host's whole file system instead of the view (namespace runtime; trusted
    # programs only).
    host_filesystem: bool = False
    # Host paths the command needs to start besides its program file, shown read-only
    # like it (namespace runtime): a package's installation in netfence's cache.
    program_paths: tuple[str, ...] = ()
    # The file-system grants, checked: set by the runtime before anything starts.
    files: FileGrants | None = None
    # Where the policy came from, as `netfence ps` shows it (a profile, --allow-* options).
    policy_source: str = ""
    # The fence from the host's shared gateway rather than one of its own (namespace
    # runtime; a workload it cannot serve gets its own, said in one line).
    gateway: bool = False


# Told each step while a fence starts, then None once the workload is about to start (or
# the start failed). The CLI shows it on stderr; a runtime imports no terminal library.
ProgressHook = Callable[[str | None], None]


class Fence(abc.ABC):
    """One workload's fence and the workload itself, as one runtime places them.

    The supervisor calls start, then launch, then wait, and close in every case; a step
    that fails raises NetfenceError (or signals.Interrupted for a stop signal taken
    between steps). Whatever a step creates, close removes, also after a failed step.
    """

    # What start leaves for the supervisor to record: the ingress URL (also after launch,
    # when the ingress starts with the workload) and the proxies' files and logs.
    url: str | None = None
    setup: ProxySetup = ProxySetup(files=(), processes=())
    # True: the fence calls supervisor.release_memory itself, once its workload runs and
    # it is idle (a short run then never pays for it); else the supervisor does, at start.
    releases_memory: bool = False

    @abc.abstractmethod
    def start(self) -> None:
        """Build the fence: network, proxies, DNS, all listening."""

    @abc.abstractmethod
    def launch(self, detached: bool) -> None:
        """Start the workload: on our stdio, or with its output kept for later."""

    @abc.abstractmethod
    def wait(self) -> int:
        """Until the workload exits, passing it stop signals; its exit status, shell-style
        (128 + N for a death by signal N)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Remove everything start and launch created."""

    def update(self, profile: Profile) -> None:
        """Apply a new profile's network policy while the workload runs (called between
        launch and the end of wait, from another thread than wait's)."""
        raise UsageError(f"{type(self).__name__} cannot change a running workload's policy",
                         remedy="stop the workload and run it again")


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
    def decisions(self, name: str, follow: bool = False) -> Iterator[Entry]:
        """The fence's decision log for a workload, with its policy changes."""
