"""`run --detach`: the supervisor forks away and tells `netfence run` when the fence is up."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from netfence.errors import NetfenceError

log = logging.getLogger(__name__)


class ReadyPipe:
    """The supervisor's end of the pipe to `netfence run --detach`; inert when attached."""

    def __init__(self, fd: int | None = None) -> None:
        self._fd = fd
        self.detached = fd is not None

    def ok(self, url: str | None) -> None:
        self._send(f"ok {url or ''}")

    def failed(self, error: BaseException) -> None:
        self._send(str(error))

    def _send(self, message: str) -> None:
        # Once only: the parent reads to end of file, so the first message is the answer.
        if self._fd is not None:
            os.write(self._fd, message.encode())
            os.close(self._fd)
            self._fd = None


def detach(name: str, supervise: Callable[[ReadyPipe], int],
           in_parent: Callable[[], None] = lambda: None) -> int:
    """Run `supervise` in a new session; return 0 once it reports the fence up. The parent
    calls `in_parent` first."""
    ready_r, ready_w = os.pipe()
    # Fork before anything opens sockets or threads (the engine client's do not survive it).
    if os.fork() == 0:
        os.close(ready_r)
        os.setsid()
        code = 1
        try:
            code = supervise(ReadyPipe(ready_w))
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    in_parent()
    os.close(ready_w)
    with os.fdopen(ready_r, "rb") as fh:
        message = fh.read().decode(errors="replace")
    if not message.startswith("ok"):
        raise NetfenceError(message or f"workload {name} failed to start")
    url = message.removeprefix("ok").strip()
    if url:  # the supervisor's own stderr is its log file by now: say it here
        log.warning("%s: clients connect to %s", name, url)
    return 0


def redirect_own_stdio(path: Path) -> None:
    """A detached supervisor's own output goes to a 0600 log; nothing reads its stdin."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    devnull = os.open(os.devnull, os.O_RDONLY)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(devnull, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.close(devnull)
