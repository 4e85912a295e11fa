"""Network namespaces (through iproute2's `ip`), sockets created inside them, and the
host's own addresses: what both runtimes need of the kernel's network namespaces.

`ip` rather than a netlink library: a short call costs about 3 ms, where importing
pyroute2 alone cost about 100 ms of every `netfence run`'s start. What takes one system
call (loopback up, a namespace's removal) is done here, without a process.

A socket belongs to the namespace it was created in for its whole life, whatever the
namespace of the thread using it later; so a process can serve on both sides at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import ipaddress
import json
import os
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

from netfence.backends import Endpoint
from netfence.errors import NetfenceError
from netfence.profile.hosts import IPAddress

NETNS_DIR = Path("/run/netns")
# Whether the kernel has IPv6 (then a namespace's loopback has ::1 too).
HAS_IPV6 = Path("/proc/sys/net/ipv6").is_dir()
CLONE_NEWNET = 0x40000000
_MNT_DETACH = 2
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(name: str) -> Path:
    return NETNS_DIR / name


def _ip(*args: str) -> str:
    try:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    except FileNotFoundError:
        raise NetfenceError("`ip` (iproute2) is not installed",
                            remedy="apt-get install iproute2") from None
    if done.returncode != 0:
        raise NetfenceError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def create(name: str) -> Path:
    """A fresh network namespace whose only interface, loopback, is up."""
    _ip("netns", "add", name)
    try:
        loopback_up(netns_path(name))
    except OSError as exc:
        remove(name)
        raise NetfenceError(f"loopback up in network namespace {name}: "
                            f"{exc.strerror or exc}") from None
    return netns_path(name)


def loopback_up(path: Path) -> None:
    """Set `lo` up in the namespace at `path`, its other flags kept (`ip link set lo up`):
    an ioctl on a socket made there."""
    with open_socket("127.0.0.1", socket.SOCK_DGRAM, path) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack_from("H", fcntl.ioctl(sock, _SIOCGIFFLAGS, request), 16)[0]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


def remove(name: str) -> None:
    """What `ip netns delete` does: detach the namespace's bind mount and remove its
    file (the namespace ends once nothing else holds it)."""
    path = netns_path(name)
    if not path.exists():
        return
    _libc.umount2(os.fsencode(path), _MNT_DETACH)  # fails harmlessly if not mounted
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise NetfenceError(f"cannot remove network namespace {name}: "
                            f"{exc.strerror or exc}") from None


def exists(name: str) -> bool:
    return netns_path(name).exists()


def host_addresses() -> tuple[IPAddress, ...]:
    """Every address configured on the host's interfaces (the fence denies them all)."""
    links = json.loads(_ip("-json", "address", "show") or "[]")
    return tuple(
        ipaddress.ip_address(info["local"].split("%")[0])
        for link in links for info in link.get("addr_info", ()) if info.get("local")
    )


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


def family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def open_socket(host: str, kind: socket.SocketKind, netns_file: Path | None) -> socket.socket:
    with entered(netns_file):
        return socket.socket(family_of(host), kind)


def accepts(at: Endpoint, netns_file: Path | None) -> bool:
    """Whether something listens on `at` (0.0.0.0: any address) in that namespace."""
    host = "127.0.0.1" if at.host == "0.0.0.0" else at.host
    try:
        sock = open_socket(host, socket.SOCK_STREAM, netns_file)
    except OSError:
        return False
    sock.settimeout(0.5)
    try:
        sock.connect((host, at.port))
        return True
    except OSError:
        return False
    finally:
        sock.close()
