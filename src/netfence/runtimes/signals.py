"""Stop signals (Ctrl-C, SIGTERM, ...) for a supervisor, recorded by the handler and acted
on by the supervisor's own code between steps.

The handler never raises: CPython swallows an exception raised inside an at-fork callback
(every subprocess start runs some) or a `__del__`, so a raising handler can lose the signal
and leave the workload running. Recording also makes the teardown uninterruptible: a second
Ctrl-C while the fence is removed is only recorded.
"""

from __future__ import annotations

import signal
from types import FrameType, TracebackType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class Interrupted(Exception):
    """A stop signal arrived before the workload started."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # as a shell reports a death by that signal


class StopSignals:
    """While entered, stop signals are queued instead of acting; `check` raises for one
    that arrived, `take` hands them over for forwarding to the workload."""

    def __init__(self) -> None:
        self._queue: list[int] = []
        self._previous: dict[int, Any] = {}

    def _record(self, signum: int, _frame: FrameType | None) -> None:
        self._queue.append(signum)

    def __enter__(self) -> StopSignals:
        self._previous = {s: signal.signal(s, self._record) for s in STOP_SIGNALS}
        return self

    def __exit__(self, _type: type[BaseException] | None, _exc: BaseException | None,
                 _tb: TracebackType | None) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def check(self) -> None:
        """Raise Interrupted if a stop signal is waiting (the start gives up)."""
        if self._queue:
            raise Interrupted(self._queue[0])

    def take(self) -> list[int]:
        """The signals received since the last call, oldest first."""
        # Swapped, not copied and cleared: a signal recorded in between is never lost.
        taken, self._queue = self._queue, []
        return taken
