"""backends/envoy/_rbac.py: the address stage, RBAC on the upstream address, agreeing with
Policy.address_reason."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netfence.policy import Policy
from tests.support.envoy_config import (
    UPSTREAM_IP,
    config,
    policy_for,
    rbac_reason,
    rbac_rules,
    walk,
)


def test_no_destination_ip_anywhere() -> None:
    for cfg in (
        config(policy_for({"outbound": {"allow_host": ["a.test"], "allow_cidr": ["10.0.0.0/8"]}})),
        config(policy_for({"outbound": {"insecure_allow_all": True}}), ingress=True),
    ):
        text = json.dumps(cfg)
        assert "destination_ip" not in text and "destination_port" not in text


def test_rbac_policies_are_reasons_and_use_the_upstream_matcher() -> None:
    cfg = config(policy_for({"outbound": {"allow_host": ["a.test"], "allow_cidr": ["10.0.0.0/8"]}}))
    policies = rbac_rules(cfg)["policies"]
    # One policy per address rule, named REASON@NETWORK: the log and the body name both.
    assert {name.partition("@")[0] for name in policies} == {
        "host_address",
        "link_local_address",
        "loopback_address",
        "private_address",
        "special_address",
    }
    assert "host_address@192.0.2.10/32" in policies
    assert "loopback_address@127.0.0.0/8" in policies
    # A lifted range is cut out (no not_rule that one lifted address could satisfy).
    assert "private_address@10.0.0.0/8" not in policies
    assert "private_address@192.168.0.0/16" in policies
    matchers = [n["matcher"] for n in walk(policies) if "matcher" in n]
    assert matchers and all(m["typed_config"]["@type"] == UPSTREAM_IP for m in matchers)
    assert "not_rule" not in json.dumps(policies)


ADDRESS_POLICIES: list[dict[str, object]] = [
    {"outbound": {"allow_host": ["a.test"]}},
    {"outbound": {"allow_host": ["a.test"], "allow_cidr": ["10.0.0.0/8", "fd00::/8"]}},
    {"outbound": {"allow_host": ["a.test"], "allow_cidr": ["192.0.2.0/24", "127.0.0.0/8"]}},
    {"outbound": {"insecure_allow_all": True, "allow_cidr": ["0.0.0.0/0", "::/0"]}},
]

INTERESTING = [
    "10.1.2.3",
    "127.0.0.1",
    "169.254.169.254",
    "192.0.2.10",
    "::ffff:192.0.2.10",
    "64:ff9b::a01:203",
    "::ffff:127.0.0.1",
    "fd00::1",
    "fe80::1",
    "::1",
    "::",
    "0.0.0.0",
    "8.8.8.8",
    "2606:4700::1111",
]


@pytest.mark.parametrize("network", ADDRESS_POLICIES)
@pytest.mark.parametrize("address", INTERESTING)
def test_rbac_reason_matches_the_reference_on_known_addresses(
    network: dict[str, object], address: str
) -> None:
    policy = policy_for(network)
    ip = ipaddress.ip_address(address)
    reason = policy.address_reason(ip)
    assert rbac_reason(config(policy), ip) == (reason.value if reason else None)


def _addresses_in_denied_ranges() -> st.SearchStrategy[
    ipaddress.IPv4Address | ipaddress.IPv6Address
]:
    nets = [r.network for r in Policy().denied]

    @st.composite
    def inside(draw: st.DrawFn) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        net = draw(st.sampled_from(nets))
        offset = draw(st.integers(0, net.num_addresses - 1))
        return net.network_address + offset

    return st.one_of(inside(), st.ip_addresses())


@settings(max_examples=200, deadline=None)
@given(
    ip=_addresses_in_denied_ranges(),
    which=st.sampled_from(range(len(ADDRESS_POLICIES))),
)
def test_rbac_reason_matches_the_reference(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, which: int
) -> None:
    policy = policy_for(ADDRESS_POLICIES[which])
    reason = policy.address_reason(ip)
    assert rbac_reason(config(policy), ip) == (reason.value if reason else None)
