"""Stop signals (Ctrl-C, SIGTERM, ...) for a supervisor, recorded by the handler and acted
on by the supervisor's own code between steps.

The handler never raises: CPython swallows an exception raised inside an at-fork callback
(every subprocess start runs some) or a `__del__`, so a raising handler can lose the signal
and leave the workload running. Recording also makes the teardown uninterruptible: a second
Ctrl-C while the fence is removed is only recorded.
"""

from __future__ import annotations

import contextlib
import os
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
        self._wakeup: tuple[int, int] | None = None
        self._previous_wakeup = -1

    def _record(self, signum: int, _frame: FrameType | None) -> None:
        self._queue.append(signum)

    def __enter__(self) -> StopSignals:
        self._previous = {s: signal.signal(s, self._record) for s in STOP_SIGNALS}
        # A byte per signal on this pipe: a wait that selects on `fileno()` ends the moment
        # one arrives (a select only restarts after a handler that does not raise).
        read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wakeup = (read_fd, write_fd)
        self._previous_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        return self

    def __exit__(self, _type: type[BaseException] | None, _exc: BaseException | None,
                 _tb: TracebackType | None) -> None:
        self.restore()

    def restore(self) -> None:
        """The handlers from before, at once (again at the exit: nothing more to do)."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if self._wakeup is not None:
            signal.set_wakeup_fd(self._previous_wakeup)
            for fd in self._wakeup:
                os.close(fd)
            self._wakeup = None

    def fileno(self) -> int:
        """Readable once a signal has arrived (while entered): for select; `drain` it
        before taking the signals."""
        if self._wakeup is None:
            raise ValueError("StopSignals is not entered")
        return self._wakeup[0]

    def drain(self) -> None:
        if self._wakeup is not None:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wakeup[0], 4096):
                    pass

    def check(self) -> None:
        """Raise Interrupted if a stop signal is waiting (the start gives up)."""
        if self._queue:
            raise Interrupted(self._queue[0])

    def take(self) -> list[int]:
        """The signals received since the last call, oldest first."""
        # Swapped, not copied and cleared: a signal recorded in between is never lost.
        taken, self._queue = self._queue, []
        return taken
