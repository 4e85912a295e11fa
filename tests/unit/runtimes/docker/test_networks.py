"""The docker runtime's networks: address plans, bridges, names, labels, subnets."""

from __future__ import annotations

import ipaddress

import pytest

from netfence.errors import NetfenceError
from netfence.runtimes.docker import containers, engine, networks


def test_address_plan_skips_the_gateway() -> None:
    plan = networks.plan_addresses("10.89.3.0/24", "10.89.3.1")
    assert (plan.dns, plan.egress, plan.ingress, plan.workload) == (
        "10.89.3.2", "10.89.3.3", "10.89.3.4", "10.89.3.5")


def test_address_plan_without_gateway_starts_at_the_first_host() -> None:
    plan = networks.plan_addresses("172.20.0.0/16", None)
    assert plan.dns == "172.20.0.1" and plan.workload == "172.20.0.4"


def test_address_plan_rejects_tiny_and_ipv6_subnets() -> None:
    with pytest.raises(NetfenceError, match="too small"):
        networks.plan_addresses("10.0.0.0/30", "10.0.0.1")
    with pytest.raises(NetfenceError, match="not IPv4"):
        networks.plan_addresses("fd00::/64", None)


def test_bridge_is_found_by_its_gateway_address() -> None:
    links: list[dict[str, object]] = [
        {"ifname": "lo", "addr_info": [{"local": "127.0.0.1"}]},
        {"ifname": "podman2", "addr_info": [{"local": "10.89.3.1"}, {"local": "fe80::1"}]},
    ]
    assert networks.bridge_carrying("10.89.3.1", links) == "podman2"
    assert networks.bridge_carrying("10.89.9.1", links) is None


def test_names_and_labels() -> None:
    assert networks.internal_network_name("nf-abc") == "nf-abc-internal"
    assert containers.container_name("nf-abc", "egress") == "nf-abc-egress"
    labels = networks.labels("nf-abc", "dns")
    assert labels == {engine.LABEL_MANAGED: "true", engine.LABEL_ROLE: "dns",
                      engine.LABEL_WORKLOAD: "nf-abc"}


def test_internal_subnets_come_from_our_pool_and_skip_what_is_taken() -> None:
    pool = networks.INTERNAL_POOL
    assert networks.free_subnet([]) == ipaddress.IPv4Network(f"{pool.network_address}/24")
    first, second, third, fourth = list(pool.subnets(new_prefix=24))[:4]
    # An engine network on the first, a host's /23 (a VPN) over the third and fourth.
    taken = [first, ipaddress.IPv4Network(f"{third.network_address}/23")]
    assert networks.free_subnet(taken) == second
    assert networks.free_subnet([*taken, second]) == list(pool.subnets(new_prefix=24))[4]
    assert fourth.overlaps(taken[1])
    with pytest.raises(NetfenceError, match="no free /24"):
        networks.free_subnet([pool])
