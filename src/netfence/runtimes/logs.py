"""The fence's log files, read back: the tail of a process's log for an error message, and
a workload's decision logs as records."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from netfence.backends import DecisionRecord, get_backend
from netfence.runtimes.state import WorkloadState

FOLLOW_INTERVAL = 0.2


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


def read_decisions(workload: WorkloadState, follow: bool) -> Iterator[DecisionRecord]:
    """A workload's decision records, oldest first; with `follow`, then new ones as the
    proxies write them, until the workload ends."""
    import time

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
                time.sleep(FOLLOW_INTERVAL)
