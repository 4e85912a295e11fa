"""runtimes/kubernetes/netpol.py: the NetworkPolicies' content, read as the API defines it
(tests/support/kubernetes.allows): who may talk to whom, at which ports."""

from __future__ import annotations

from typing import Any

import pytest

from netfence.backends import get_backend
from netfence.runtimes.kubernetes.manifests import render
from netfence.runtimes.kubernetes.objects import labels
from tests.support.kubernetes import (
    CLUSTER_DNS,
    Json,
    allows,
    by_kind,
    cluster,
    workload_spec,
)

WORKLOAD = labels("web", "workload")
FENCE = labels("web", "fence")
ELSE = {"app": "something-else"}  # another pod of the namespace
KUBE_DNS = {"k8s-app": "kube-dns"}
PUBLIC = "93.184.215.14"


def policies(profile: str = "fetch", transport: str = "stdio", proxy: str = "envoy",
             **changes: Any) -> tuple[Json, Json]:
    objects = render(workload_spec(profile, transport, proxy, **changes), get_backend(proxy),
                     cluster())
    found = by_kind(objects, "NetworkPolicy")
    return found["web-workload"], found["web-fence"]


@pytest.mark.parametrize("proxy", ["envoy", "squid"])
@pytest.mark.parametrize("transport", ["stdio", "streamable-http"])
def test_the_workload_talks_to_its_fence_only(proxy: str, transport: str) -> None:
    workload, _ = policies("network", transport, proxy)
    assert workload["spec"]["podSelector"]["matchLabels"].items() <= WORKLOAD.items()
    assert workload["spec"]["policyTypes"] == ["Ingress", "Egress"]
    for port, protocol in ((3128, "TCP"), (53, "UDP"), (53, "TCP")):
        assert allows(workload, "egress", labels=FENCE, port=port, protocol=protocol)
    # Nothing else: not the fence's other ports, not its ingress, no other pod, no address.
    assert not allows(workload, "egress", labels=FENCE, port=8080)
    assert not allows(workload, "egress", labels=FENCE, port=15001)
    assert not allows(workload, "egress", labels=ELSE, port=3128)
    assert not allows(workload, "egress", labels=FENCE, namespace="other", port=3128)
    assert not allows(workload, "egress", labels=KUBE_DNS, namespace="kube-system", port=53,
                      protocol="UDP")
    for ip, port in ((PUBLIC, 443), (CLUSTER_DNS, 53), ("10.96.0.1", 443),
                     ("169.254.169.254", 80)):
        assert not allows(workload, "egress", ip=ip, port=port)


def test_a_stdio_workload_hears_nobody() -> None:
    workload, _ = policies("fetch", "stdio")
    assert workload["spec"]["ingress"] == []
    assert not allows(workload, "ingress", labels=FENCE, port=8000)


def test_an_http_workload_hears_its_fence_at_its_port_only() -> None:
    workload, fence = policies("fetch", "sse")
    assert allows(workload, "ingress", labels=FENCE, port=8000)
    assert not allows(workload, "ingress", labels=FENCE, port=8001)
    assert not allows(workload, "ingress", labels=ELSE, port=8000)
    assert not allows(workload, "ingress", ip=PUBLIC, port=8000)
    # and the fence may reach it there
    assert allows(fence, "egress", labels=WORKLOAD, port=8000)
    assert not allows(fence, "egress", labels=WORKLOAD, port=22)


def test_the_fence_hears_its_workload_and_for_http_any_client_at_the_ingress() -> None:
    _, stdio_fence = policies("fetch", "stdio")
    _, http_fence = policies("fetch", "streamable-http")
    for fence in (stdio_fence, http_fence):
        assert fence["spec"]["podSelector"]["matchLabels"].items() <= FENCE.items()
        for port, protocol in ((3128, "TCP"), (53, "UDP"), (53, "TCP")):
            assert allows(fence, "ingress", labels=WORKLOAD, port=port, protocol=protocol)
            # Another pod has no use for the workload's proxy or DNS.
            assert not allows(fence, "ingress", labels=ELSE, port=port, protocol=protocol)
    assert not allows(stdio_fence, "ingress", labels=ELSE, port=8080)
    assert allows(http_fence, "ingress", labels=ELSE, port=8080)
    assert allows(http_fence, "ingress", ip=PUBLIC, port=8080)


