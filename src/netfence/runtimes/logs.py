"""The fence's log files, read back: the tail of a process's log for an error message, and
a workload's decision logs as records, with the policy changes among them."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

from netfence.backends import DecisionRecord, get_backend
from netfence.runtimes.state import WorkloadState

FOLLOW_INTERVAL = 0.2
# `netfence update`'s changes, one JSON line each, beside the proxies' decision logs.
POLICY_LOG = "policy.log"


@dataclass(frozen=True)
class PolicyChange:
    """A running workload's policy replaced: from then on, its decisions follow `source`."""

    time: str
    source: str
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    def log_entry(self, workload: str) -> dict[str, object]:
        return {"time": self.time, "workload": workload, "event": "policy",
                "policy": self.source, "added": list(self.added),
                "removed": list(self.removed)}


def log_time(now: float | None = None) -> str:
    """UTC with milliseconds, as Envoy writes its access log's times."""
    now = time.time() if now is None else now
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def record_policy_change(state_dir: Path, change: PolicyChange) -> None:
    fd = os.open(state_dir / POLICY_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(asdict(change)) + "\n")


def _policy_change(line: str) -> PolicyChange | None:
    try:
        data = json.loads(line)
        return PolicyChange(time=str(data["time"]), source=str(data["source"]),
                            added=tuple(data.get("added", ())),
                            removed=tuple(data.get("removed", ())))
    except (ValueError, KeyError, TypeError):
        return None


def tail(path: Path, lines: int = 5) -> str:
    """The last lines of a fence process's log, on one line, for an error message."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def decision_records(paths: Iterable[Path], proxy: str) -> Iterator[DecisionRecord]:
    """Every decision record in these logs as they are now, log by log."""
    backend = get_backend(proxy)
    for path in paths:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            record = backend.parse_decision(line)
            if record is not None:
                yield record


Entry = DecisionRecord | PolicyChange


def read_decisions(workload: WorkloadState, follow: bool) -> Iterator[Entry]:
    """A workload's decision records and policy changes, oldest first; with `follow`,
    then new ones as they are written, until the workload ends."""
    import heapq

    backend = get_backend(workload.proxy)
    policy_log = Path(workload.state_dir) / POLICY_LOG
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(open(p, errors="replace"))
                   for p in workload.decision_logs if Path(p).exists()]
        changes: list[TextIO] = []

        def read() -> list[Entry]:
            decisions: list[Entry] = [r for fh in handles for line in fh
                         if (r := backend.parse_decision(line)) is not None]
            if not changes and policy_log.exists():  # written by the first update
                changes.append(stack.enter_context(open(policy_log, errors="replace")))
            new: list[Entry] = [c for fh in changes for line in fh
                   if (c := _policy_change(line)) is not None]
            # Each change among the decisions by its time; each log's own order kept.
            return list(heapq.merge(decisions, new, key=lambda e: e.time))

        while True:
            alive = follow and workload.alive
            got = read()
            yield from got
            if not alive:
                return
            if not got:
                time.sleep(FOLLOW_INTERVAL)
