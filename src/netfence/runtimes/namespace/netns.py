"""Network namespaces through netlink (pyroute2), and sockets created inside them.

A socket belongs to the namespace it was created in for its whole life, whatever the
namespace of the thread using it later; so a process can serve on both sides at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from pyroute2 import IPRoute, NetNS, netns

from netfence.profile.hosts import IPAddress

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(name: str) -> Path:
    return NETNS_DIR / name


def create(name: str) -> Path:
    """A fresh network namespace whose only interface, loopback, is up."""
    netns.create(name)
    with NetNS(name) as ns:
        lo = ns.link_lookup(ifname="lo")[0]
        ns.link("set", index=lo, state="up")
    return netns_path(name)


def remove(name: str) -> None:
    if netns_path(name).exists():
        netns.remove(name)


def exists(name: str) -> bool:
    return netns_path(name).exists()


def host_addresses() -> tuple[IPAddress, ...]:
    """Every address configured on the host's interfaces (the fence denies them all)."""
    with IPRoute() as ip:
        raw = [a.get_attr("IFA_ADDRESS") for a in ip.get_addr()]
    return tuple(ipaddress.ip_address(str(a).split("%")[0]) for a in raw if a)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def entered(path: Path | None) -> Iterator[None]:
    """Run the block with this thread in the namespace at `path` (no-op for None)."""
    if path is None:
        yield
        return
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(path, os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def open_socket(host: str, kind: socket.SocketKind, netns_file: Path | None) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with entered(netns_file):
        return socket.socket(family, kind)
