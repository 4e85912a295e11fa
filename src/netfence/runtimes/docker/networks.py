"""The fence's networks: one shared external network, one internal network per workload.

The external network is a plain bridge with NAT: the fence's proxies and DNS server reach
the outside through it. The internal network has no route out; the workload sits on it
alone with the fence. Engines still give the host an address on an internal network's
bridge (Podman 4 and Docker alike), which would let the workload reach every host service
listening on all addresses; where the engine runs on this host and netfence is root, that
address (and the bridge's IPv6 link-local one) is removed before the workload starts.

The external bridge's hardware address is pinned too: a Linux bridge otherwise takes the
lowest address of its ports, so a container joining or leaving (another workload's fence)
can change it, and every container whose ARP cache holds the old one loses its route out
until that entry expires, for seconds up to minutes. Netavark pins it itself from 1.9
(containers/netavark#833); Debian 12 ships 1.4, and Docker pins its bridges already.

Every run creates its own internal network; the shared external one is created by the
first run that needs it and removed by the last one that stops, under a file lock so that
concurrent runs never remove it from under each other.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from netfence.errors import NetfenceError, UsageError
from netfence.runtimes import state
from netfence.runtimes.docker.engine import (
    LABEL_MANAGED,
    LABEL_ROLE,
    LABEL_WORKLOAD,
    engine_errors,
    is_conflict,
)

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.networks import Network

log = logging.getLogger("netfence")

EXTERNAL_NETWORK = "netfence-external"
# Outside the state root, whose entries are all workloads; /run/lock is the FHS place.
LOCK_PATH = Path("/run/lock/netfence-docker-networks.lock")
LOCK_TIMEOUT = 60.0


def internal_network_name(workload: str) -> str:
    return f"{workload}-internal"


@dataclass(frozen=True)
class AddressPlan:
    """Fixed addresses on a workload's internal network, known before anything starts:
    the proxies' configs name the DNS server and the workload before those run."""

    subnet: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address | None
    dns: str
    egress: str
    ingress: str
    workload: str

    def address_of(self, role: str) -> str:
        """A fence role's address ("dns", "egress", "ingress")."""
        return {"dns": self.dns, "egress": self.egress, "ingress": self.ingress}[role]


def plan_addresses(subnet: str, gateway: str | None) -> AddressPlan:
    """The first four usable addresses of the subnet, skipping the gateway.

    An engine may not report the gateway (Docker Engine leaves it out for a network created
    with a subnet alone, and its bridge holds the first address all the same), so the
    subnet's first address is never planned either, and stands for the gateway when none
    is known: both engines give that one to the bridge by default."""
    net = ipaddress.ip_network(subnet, strict=False)
    if not isinstance(net, ipaddress.IPv4Network):
        raise NetfenceError(f"internal network subnet {subnet} is not IPv4")
    first = next(net.hosts(), None)
    gw = ipaddress.IPv4Address(gateway) if gateway else first
    free: list[str] = []
    for host in net.hosts():
        if host not in (gw, first):
            free.append(str(host))
        if len(free) == 4:
            break
    if len(free) < 4:
        raise NetfenceError(f"internal network subnet {subnet} is too small")
    return AddressPlan(net, gw, *free)


def subnet_of(network: Network) -> tuple[str, str | None]:
    """The IPv4 subnet and gateway the engine gave a network."""
    network.reload()
    for config in (network.attrs.get("IPAM") or {}).get("Config") or []:
        subnet = config.get("Subnet")
        if subnet and ":" not in subnet:
            return subnet, config.get("Gateway") or None
    raise NetfenceError(f"network {network.name} has no IPv4 subnet")


def labels(workload: str | None, role: str) -> dict[str, str]:
    out = {LABEL_MANAGED: "true", LABEL_ROLE: role}
    if workload is not None:
        out[LABEL_WORKLOAD] = workload
    return out


