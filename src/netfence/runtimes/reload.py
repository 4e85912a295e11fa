"""Changing a running fence's policy (`netfence update`), whatever the runtime: which of
the generated files changed, what each running process must do to take them (its
ProcessSpec.reload), and the wait until the proxies apply them. A runtime supplies how to
write, signal and restart its own processes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from netfence.backends import FileSpec, NetworkProxy, ProcessSpec, ProxySetup
from netfence.errors import NetfenceError
from netfence.runtimes.waiting import wait_for

# Envoy takes its watched files within milliseconds; Squid's reconfigure takes longer.
SETTLE_TIMEOUT = 15.0
SETTLE_INTERVAL = 0.005


def digest(content: str) -> str:
    return hashlib.sha256(content.encode()).hexdigest()


def digests(setup: ProxySetup) -> dict[Path, str]:
    """What was written, by path: kept instead of the text (megabytes for a long list)."""
    return {spec.path: digest(spec.content) for spec in setup.files}


@dataclass
class Plan:
    """What an update does: files to write, then processes to signal or to restart (by
    their new spec); the other processes take the files by themselves, or read none."""

    files: list[FileSpec] = field(default_factory=list)
    signals: list[tuple[ProcessSpec, int]] = field(default_factory=list)
    restarts: list[ProcessSpec] = field(default_factory=list)


def plan(running: Sequence[ProcessSpec], written: Mapping[Path, str],
         new: ProxySetup) -> Plan:
    """The steps that take a running fence from what it was started with to `new`
    (the same placement: the same processes, on the same addresses)."""
    if sorted(p.name for p in running) != sorted(p.name for p in new.processes):
        # Not expected for one placement; a restart of the workload is the honest answer.
        raise NetfenceError("this policy change needs other fence processes than the "
                            "running ones", remedy="stop the workload and run it again")
    out = Plan(files=[f for f in new.files if written.get(f.path) != digest(f.content)])
    changed = {f.path for f in out.files}
    unread = changed.difference(*(p.reads for p in new.processes))
    if unread:
        # Written, it would change nothing until a restart: the fence would say one policy
        # and apply another.
        raise NetfenceError(f"the {', '.join(sorted(p.name for p in unread))} of this fence "
                            "cannot change while it runs",
                            remedy="stop the workload and run it again with the new policy")
    for process in new.processes:
        touched = changed.intersection(process.reads)
        if not touched:
            continue
        how = process.reload
        if how is None or touched.intersection(how.restart_for):
            out.restarts.append(process)
        elif how.signal is not None:
            out.signals.append((process, how.signal))
    return out


def settle(backend: NetworkProxy, setup: ProxySetup, logs: Sequence[Path],
           what: str = "the new policy", check: Callable[[], None] | None = None) -> None:
    """Until the proxies apply `setup` (one that refuses a file keeps what it had)."""
    if not wait_for(lambda: backend.settled(setup), SETTLE_TIMEOUT, SETTLE_INTERVAL, check):
        where = ", ".join(str(p) for p in logs) or "the proxy's log"
        raise NetfenceError(f"the {backend.name} proxy did not take {what} within "
                            f"{SETTLE_TIMEOUT:.0f} s", remedy=f"see {where}")
