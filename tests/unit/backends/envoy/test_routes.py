"""backends/envoy/_routes.py: the name and port stages (virtual hosts and routes) agreeing
with Policy.decide."""

from __future__ import annotations

import ipaddress
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netfence.backends.envoy import authority_regex
from netfence.policy import Policy, Reason
from netfence.profile.host_regex import VALID_HOST_RE
from tests.support.envoy_config import (
    config,
    hcm,
    policy_for,
    rbac_reason,
    route_reason,
    select_vhost,
    vhosts,
)


def test_empty_allowlist_denies_everything() -> None:
    cfg = config(Policy())
    routes = [r for v in vhosts(cfg) for r in v["routes"]]
    assert all("direct_response" in r and r["direct_response"]["status"] == 403 for r in routes)
    assert not any("route" in r for r in routes)
    names = [v["name"] for v in vhosts(cfg)]
    assert names == ["denied_name", "not_allowlisted"]
    assert vhosts(cfg)[-1]["domains"] == ["*"]
    assert {r["name"] for r in vhosts(cfg)[-1]["routes"]} == {
        "not_allowlisted", "unsupported_request"}


def test_none_mode_denies_everything_even_with_hosts() -> None:
    cfg = config(policy_for({"mode": "none", "outbound": {"allow_host": ["example.com"]}}))
    assert not any("route" in r for v in vhosts(cfg) for r in v["routes"])


def test_allow_all_makes_the_catch_all_the_allowed_vhost() -> None:
    cfg = config(policy_for({"outbound": {"insecure_allow_all": True}}))
    by_name = {v["name"]: v for v in vhosts(cfg)}
    assert set(by_name) == {"denied_name", "allowed"}
    assert by_name["allowed"]["domains"] == ["*"]
    assert "localhost" in by_name["denied_name"]["domains"]
    assert route_reason(cfg, "CONNECT", "anything.example", 443) == "allowed"
    assert route_reason(cfg, "GET", "LOCALHOST", None) == "denied_name"
    assert route_reason(cfg, "GET", "anything.example", 8080) == "port_not_allowed"


def test_wildcard_gives_both_domain_forms_and_domains_are_unique() -> None:
    cfg = config(
        policy_for(
            {
                "outbound": {
                    "allow_host": ["*.example.com", ".example.org", "example.com", "api.x.io"]
                }
            }
        )
    )
    (allowed,) = [v for v in vhosts(cfg) if v["name"] == "allowed"]
    assert allowed["domains"] == [
        "example.com",
        "*.example.com",
        "example.org",
        "*.example.org",
        "api.x.io",
    ]
    every = [d for v in vhosts(cfg) for d in v["domains"]]
    assert len(every) == len(set(every))


def test_ip_literals_are_domains_and_ipv6_is_bracketed() -> None:
    cfg = config(policy_for({"outbound": {"allow_host": ["192.0.2.1", "2001:DB8::1", "[::1]"]}}))
    (allowed,) = [v for v in vhosts(cfg) if v["name"] == "allowed"]
    assert allowed["domains"] == ["192.0.2.1", "[2001:db8::1]", "[::1]"]


def test_allowed_entries_colliding_with_denied_names_are_dropped() -> None:
    cfg = config(
        policy_for(
            {
                "outbound": {
                    "allow_host": [
                        "localhost",
                        "*.localhost",
                        "*.x.localhost",
                        "host.docker.internal",
                        "*.docker.internal",
                        "ok.test",
                    ]
                }
            }
        )
    )
    (allowed,) = [v for v in vhosts(cfg) if v["name"] == "allowed"]
    assert allowed["domains"] == ["docker.internal", "*.docker.internal", "ok.test"]
    # The exact denied name beats the allowed wildcard, as the reference decides.
    assert route_reason(cfg, "CONNECT", "host.docker.internal", 443) == "denied_name"
    assert route_reason(cfg, "CONNECT", "a.x.localhost", 443) == "denied_name"
    assert route_reason(cfg, "CONNECT", "other.docker.internal", 443) == "allowed"


def test_only_denied_names_allowlisted_leaves_no_allowed_vhost() -> None:
    cfg = config(policy_for({"outbound": {"allow_host": ["localhost"]}}))
    assert [v["name"] for v in vhosts(cfg)] == ["denied_name", "not_allowlisted"]