@contextlib.contextmanager
def networks_lock(timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Serialises creating, joining and removing the shared external network."""
    import filelock

    path = LOCK_PATH if LOCK_PATH.parent.is_dir() else state.STATE_ROOT.parent / LOCK_PATH.name
    # filelock opens with O_NOFOLLOW (since 3.20.1): /run/lock is world-writable.
    lock = filelock.FileLock(path, timeout=timeout, mode=0o600)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise NetfenceError("timed out waiting for another netfence run to finish setting "
                            "up its networks") from None
    except OSError as exc:
        raise NetfenceError(f"cannot open the network lock {path}: {exc.strerror}",
                            remedy="run netfence with sudo, as the runs holding it do") from None
    try:
        yield
    finally:
        lock.release()


def ensure_external(client: DockerClient) -> Network:
    """The shared external network; created if missing. Call with networks_lock held."""
    import docker.errors

    with engine_errors("external network"):
        try:
            return client.networks.get(EXTERNAL_NETWORK)
        except docker.errors.NotFound:
            pass
        try:
            return client.networks.create(EXTERNAL_NETWORK, driver="bridge",
                                          labels=labels(None, "external"))
        except docker.errors.APIError as exc:
            if is_conflict(exc):  # another engine user made it just now
                return client.networks.get(EXTERNAL_NETWORK)
            raise


# Internal networks get a subnet of ours: the fence gives its containers fixed addresses,
# which Docker Engine accepts only on a network created with a subnet (Podman on any).
# Clear of Docker's (172.17-31.x, 192.168.x) and Podman's (10.88.x, 10.89.x) default pools.
INTERNAL_POOL = ipaddress.IPv4Network("10.213.0.0/16")
_SUBNET_ATTEMPTS = 8


def taken_subnets(client: DockerClient) -> list[ipaddress.IPv4Network]:
    """IPv4 networks in use: the engine's networks and the host's own interfaces."""
    found: list[ipaddress.IPv4Network] = []
    with engine_errors("listing networks"):
        engine_networks = client.networks.list()
    for network in engine_networks:
        for config in (network.attrs.get("IPAM") or {}).get("Config") or []:
            with contextlib.suppress(ValueError, TypeError):
                net = ipaddress.ip_network(config.get("Subnet"), strict=False)
                if isinstance(net, ipaddress.IPv4Network):
                    found.append(net)
    for link in _host_links():
        infos = link.get("addr_info")
        for info in infos if isinstance(infos, list) else []:
            if isinstance(info, dict) and info.get("family") == "inet":
                with contextlib.suppress(ValueError, TypeError):
                    found.append(ipaddress.IPv4Interface(
                        f"{info['local']}/{info['prefixlen']}").network)
    return found


def free_subnet(taken: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """The first /24 of INTERNAL_POOL that overlaps nothing taken."""
    for candidate in INTERNAL_POOL.subnets(new_prefix=24):
        if not any(candidate.overlaps(net) for net in taken):
            return candidate
    raise NetfenceError(f"no free /24 left in {INTERNAL_POOL} for an internal network",
                        remedy="stop workloads you no longer need")


def create_internal(client: DockerClient, workload: str) -> Network:
    """The workload's internal network, on a free subnet. Call with networks_lock held."""
    import docker.errors
    from docker.types import IPAMConfig, IPAMPool

    name = internal_network_name(workload)
    taken = taken_subnets(client)
    with engine_errors("internal network"):
        for _ in range(_SUBNET_ATTEMPTS):
            subnet = free_subnet(taken)
            try:
                # The gateway asked for, not left to the engine: Docker Engine would give
                # it all the same but not report it (plan_addresses).
                return client.networks.create(
                    name, driver="bridge", internal=True, labels=labels(workload, "internal"),
                    ipam=IPAMConfig(pool_configs=[IPAMPool(subnet=str(subnet),
                                                           gateway=str(subnet[1]))]))
            except docker.errors.APIError as exc:
                # Docker: "Pool overlaps ..."; Podman: "subnet ... is already used ...".
                text = str(exc).lower()
                if "overlap" in text or ("subnet" in text and "already used" in text):
                    taken.append(subnet)  # another engine user took it meanwhile
                    continue
                if is_conflict(exc):
                    raise UsageError(f"a network named {name!r} already exists",
                                     remedy=f"netfence stop {workload} --runtime docker"
                                     ) from None
                raise
        raise NetfenceError(f"could not find a free subnet for {name}")


def _attached(client: DockerClient, network: str) -> bool:
    """Whether any container (running or not) is on the network."""
    with engine_errors():
        # Sparse: the list alone, not an inspection of each container, which fails for
        # one that another workload's teardown removes meanwhile.
        return bool(client.containers.list(all=True, filters={"network": network},
                                           sparse=True))


def remove_external_if_unused(client: DockerClient) -> None:
    """Remove the shared external network when no container uses it any more."""
    import docker.errors

    with networks_lock(), engine_errors("external network"):
        if _attached(client, EXTERNAL_NETWORK):
            return
        try:
            client.networks.get(EXTERNAL_NETWORK).remove()
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            # In use after all (a container of another engine user): leave it.
            log.info("external network kept: %s", exc)


def remove_network(client: DockerClient, name: str) -> None:
    import docker.errors

    with engine_errors(f"network {name}"), contextlib.suppress(docker.errors.NotFound):
        client.networks.get(name).remove()


# --- the host's side of an internal bridge --------------------------------------------


def _host_links() -> list[dict[str, object]]:
    """The host's interfaces and addresses; an error when they cannot be read, since a
    bridge that cannot be inspected cannot be shown to carry no host address."""
    try:
        done = subprocess.run(["ip", "-json", "address", "show"], capture_output=True,
                              text=True, timeout=10)
        links = json.loads(done.stdout or "[]") if done.returncode == 0 else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        links = None
    if not isinstance(links, list):
        raise NetfenceError("cannot read the host's interfaces (`ip -json address show`)",
                            remedy="apt-get install iproute2")
    return links


def bridge_carrying(address: str, links: list[dict[str, object]]) -> str | None:
    """The host interface that has `address` (the internal network's gateway)."""
    for link in links:
        infos = link.get("addr_info")
        if not isinstance(infos, list):
            continue
        if any(isinstance(i, dict) and i.get("local") == address for i in infos):
            name = link.get("ifname")
            return name if isinstance(name, str) else None
    return None


def bridge_of(plan: AddressPlan) -> str | None:
    """The host bridge of the internal network (found by its gateway address, so only
    while it still has it); None when the engine is elsewhere or gave it none."""
    return bridge_carrying(str(plan.gateway), _host_links()) if plan.gateway else None


def strip_host_addresses(plan: AddressPlan) -> bool:
    """Remove the host's addresses from the internal network's bridge, if we can.

    True when the bridge carries no host address now (or was not found: the engine is
    elsewhere or gave none); False when an address is there and could not be removed.
    """
    if plan.gateway is None:
        return True
    links = _host_links()
    bridge = bridge_carrying(str(plan.gateway), links)
    if bridge is None:
        return True
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["ip", "address", "flush", "dev", bridge], capture_output=True,
                          timeout=10)
    # The IPv6 link-local address would reach the host as well.
    with contextlib.suppress(OSError):
        Path(f"/proc/sys/net/ipv6/conf/{bridge}/disable_ipv6").write_text("1\n")
    return done.returncode == 0


