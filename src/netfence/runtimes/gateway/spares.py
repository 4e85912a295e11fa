"""A gateway workload's network namespace made ahead of its start: made with its loopback
up and its redirect in (`ip` and `nft`: about 15 ms of each warm start otherwise, longer
than compiling its policy, which runs beside it), and renamed to the workload's when one
starts.

One spare at a time, made by the daemon's main loop once no start is in progress and
none has come for REFILL_DELAY_S (making it takes CPU that the last start's sandbox, just
starting, could use). Its name holds the daemon's PID and start time (a recycled PID is
another process) and a character no workload name has: a daemon that was killed leaves
its spare, which the next daemon removes (`remove_stale`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path

from netfence.backends import DNS_PORT
from netfence.errors import NetfenceError
from netfence.runtimes import netns, state
from netfence.runtimes.base import TRANSPARENT_PORT
from netfence.runtimes.namespace import redirect

log = logging.getLogger("netfence")

PREFIX = "netfence_spare-"
REFILL_DELAY_S = 0.25


def make(name: str) -> Path:
    """A gateway workload's namespace: loopback up, every way out redirected to the
    listeners the gateway's Envoy opens in it."""
    nsfile = netns.create(name)
    try:
        redirect.install(nsfile, DNS_PORT, TRANSPARENT_PORT)
    except BaseException:
        netns.remove(name)
        raise
    return nsfile


class Spares:
    """`take` a namespace made ahead, `refill` when due (the main loop), `close` at the
    end (the spare is removed)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spare: str | None = None
        self.made = 0
        self.due = time.monotonic() + REFILL_DELAY_S
        self.closed = False
        me = os.getpid()
        self.owner = f"{me}-{state.process_start_time(me) or 0}"  # see the module's doc

    def take(self, name: str) -> bool:
        """The spare renamed `name`; False when there is none (make one then)."""
        with self.lock:
            spare, self.spare = self.spare, None
            self.due = time.monotonic() + REFILL_DELAY_S
        if spare is None:
            return False
        try:
            netns.rename(spare, name)
        except NetfenceError as exc:
            log.warning("gateway: a spare namespace could not be used (%s)", exc)
            netns.remove(spare)
            return False
        return True

    def due_in(self) -> float | None:
        """Seconds until a refill is due (0: now), or None when none is wanted."""
        with self.lock:
            if self.spare is not None or self.closed:
                return None
            return max(0.0, self.due - time.monotonic())

    def refill(self, quiet: bool) -> None:
        """Make the spare if there is none and no start has come for a while (`quiet`:
        none is in progress)."""
        with self.lock:
            if self.spare is not None or self.closed or not quiet:
                return
            if time.monotonic() < self.due:
                return
            self.made += 1
            name = f"{PREFIX}{self.owner}-{self.made}"
        try:
            make(name)
        except NetfenceError as exc:
            log.warning("gateway: cannot make a spare namespace (%s)", exc)
            with self.lock:
                self.due = time.monotonic() + 60.0  # not again at once
            return
        with self.lock:
            if not self.closed:
                self.spare, name = name, ""
        if name:
            netns.remove(name)

    def close(self) -> None:
        with self.lock:
            self.closed = True
            spare, self.spare = self.spare, None
        if spare is not None:
            netns.remove(spare)


def remove_stale() -> None:
    """Remove the spares of daemons that are gone (`<prefix><pid>-<start>-<n>`)."""
    for path in netns.NETNS_DIR.glob(f"{PREFIX}*"):
        pid, _, rest = path.name.removeprefix(PREFIX).partition("-")
        started = rest.partition("-")[0]
        if pid.isdigit() and not state.is_running(int(pid), started):
            with contextlib.suppress(NetfenceError):
                netns.remove(path.name)
