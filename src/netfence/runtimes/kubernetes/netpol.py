"""The NetworkPolicies: who may talk to whom, at which ports.

- The workload's pods: egress only to the fence's pods, at the proxy (3128/TCP) and DNS
  (53/UDP and TCP) ports; ingress only from the fence's pods at the workload's port (HTTP
  transports), else none at all.
- The fence's pods: ingress from the workload's pods at the proxy and DNS ports, and from
  anywhere at the ingress port (HTTP transports); egress to the internet at the profile's
  ports, less every range the fence itself denies (loopback, link-local, private and
  special ranges unless lifted, the cluster's own ranges), to the upstream resolver, and
  to the workload's pods at its port (HTTP transports).

Policies apply after a Service's address is translated to a pod's, so the rules name pods
(by label) and pod ports, never a Service's cluster IP. NetworkPolicy cannot decide by
name or by the address a name resolves to: that stays with the fence (its policy denies
the cluster's ranges, the API server's and the metadata service's addresses).
"""

from __future__ import annotations

import ipaddress

from netfence.backends import DNS_PORT, Endpoint
from netfence.policy import Policy
from netfence.profile.model import IPNetwork
from netfence.runtimes.base import WORKLOAD_PROXY_PORT, WorkloadSpec
from netfence.runtimes.kubernetes.cluster import Cluster
from netfence.runtimes.kubernetes.fence import INGRESS_PORT
from netfence.runtimes.kubernetes.objects import (
    FENCE,
    WORKLOAD,
    Json,
    metadata,
    port,
    selector,
)

# Where the cluster DNS's pods are found on most clusters (kubeadm, k3s, GKE, EKS, AKS
# label CoreDNS or kube-dns so): the fence's rule when its upstream is inside the cluster.
CLUSTER_DNS_PODS: Json = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
}


def _pods(name: str, component: str) -> Json:
    return {"podSelector": {"matchLabels": selector(name, component)}}


def _workload_side_ports() -> list[Json]:
    return [port(WORKLOAD_PROXY_PORT), port(DNS_PORT, "UDP"), port(DNS_PORT)]


def internet(policy: Policy) -> list[Json]:
    """Every address but those the fence's address stage denies, one block per family."""
    denied: dict[int, list[IPNetwork]] = {4: [], 6: []}
    for rule in policy.address_rules():
        for net in rule.networks:
            denied[net.version].append(net)
    blocks: list[Json] = []
    for cidr, version in (("0.0.0.0/0", 4), ("::/0", 6)):
        nets = ipaddress.collapse_addresses(denied[version])  # type: ignore[type-var]
        blocks.append({"ipBlock": {"cidr": cidr,
                                   "except": [str(n) for n in nets if n.prefixlen]}})
    return blocks


def fence_egress(spec: WorkloadSpec, policy: Policy, resolver: Endpoint) -> list[Json]:
    rules: list[Json] = []
    ports = None if policy.any_port else [port(p) for p in sorted(policy.ports)]
    # Nothing allowed (the `none` profile, or no port): the fence never dials out.
    if not policy.denies_everything and ports != []:
        rule: Json = {"to": internet(policy)}
        if ports is not None:
            rule["ports"] = ports
        rules.append(rule)
    address = ipaddress.ip_address(resolver.host)
    dns_ports = [port(resolver.port, "UDP"), port(resolver.port)]
    rules.append({"to": [{"ipBlock": {"cidr": f"{address}/{address.max_prefixlen}"}}],
                  "ports": dns_ports})
    if not address.is_global:
        # The cluster DNS's Service address is translated to its pods' before policies
        # apply: allow those pods too (a private resolver outside the cluster gets no more
        # than the ipBlock above).
        rules.append({"to": [CLUSTER_DNS_PODS], "ports": [port(DNS_PORT, "UDP"),
                                                          port(DNS_PORT)]})
    if spec.transport != "stdio":
        assert spec.target_port is not None
        rules.append({"to": [_pods(spec.name, WORKLOAD)], "ports": [port(spec.target_port)]})
    return rules


def policies(spec: WorkloadSpec, policy: Policy, cluster: Cluster) -> list[Json]:
    name, namespace = spec.name, cluster.namespace
    assert spec.dns_upstream is not None
    http = spec.transport != "stdio"
    workload_ingress: list[Json] = []
    fence_ingress: list[Json] = [{"from": [_pods(name, WORKLOAD)],
                                  "ports": _workload_side_ports()}]
    if http:
        assert spec.target_port is not None
        workload_ingress.append({"from": [_pods(name, FENCE)],
                                 "ports": [port(spec.target_port)]})
        # Clients, from anywhere: the ingress decides by the Host they send.
        fence_ingress.append({"ports": [port(INGRESS_PORT)]})
    workload = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(f"{name}-workload", namespace, name, WORKLOAD),
        "spec": {
            "podSelector": {"matchLabels": selector(name, WORKLOAD)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": workload_ingress,
            "egress": [{"to": [_pods(name, FENCE)], "ports": _workload_side_ports()}],
        },
    }
    fence = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(f"{name}-fence", namespace, name, FENCE),
        "spec": {
            "podSelector": {"matchLabels": selector(name, FENCE)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": fence_ingress,
            "egress": fence_egress(spec, policy, spec.dns_upstream),
        },
    }
    return [workload, fence]