def pin_bridge_address(gateway: str | None) -> None:
    """Fix the hardware address of the bridge carrying `gateway` at its current value.

    Best effort: without root, or with the engine on another host, the bridge is left as
    the engine made it (the cost is a stall, not a way out of the fence).
    """
    if gateway is None:
        return
    links = _host_links()
    bridge = bridge_carrying(gateway, links)
    address = next((link.get("address") for link in links if link.get("ifname") == bridge),
                   None)
    if bridge is None or not isinstance(address, str) or os.geteuid() != 0:
        return
    # 3 is NET_ADDR_SET: someone already chose this address, and the kernel keeps it.
    with contextlib.suppress(OSError):
        if Path(f"/sys/class/net/{bridge}/addr_assign_type").read_text().strip() == "3":
            return
    # Setting the address it has marks it chosen: no change now, and none later.
    done = subprocess.run(["ip", "link", "set", "dev", bridge, "address", address],
                          capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        log.info("could not pin the address of %s: %s", bridge, done.stderr.strip())


# --- Docker's FORWARD rules ------------------------------------------------------------

# Docker Engine's chain for its users' rules, which its FORWARD chain jumps to first.
DOCKER_USER = "DOCKER-USER"


def _rule_comment(workload: str) -> str:
    return f"netfence:{workload}"


def _iptables(*args: str) -> subprocess.CompletedProcess[str] | None:
    """`iptables` (the one Docker runs, found on PATH), or None when it cannot run."""
    try:
        return subprocess.run(["iptables", "-w", "10", *args], capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None


def bridge_rule(bridge: str, workload: str) -> list[str]:
    """The DOCKER-USER rule that lets an internal bridge's own traffic through."""
    return [DOCKER_USER, "-i", bridge, "-o", bridge, "-m", "comment", "--comment",
            _rule_comment(workload), "-j", "ACCEPT"]


def accept_bridged(bridge: str, workload: str) -> bool | None:
    """Let the traffic between the ports of `bridge` (the workload's internal network)
    through Docker's FORWARD chain, where Docker's chains exist; None when they do not.

    br_netfilter sends bridged frames through FORWARD, where Docker drops what an internal
    network's port sends to an address outside its subnet, and what comes back from one
    (DOCKER-ISOLATION-STAGE-1): exactly the workload's redirected connections, which cross
    the bridge to the egress container with their original destination. Where Docker set
    the FORWARD policy to DROP, a Podman internal network's traffic is dropped too (netavark
    accepts nothing for one). The rule names only this bridge as both ends: nothing leaves
    it. True when it is in place."""
    listed = _iptables("-S", DOCKER_USER)
    if listed is None or listed.returncode != 0:
        return None
    done = _iptables("-I", *bridge_rule(bridge, workload))
    if done is None or done.returncode != 0:
        log.info("could not add a %s rule for %s: %s", DOCKER_USER, bridge,
                 done.stderr.strip() if done else "iptables did not run")
        return False
    return True


def remove_bridged(workload: str) -> None:
    """Remove the workload's DOCKER-USER rules (found by their comment); none is fine."""
    if os.geteuid() != 0:
        return
    listed = _iptables("-S", DOCKER_USER)
    if listed is None or listed.returncode != 0:
        return
    for line in listed.stdout.splitlines():
        words = shlex.split(line)
        if words[:2] == ["-A", DOCKER_USER] and _rule_comment(workload) in words:
            _iptables("-D", *words[1:])
