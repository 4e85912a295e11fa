"""What the namespace runtime's workloads share, with a fence of their own or from the
shared gateway: the namespace's name, the fence's loopback ports, and the sandbox's
argv, environment and resolv.conf."""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from netfence.errors import NetfenceError
from netfence.runtimes import netns, state
from netfence.runtimes.base import WorkloadSpec
from netfence.runtimes.namespace import sandbox

if TYPE_CHECKING:
    from netfence.runtimes.namespace.holder import Holder

LOOPBACK = "127.0.0.1"
LOOPBACK6 = "::1"
# Each loopback address the fence listens on in the namespace (redirects from IPv6
# addresses land on ::1).
LOOPBACKS = (LOOPBACK, LOOPBACK6) if netns.HAS_IPV6 else (LOOPBACK,)
# A minimal environment: the host's variables (tokens, cloud keys) stay out of the fence.
_PASSED_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TERM", "TZ")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


def ns_name(name: str) -> str:
    return f"netfence-{name}"


def workload_env(spec: WorkloadSpec, user: sandbox.SandboxUser,
                 fence_env: Mapping[str, str]) -> dict[str, str]:
    """The workload's environment: a few of the caller's variables, the user's, the ones
    asked for (--env), and what the fence needs (its proxy variables)."""
    env = {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}
    env.setdefault("PATH", DEFAULT_PATH)
    env.update(HOME=user.home, USER=user.name, LOGNAME=user.name)
    env.update(spec.env)
    env.update(fence_env)
    return env


def resolv_conf() -> int:
    """A pipe's read end holding the sandbox's resolv.conf (the fence's DNS)."""
    resolv_r, resolv_w = os.pipe()
    os.write(resolv_w, f"nameserver {LOOPBACK}\noptions timeout:2 attempts:2\n".encode())
    os.close(resolv_w)
    return resolv_r


def workload_argv(spec: WorkloadSpec, netns_file: Path, user: sandbox.SandboxUser,
                  env: Mapping[str, str], resolv_fd: int, info_fd: int,
                  pinned: Mapping[str, int], holder: Holder | None = None,
                  gate: int | None = None) -> list[str]:
    """The sandbox's argv for this workload, in the namespace at `netns_file` (`gate`:
    sandbox.sandbox_argv's)."""
    return sandbox.sandbox_argv(
        netns_file, user, spec.command, env, resolv_fd, info_fd,
        hidden=(*_private_roots(), netns.NETNS_DIR), files=spec.files, pinned=pinned,
        holder=holder, gate=gate)


def _private_roots() -> tuple[Path, ...]:
    """The state roots to hide, each made (0700) if missing: one that appeared after the
    start, inside a grant (a later rootless run from another kind of session), would
    show that fence's configs and admin socket to this workload."""
    roots = state.private_roots()
    for root in roots:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return roots


def free_port() -> int:
    """A loopback port free for TCP and UDP, below the kernel's ephemeral range: the
    proxies bind it a moment later, and a port from that range can be taken meanwhile as
    the source port of any outgoing connection or DNS query (seen: dnsmasq's UDP socket
    refused with "Address already in use")."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    first = max(1024, low // 2)
    for _ in range(_PORT_ATTEMPTS):
        port = random.randrange(first, low)
        if _port_free(port, socket.SOCK_STREAM) and _port_free(port, socket.SOCK_DGRAM):
            return port
    raise NetfenceError(f"no free loopback port found in {first}-{low - 1}")


_PORT_ATTEMPTS = 200


def _port_free(port: int, kind: socket.SocketKind) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
    return True