def test_route_config_ignores_port_and_names_are_reasons() -> None:
    cfg = config(policy_for({"outbound": {"allow_host": ["a.test"]}}))
    assert hcm(cfg)["route_config"]["ignore_port_in_host_matching"] is True
    names = {r["name"] for v in vhosts(cfg) for r in v["routes"]}
    assert names == {"allowed", "denied_name", "not_allowlisted", "port_not_allowed",
                     "unsupported_request"}
    assert names <= {r.value for r in Reason}


@pytest.mark.parametrize(
    ("ports", "authority", "connect", "plain"),
    [
        ((80, 443), "example.com:443", True, True),
        ((80, 443), "example.com:4430", False, False),
        ((80, 443), "example.com:44", False, False),
        ((80, 443), "example.com", False, True),
        ((443,), "example.com", False, False),
        ((80, 443), "[2001:db8::1]:443", True, True),
        ((80, 443), "[2001:db8::1]", False, True),
        ((80, 443), "[::443]", False, True),
        ((443,), "[::443]", False, False),
        ((80, 443), "2001:db8::1:443", False, False),
        ((8443, 22), "git.test:22", True, True),
        ((80, 443), "example.com:", False, False),
        # Leading zeros are the same port, for the policy and for Envoy's DFP.
        ((80, 443), "example.com:0443", True, True),
        ((80, 443), "example.com:00080", True, True),
        ((443,), "example.com:04430", False, False),
        ((None), "example.com:8080", True, True),
        ((None), "example.com", False, True),
        ((None), "example.com:0", False, False),
    ],
)
def test_authority_port_regex(
    ports: tuple[int, ...] | None, authority: str, connect: bool, plain: bool
) -> None:
    assert bool(re.fullmatch(authority_regex(ports, default_port=None), authority)) is connect
    assert bool(re.fullmatch(authority_regex(ports, default_port=80), authority)) is plain


def test_allowed_routes_check_the_port_then_fall_back_to_403() -> None:
    cfg = config(policy_for({"outbound": {"allow_host": ["a.test"], "allow_port": [8443]}}))
    (allowed,) = [v for v in vhosts(cfg) if v["name"] == "allowed"]
    checks = [r for r in allowed["routes"] if r["name"] != "port_not_allowed" and
              "route" not in r]
    assert {r["name"] for r in checks} == {"unsupported_request"}
    connect, plain, *rest = [r for r in allowed["routes"] if r not in checks]
    assert connect["match"]["connect_matcher"] == {}
    assert connect["match"]["headers"][0]["name"] == ":authority"
    assert connect["route"]["upgrade_configs"] == [
        {"upgrade_type": "CONNECT", "connect_config": {}}
    ]
    assert plain["match"]["prefix"] == "/"
    for route in (connect, plain):
        assert route["route"]["cluster"] == "dynamic_forward_proxy"
        assert route["route"]["timeout"] == "0s" and route["route"]["idle_timeout"] == "0s"
    assert {r["name"] for r in rest} == {"port_not_allowed"}
    assert all(r["direct_response"]["status"] == 403 for r in rest)
    assert route_reason(cfg, "CONNECT", "a.test", 8443) == "allowed"
    assert route_reason(cfg, "CONNECT", "a.test", 443) == "port_not_allowed"
    assert route_reason(cfg, "GET", "a.test", None) == "port_not_allowed"


def test_empty_port_list_allows_no_route() -> None:
    cfg = config(policy_for({"outbound": {"allow_host": ["a.test"], "allow_port": []}}))
    assert not any("route" in r for v in vhosts(cfg) for r in v["routes"])


