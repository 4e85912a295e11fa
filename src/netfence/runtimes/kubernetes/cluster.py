"""What the manifests need to know of the cluster, and how its pods find each other.

A cluster gives a Service a stable address, but a pod's resolv.conf takes addresses only,
never a Service's name: the fence's Service therefore gets a fixed cluster IP (`--fence-ip`,
a free address of the Service range), which the workload uses as its DNS server and its
proxy. The fence's ingress reaches the workload by its Service's name, resolved at the
fence's upstream resolver (the cluster DNS), as every other name the fence resolves.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from netfence.errors import UsageError
from netfence.policy import Policy, compile_policy
from netfence.profile.hosts import IPAddress
from netfence.profile.model import IPNetwork
from netfence.runtimes.base import WorkloadSpec


@dataclass(frozen=True)
class Cluster:
    """fence_ip: the fence Service's cluster IP. cidrs: the cluster's own ranges (pods,
    Services, nodes, the API server's address), denied to the workload whatever its
    profile lifts. domain: the cluster's DNS domain."""

    fence_ip: IPAddress
    namespace: str = "default"
    cidrs: tuple[IPNetwork, ...] = ()
    domain: str = "cluster.local"

    def __post_init__(self) -> None:
        if self.cidrs and not any(self.fence_ip in net for net in self.cidrs):
            raise UsageError(
                f"--fence-ip {self.fence_ip} is in none of the --cluster-cidr ranges",
                remedy="pick a free address of the cluster's Service range")


@dataclass(frozen=True)
class Addresses:
    """How the pods find each other: `fence` is what the workload dials for its proxy and
    DNS, `workload` what the fence's ingress dials (an address, or a name it resolves)."""

    fence: str
    workload: str


def cluster_addresses(spec: WorkloadSpec, cluster: Cluster) -> Addresses:
    """On a cluster: the fence Service's fixed IP, the workload Service's full name."""
    return Addresses(fence=str(cluster.fence_ip),
                     workload=f"{spec.name}.{cluster.namespace}.svc.{cluster.domain}")


def fence_policy(spec: WorkloadSpec, cluster: Cluster) -> Policy:
    """The workload's policy, with the cluster's ranges and the fence's own address denied
    as the host's are on one machine: no --allow-cidr opens them."""
    if spec.profile.network.outbound.allow_cidr and not cluster.cidrs:
        raise UsageError(
            "allow_cidr on a cluster needs the cluster's own ranges, so that they stay denied",
            remedy="pass --cluster-cidr for the pod, Service and node ranges")
    own: tuple[IPAddress | IPNetwork, ...] = (*cluster.cidrs, cluster.fence_ip)
    return compile_policy(spec.profile, own)


def parse_cidrs(values: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    out: list[IPNetwork] = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise UsageError(f"--cluster-cidr {value!r}: expected a CIDR such as "
                             "10.96.0.0/12") from None
    return tuple(out)


def parse_ip(value: str, option: str) -> IPAddress:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise UsageError(f"{option} {value!r}: expected an IP address") from None
