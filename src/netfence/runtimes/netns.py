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
_MS_BIND = 0x1000
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
    """Set `lo` up in the namespace at `path` (`ip link set lo up`)."""
    with open_socket("127.0.0.1", socket.SOCK_DGRAM, path) as sock:
        set_loopback_up(sock)


def set_loopback_up(sock: socket.socket) -> None:
    """Set `lo` up, its other flags kept, in the namespace `sock` was made in: an ioctl."""
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


def rename(old: str, new: str) -> Path:
    """The namespace named `old` under the name `new` (a mount point cannot be renamed: its
    file is bind-mounted at the new path, as `ip netns add` mounts a new one, then the
    old name is removed). NetfenceError when `new` exists or the mount fails."""
    source, target = netns_path(old), netns_path(new)
    try:
        os.close(os.open(target, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
    except OSError as exc:
        raise NetfenceError(f"cannot name a network namespace {new}: "
                            f"{exc.strerror or exc}") from None
    if _libc.mount(os.fsencode(source), os.fsencode(target), None, _MS_BIND, None) != 0:
        err = ctypes.get_errno()
        target.unlink()
        raise NetfenceError(f"cannot name network namespace {old} {new}: {os.strerror(err)}")
    remove(old)
    return target


def exists(name: str) -> bool:
    return netns_path(name).exists()


def host_addresses() -> tuple[IPAddress, ...]:
    """Every address configured on the host's interfaces (the fence denies them all): what
    `ip address show` lists as each one's local address, from the same netlink dump
    (RTM_GETADDR) without starting `ip` (about 3 ms of every start)."""
    for _attempt in range(_DUMP_ATTEMPTS):
        try:
            found = _address_dump()
        except OSError as exc:
            raise NetfenceError(f"reading the host's addresses: {exc.strerror or exc}") from None
        if found is not None:
            return found
    raise NetfenceError("the host's addresses kept changing while being read",
                        remedy="run it again")


_DUMP_ATTEMPTS = 5
_RTM_NEWADDR, _RTM_GETADDR = 20, 22
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_F_REQUEST, _NLM_F_DUMP, _NLM_F_DUMP_INTR = 0x1, 0x300, 0x10
_IFA_ADDRESS, _IFA_LOCAL = 1, 2
_NLMSG = struct.Struct("=IHHII")  # length, type, flags, sequence, port
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, index
_RTATTR = struct.Struct("=HH")  # length, type


def _address_dump() -> tuple[IPAddress, ...] | None:
    """One RTM_GETADDR dump's local addresses; None when the kernel says the dump was
    interrupted by a change (then it may be incomplete)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(5)
        sock.bind((0, 0))
        request = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        sock.send(_NLMSG.pack(_NLMSG.size + len(request), _RTM_GETADDR,
                              _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0) + request)
        found: list[IPAddress] = []
        interrupted = False
        while True:
            data = sock.recv(1 << 16)
            offset = 0
            while offset + _NLMSG.size <= len(data):
                length, kind, flags, _seq, _port = _NLMSG.unpack_from(data, offset)
                if length < _NLMSG.size or offset + length > len(data):
                    raise NetfenceError("reading the host's addresses: a malformed netlink "
                                        "message")
                interrupted = interrupted or bool(flags & _NLM_F_DUMP_INTR)
                if kind == _NLMSG_DONE:
                    return None if interrupted else tuple(found)
                if kind == _NLMSG_ERROR:
                    err = -struct.unpack_from("=i", data, offset + _NLMSG.size)[0]
                    raise NetfenceError(f"reading the host's addresses: {os.strerror(err)}")
                if kind == _RTM_NEWADDR:
                    address = _local_address(data[offset + _NLMSG.size:offset + length])
                    if address is not None:
                        found.append(address)
                offset += (length + 3) & ~3


def _local_address(message: bytes) -> IPAddress | None:
    """An RTM_NEWADDR's local address: IFA_LOCAL where given (a point-to-point link's
    IFA_ADDRESS is its peer), else IFA_ADDRESS, as `ip` reads it."""
    family = _IFADDRMSG.unpack_from(message)[0]
    size = {socket.AF_INET: 4, socket.AF_INET6: 16}.get(family)
    if size is None:
        return None
    attributes: dict[int, bytes] = {}
    offset = _IFADDRMSG.size
    while offset + _RTATTR.size <= len(message):
        length, kind = _RTATTR.unpack_from(message, offset)
        if length < _RTATTR.size:
            break
        attributes.setdefault(kind, message[offset + _RTATTR.size:offset + length])
        offset += (length + 3) & ~3
    raw = attributes.get(_IFA_LOCAL) or attributes.get(_IFA_ADDRESS)
    if raw is None or len(raw) != size:
        return None
    return ipaddress.ip_address(raw)


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