NAMES = st.sampled_from(
    [
        "example.com",
        "api.example.com",
        "deep.api.example.com",
        "example.org",
        "x.example.org",
        "localhost",
        "a.localhost",
        "host.docker.internal",
        "other.docker.internal",
        "pypi.org",
        "files.pypi.org",
        "unlisted.test",
        "192.0.2.1",
        "192.0.2.2",
        "[2001:db8::1]",
        "[2001:db8::2]",
        # Names the policy cannot read: under an allowed wildcard, a denied name, none.
        "-x.example.com",
        "x-.api.example.com",
        "x" * 64 + ".example.com",
        ".".join(["x" * 62] * 4) + ".example.com",
        "-x.localhost",
        "a..pypi.org",
        "-x.unlisted.test",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    host=NAMES,
    upper=st.booleans(),
    port=st.sampled_from([None, 22, 80, 443, 8443]),
    method=st.sampled_from(["GET", "CONNECT"]),
)
def test_name_and_port_stages_agree_with_policy_decide(
    host: str, upper: bool, port: int | None, method: str
) -> None:
    policy = policy_for(
        {
            "outbound": {
                "allow_host": [
                    "*.example.com",
                    "example.org",
                    "*.docker.internal",
                    "pypi.org",
                    "192.0.2.1",
                    "2001:db8::1",
                ],
                "allow_port": [80, 443, 8443],
            }
        }
    )
    if method == "CONNECT" and port is None:
        port = 443
    cfg = config(policy)
    got = route_reason(cfg, method, host.upper() if upper else host, port)
    if got == "allowed" and (host[0].isdigit() or host.startswith("[")):
        # An IP literal is dialed as written: the address stage follows the route.
        got = rbac_reason(cfg, ipaddress.ip_address(host.strip("[]"))) or got
    want = policy.decide(host.strip("[]"), 80 if port is None else port).reason.value
    assert got == want


INVALID_HOSTS = ["-x.example.com", "x" * 64 + ".example.com", "a..example.com",
                 ".".join(["x" * 62] * 4) + ".example.com", "-x.localhost", "-x.other.test"]


@pytest.mark.parametrize("network", [
    {"outbound": {"allow_host": ["*.example.com"]}},
    {"outbound": {"insecure_allow_all": True}},
    {"outbound": {"allow_host": ["*.example.com"], "allow_port": []}},
    {},
])
def test_invalid_hosts_are_refused_first_by_the_host_check(network: dict[str, object]) -> None:
    policy = policy_for(network)
    cfg = config(policy)
    for host in INVALID_HOSTS:
        assert policy.decide(host, 443).reason is Reason.INVALID_HOST
        for method, port in (("GET", None), ("GET", 80), ("CONNECT", 443)):
            assert route_reason(cfg, method, host, port) == "invalid_host", (host, method)
        # An https:// URL is refused as such first, as before the host check was a filter.
        assert route_reason(cfg, "GET", host, None, scheme="https") == "unsupported_request"


def test_the_host_check_is_one_filter_before_anything_resolves() -> None:
    # Its regexes once per HCM, not in every virtual host's routes: they were over half
    # of the memory a workload's policy cost Envoy.
    cfg = config(policy_for({"outbound": {"allow_host": ["*.example.com", "a.test"]}}),
                 transparent=True)
    text = json.dumps(cfg)
    # The egress HCM's and the transparent one's.
    assert text.count(json.dumps(VALID_HOST_RE)[1:-1]) == 2
    filters = hcm(cfg)["http_filters"]
    assert filters[0]["name"] == "netfence.host_check"
    assert filters[1]["name"] == "envoy.filters.http.dynamic_forward_proxy"
    assert filters[0]["typed_config"]["rules"]["action"] == "DENY"
    assert list(filters[0]["typed_config"]["rules"]["policies"]) == ["invalid_host"]
    # Off only on the routes refusing another scheme (they come first in their vhost).
    for vhost in vhosts(cfg):
        for route in vhost["routes"]:
            per_route = route.get("typed_per_filter_config", {})
            assert ("netfence.host_check" in per_route) == (
                route["name"] == "unsupported_request"), route["name"]
    assert "netfence.host_check" not in hcm(cfg)["route_config"].get(
        "typed_per_filter_config", {})


def test_rbac_is_off_on_direct_response_routes_only() -> None:
    cfg = config(policy_for({"outbound": {"allow_host": ["a.test"]}}))
    for vhost in vhosts(cfg):
        for route in vhost["routes"]:
            per_route = route.get("typed_per_filter_config", {})
            assert ("envoy.filters.http.rbac" in per_route) == ("direct_response" in route)


# --- ingress ---------------------------------------------------------------------------


def test_ingress_gates_on_inbound_hosts() -> None:
    policy = policy_for(
        {"inbound": {"allow_host": ["mcp.example.com", "*.corp.test", "::1", "LOCALHOST"]}}
    )
    cfg = config(policy, ingress=True)
    allowed = hcm(cfg, "ingress")["route_config"]["virtual_hosts"][0]
    assert allowed["domains"] == [
        "mcp.example.com",
        "corp.test",
        "*.corp.test",
        "[::1]",
        "localhost",
    ]
    for host in ("mcp.example.com", "a.corp.test", "evil.test", "127.0.0.1"):
        chosen = select_vhost(hcm(cfg, "ingress")["route_config"]["virtual_hosts"], host)
        assert (chosen is allowed) is policy.inbound_allowed(host)