def test_the_fence_reaches_the_internet_at_the_profile_ports_only() -> None:
    _, fence = policies("fetch")  # allow_port: [443, 80]
    assert allows(fence, "egress", ip=PUBLIC, port=443)
    assert allows(fence, "egress", ip=PUBLIC, port=80)
    assert allows(fence, "egress", ip="2606:2800:21f:cb07:6820:80da:af6b:8b2c", port=443)
    assert not allows(fence, "egress", ip=PUBLIC, port=22)
    assert not allows(fence, "egress", ip=PUBLIC, port=53, protocol="UDP")


@pytest.mark.parametrize("ip", [
    "10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1",  # private
    "127.0.0.1", "169.254.169.254", "0.0.0.0",  # loopback, metadata, this host
    "10.96.0.1", "10.244.3.4", "10.96.0.53",  # the API server's Service, a pod, the fence
    "::1", "fe80::1", "fd00::1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",
    "64:ff9b::a9fe:a9fe",
])
def test_the_fence_reaches_no_denied_range(ip: str) -> None:
    _, fence = policies("network")
    assert not allows(fence, "egress", ip=ip, port=443)


def test_a_lifted_range_opens_but_the_cluster_stays_closed() -> None:
    _, fence = policies("lifted")  # allow_cidr 10.0.0.0/8, ports 443 and 8443
    assert allows(fence, "egress", ip="10.1.2.3", port=8443)
    assert not allows(fence, "egress", ip="10.1.2.3", port=80)
    for ip in ("10.96.0.1", "10.100.0.5", "10.244.0.9", "10.96.0.53"):
        assert not allows(fence, "egress", ip=ip, port=443)
    assert not allows(fence, "egress", ip="172.16.0.1", port=443)  # not lifted


def test_a_fence_that_allows_nothing_dials_nothing_but_its_resolver() -> None:
    _, fence = policies("none")
    assert not allows(fence, "egress", ip=PUBLIC, port=443)
    assert not allows(fence, "egress", ip=PUBLIC, port=80)
    assert allows(fence, "egress", ip=CLUSTER_DNS, port=53, protocol="UDP")


def test_dns_goes_to_the_upstream_resolver_only() -> None:
    # The cluster DNS: its Service address, and its pods (policies see those).
    _, fence = policies("network")
    for protocol in ("UDP", "TCP"):
        assert allows(fence, "egress", ip=CLUSTER_DNS, port=53, protocol=protocol)
        assert allows(fence, "egress", labels=KUBE_DNS, namespace="kube-system", port=53,
                      protocol=protocol)
    assert not allows(fence, "egress", labels=KUBE_DNS, namespace="mcp", port=53,
                      protocol="UDP")
    assert not allows(fence, "egress", ip=PUBLIC, port=53, protocol="UDP")
    assert not allows(fence, "egress", ip="10.96.0.11", port=53, protocol="UDP")
    assert not allows(fence, "egress", labels=ELSE, port=53, protocol="UDP")
    # A public resolver: that address at its port, no cluster DNS pods.
    _, public = policies("network", dns="9.9.9.9")
    assert allows(public, "egress", ip="9.9.9.9", port=53, protocol="UDP")
    assert not allows(public, "egress", labels=KUBE_DNS, namespace="kube-system", port=53,
                      protocol="UDP")
    assert not allows(public, "egress", ip=CLUSTER_DNS, port=53, protocol="UDP")


def test_an_upstream_on_another_port_is_reached_there() -> None:
    from netfence.backends import Endpoint

    _, fence = policies("network", dns_upstream=Endpoint("9.9.9.9", 5353))
    assert allows(fence, "egress", ip="9.9.9.9", port=5353, protocol="UDP")
    assert not allows(fence, "egress", ip="9.9.9.9", port=53, protocol="UDP")


def test_the_evaluator_reads_policies_as_the_api_does() -> None:
    # ipBlock except, port lists, selectors: checked on a hand-written policy.
    policy: Json = {"metadata": {"namespace": "ns"}, "spec": {
        "policyTypes": ["Egress"],
        "egress": [
            {"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
             "ports": [{"protocol": "TCP", "port": 443}]},
            {"to": [{"podSelector": {"matchLabels": {"a": "b"}}}]},
        ]}}
    assert allows(policy, "egress", ip="10.2.0.1", port=443)
    assert not allows(policy, "egress", ip="10.1.0.1", port=443)
    assert not allows(policy, "egress", ip="10.2.0.1", port=443, protocol="UDP")
    assert allows(policy, "egress", labels={"a": "b", "c": "d"}, port=1)
    assert not allows(policy, "egress", labels={"a": "b"}, namespace="other", port=1)
