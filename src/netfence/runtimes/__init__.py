"""Runtimes place the workload and the fence and connect them: one interface (base.py),
one shared supervisor (supervisor.py), one package per runtime (namespace/, docker/).

A runtime knows nothing of Envoy or Squid syntax: it hands a backend a Placement and
runs what the backend's ProxySetup says. Selection: `--runtime` or NETFENCE_RUNTIME; an
unknown value fails at once, naming the supported ones.
"""

from __future__ import annotations

import os

from netfence.errors import UsageError
from netfence.runtimes import state
from netfence.runtimes.base import Runtime, WorkloadSpec
from netfence.runtimes.state import WorkloadState

ENV_VAR = "NETFENCE_RUNTIME"
DEFAULT_RUNTIME = "namespace"
SUPPORTED = ("namespace", "docker")


def get_runtime(name: str | None = None) -> Runtime:
    """The runtime named by `name`, else by NETFENCE_RUNTIME, else the namespace runtime."""
    chosen = name if name is not None else os.environ.get(ENV_VAR) or DEFAULT_RUNTIME
    key = chosen.strip().lower()
    if key == "namespace":
        from netfence.runtimes.namespace.runtime import NamespaceRuntime

        return NamespaceRuntime()
    if key == "docker":
        from netfence.runtimes.docker.runtime import DockerRuntime

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
    others = [s for s in state.all_states() if s.runtime != DEFAULT_RUNTIME and s.alive]
    return sorted([*get_runtime(DEFAULT_RUNTIME).list(), *others], key=lambda s: s.name)


__all__ = [
    "DEFAULT_RUNTIME",
    "ENV_VAR",
    "SUPPORTED",
    "Runtime",
    "WorkloadSpec",
    "get_runtime",
    "running",
    "runtime_of",
]
