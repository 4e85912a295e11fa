"""What every runtime offers, and the description of a workload to run."""

from __future__ import annotations

import abc
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from netfence.backends import DecisionRecord, Endpoint
from netfence.errors import UsageError
from netfence.profile import Profile
from netfence.runtimes.state import WorkloadState

Transport = Literal["stdio", "sse", "streamable-http"]
ENV_VAR = "NETFENCE_RUNTIME"
SUPPORTED = ("namespace",)


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


class Runtime(abc.ABC):
    name: str

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


def get_runtime(name: str | None = None) -> Runtime:
    chosen = name if name is not None else os.environ.get(ENV_VAR) or "namespace"
    if chosen.strip().lower() == "namespace":
        from netfence.runtimes.namespace import NamespaceRuntime

        return NamespaceRuntime()
    source = "--runtime" if name is not None else ENV_VAR
    raise UsageError(f"unknown runtime {chosen!r} ({source}); supported: {', '.join(SUPPORTED)}")
