"""The kubernetes target's tests: workload specs to render, schema validation, and a small
evaluator of NetworkPolicy rules (who may talk to whom) as the API defines them."""

from __future__ import annotations

import functools
import ipaddress
from pathlib import Path
from typing import Any

from netfence.backends import Endpoint
from netfence.profile import load_profile, with_overrides
from netfence.runtimes.base import WorkloadSpec
from netfence.runtimes.kubernetes.cluster import Cluster

Json = dict[str, Any]
REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
FENCE_IP = "10.96.0.53"
CLUSTER_DNS = "10.96.0.10"
CLUSTER_CIDRS = ("10.96.0.0/12", "10.244.0.0/16")
TRANSPORTS = ("stdio", "sse", "streamable-http")
# Built-ins, the examples, and overrides: names, ports, a lifted private range.
PROFILES: dict[str, tuple[str, dict[str, tuple[Any, ...]]]] = {
    "none": ("none", {}),
    "network": ("network", {}),
    "fetch": (str(EXAMPLES / "fetch.yaml"), {}),
    "github": (str(EXAMPLES / "github.yaml"), {}),
    "filesystem": (str(EXAMPLES / "filesystem.yaml"), {}),
    "lifted": ("none", {"allow_host": ("api.example.com", "*.corp.example"),
                        "allow_port": (443, 8443), "allow_cidr": ("10.0.0.0/8",)}),
}


def cluster(**changes: Any) -> Cluster:
    values: dict[str, Any] = {
        "fence_ip": ipaddress.ip_address(FENCE_IP),
        "namespace": "mcp",
        "cidrs": tuple(ipaddress.ip_network(c) for c in CLUSTER_CIDRS),
    }
    values.update(changes)
    return Cluster(**values)


def workload_spec(profile: str = "fetch", transport: str = "stdio", proxy: str = "envoy",
                  name: str = "web", dns: str = CLUSTER_DNS, **changes: Any) -> WorkloadSpec:
    ref, overrides = PROFILES[profile]
    loaded = with_overrides(load_profile(ref), allow_host=overrides.get("allow_host", ()),
                            allow_port=overrides.get("allow_port", ()),
                            allow_cidr=overrides.get("allow_cidr", ()))
    values: dict[str, Any] = {
        "name": name, "command": ("ghcr.io/example/mcp:1.0", "--verbose"), "profile": loaded,
        "proxy": proxy, "transport": transport,
        "target_port": None if transport == "stdio" else 8000,
        "dns_upstream": Endpoint(dns, 53),
    }
    values.update(changes)
    return WorkloadSpec(**values)


@functools.cache
def _schemas() -> Any:
    import kubernetes_validate
    import kubernetes_validate.utils

    # It reads and parses each schema, the large shared definitions too, at every call:
    # once is enough here (nothing changes them).
    utils: Any = kubernetes_validate.utils
    utils.schema_contents = functools.lru_cache(maxsize=None)(utils.schema_contents)
    return kubernetes_validate


def validate(obj: Json) -> str:
    """Validate against the newest Kubernetes schemas kubernetes-validate bundles, strictly
    (an unknown field is an error); the version validated against."""
    schemas = _schemas()
    return str(schemas.validate(obj, schemas.latest_version(), strict=True))


def by_kind(objects: list[Json], kind: str) -> dict[str, Json]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


# --- NetworkPolicy semantics -------------------------------------------------------------


def _peer_matches(peer: Json, *, labels: dict[str, str] | None, namespace: str | None,
                  ip: str | None, own_namespace: str) -> bool:
    """One `from`/`to` entry: a podSelector (this namespace unless a namespaceSelector
    says otherwise), a namespaceSelector, both (AND), or an ipBlock."""
    if "ipBlock" in peer:
        if ip is None:
            return False
        address = ipaddress.ip_address(ip)
        block = peer["ipBlock"]
        cidr = ipaddress.ip_network(block["cidr"])
        if address.version != cidr.version or address not in cidr:
            return False
        return not any(address in ipaddress.ip_network(e) for e in block.get("except", []))
    if labels is None:
        return False
    if "namespaceSelector" in peer:
        wanted = peer["namespaceSelector"].get("matchLabels", {})
        if wanted != {} and wanted != {"kubernetes.io/metadata.name": namespace}:
            return False
    elif namespace != own_namespace:
        return False
    wanted = peer.get("podSelector", {}).get("matchLabels", {})
    return all(labels.get(k) == v for k, v in wanted.items())


def _port_matches(ports: list[Json] | None, port: int, protocol: str) -> bool:
    if ports is None:
        return True
    return any(p.get("protocol", "TCP") == protocol and p.get("port") == port for p in ports)


def allows(policy: Json, direction: str, *, port: int, protocol: str = "TCP",
           labels: dict[str, str] | None = None, namespace: str | None = None,
           ip: str | None = None) -> bool:
    """Whether the policy lets its pods talk to (egress) or hear from (ingress) a peer: a
    pod with `labels` in `namespace`, or an address `ip`."""
    spec = policy["spec"]
    kind = "Egress" if direction == "egress" else "Ingress"
    assert kind in spec["policyTypes"]
    peers_key = "to" if direction == "egress" else "from"
    own = policy["metadata"]["namespace"]
    for rule in spec.get(direction, []):
        peers = rule.get(peers_key)
        peer_ok = peers is None or any(
            _peer_matches(p, labels=labels, namespace=namespace or own, ip=ip,
                          own_namespace=own) for p in peers)
        if peer_ok and _port_matches(rule.get("ports"), port, protocol):
            return True
    return False
