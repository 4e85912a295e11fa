"""Waiting for a condition with a deadline: every polled wait of the runtimes."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(condition: Callable[[], bool], timeout: float, interval: float = 0.05,
             check: Callable[[], None] | None = None) -> bool:
    """Poll `condition` until it holds (True) or `timeout` seconds pass (False). `check`
    runs before each round and may raise to give up (a stop signal came); so may
    `condition` (the process it waits for has died)."""
    deadline = time.monotonic() + timeout
    while True:
        if check is not None:
            check()
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
