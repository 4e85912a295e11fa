"""Listening sockets made in the workload's namespace and handed to a fence process that
runs, and binds, in the host's (Squid, which cannot listen in another namespace): the
workload's connections reach it with no relay between (a relay cost Squid's small
requests about a third of their rate).

The process is started with bindshim.c preloaded and each handed socket inherited; its
bind() of the placement's address (on the host's loopback, where nothing listens) takes
the handed socket instead (the shim's comment says how). The supervisor keeps its own
copy of each socket for the fence's life: a restarted process is handed the same one, and
clients wait in its queue meanwhile. Where the shim was not built (no C compiler when
netfence was installed), the runtime relays instead (`library` is None).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterable, Mapping
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import TYPE_CHECKING

from netfence.backends import Endpoint
from netfence.runtimes import netns

if TYPE_CHECKING:  # relay.py imports asyncio
    from netfence.runtimes.namespace.relay import SocketOpener

VARIABLE = "NETFENCE_BIND_FDS"
_NAME = "_bindshim"


def library() -> Path | None:
    """The built shim, if there is one."""
    here = Path(__file__).parent
    for suffix in EXTENSION_SUFFIXES:
        if (here / f"{_NAME}{suffix}").is_file():
            return here / f"{_NAME}{suffix}"
    return None


def listen(at: Endpoint, opener: SocketOpener = netns.open_socket) -> socket.socket:
    """A TCP socket listening on `at`, in its namespace."""
    sock = opener(at.host, socket.SOCK_STREAM, at.netns)
    try:
        sock.bind((at.host, at.port))
        sock.listen(socket.SOMAXCONN)  # the process's own listen() sets its backlog
    except OSError:
        sock.close()
        raise
    return sock


def environment(handed: Mapping[Endpoint, socket.socket]) -> dict[str, str]:
    """What a process started with `handed` (by the address it binds) needs in its
    environment; the sockets themselves are inherited at their descriptor numbers. Only
    for a built shim (the runtime hands nothing otherwise)."""
    shim = library()
    assert shim is not None
    preload = " ".join(p for p in (str(shim), os.environ.get("LD_PRELOAD", "")) if p)
    entries = ",".join(f"{sock.fileno()}/{at.host}/{at.port}" for at, sock in handed.items())
    return {"LD_PRELOAD": preload, VARIABLE: entries}


def inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def inode_at(path: str) -> int | None:
    """The inode of what a /proc/PID/fd/N link names (a socket's: the N of socket:[N]);
    None once it is closed."""
    with contextlib.suppress(OSError):
        return os.stat(path).st_ino
    return None


def taken(pid: int, sockets: Iterable[socket.socket]) -> bool:
    """Whether process `pid` listens on each of `sockets` (it holds the inherited
    descriptor and a copy of its own: the shim took it at its bind())."""
    try:
        held = [inode_at(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        return False
    return all(held.count(inode(s)) >= 2 for s in sockets)
