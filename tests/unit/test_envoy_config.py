"""Shape of the generated Envoy bootstrap, and its decisions agreeing with Policy.decide.

The real binary validates and serves these configs in tests/integration; here small
evaluators of the vhost/route/RBAC JSON check the logic against the reference decision.
"""

from __future__ import annotations

import ipaddress
import json
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netfence.backends.base import Endpoint, Placement, proxy_env, write_setup
from netfence.backends.envoy import (
    ADMIN_SOCKET_NAME,
    BOOTSTRAP_NAME,
    EGRESS_LOG_NAME,
    EnvoyProxy,
    authority_regex,
    deny_body,
)
from netfence.policy import Policy, Reason, compile_policy
from netfence.profile.loader import parse_profile

Json = dict[str, Any]
ENVOY = "/opt/test/envoy"
STATE = Path("/run/netfence/test-workload")
RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
UPSTREAM_IP = (
    "type.googleapis.com/envoy.extensions.rbac.matchers.upstream_ip_port.v3.UpstreamIpPortMatcher"
)
HOST_ADDRESS = ipaddress.ip_address("192.0.2.10")


def placement(
    *, ingress: bool = False, netns: Path | None = None, state: Path = STATE
) -> Placement:
    return Placement(
        state_dir=state,
        egress_listen=Endpoint("127.0.0.1", 3128, netns),
        workload_proxy="127.0.0.1:3128",
        dns_listen=Endpoint("127.0.0.1", 53),
        upstream_resolver=Endpoint("10.9.8.7", 5353),
        ingress_listen=Endpoint("127.0.0.1", 8080) if ingress else None,
        ingress_upstream=Endpoint("127.0.0.1", 9090) if ingress else None,
    )


def policy_for(network: dict[str, object]) -> Policy:
    profile = parse_profile({"network": network}, "test")
    return compile_policy(profile, host_addresses=[HOST_ADDRESS])


def config(policy: Policy, **kwargs: Any) -> Json:
    setup = EnvoyProxy(ENVOY).setup(policy, placement(**kwargs))
    (spec,) = setup.files
    loaded: Json = json.loads(spec.content)
    return loaded


def listener(cfg: Json, name: str) -> Json:
    found: list[Json] = [lst for lst in cfg["static_resources"]["listeners"] if lst["name"] == name]
    (only,) = found
    return only


def hcm(cfg: Json, name: str = "egress") -> Json:
    (chain,) = listener(cfg, name)["filter_chains"]
    (net_filter,) = chain["filters"]
    typed: Json = net_filter["typed_config"]
    return typed


def vhosts(cfg: Json, name: str = "egress") -> list[Json]:
    found: list[Json] = hcm(cfg, name)["route_config"]["virtual_hosts"]
    return found


def rbac_rules(cfg: Json) -> Json:
    (rbac,) = [f for f in hcm(cfg)["http_filters"] if f["name"] == "envoy.filters.http.rbac"]
    assert rbac["typed_config"]["@type"] == RBAC_TYPE
    rules: Json = rbac["typed_config"]["rules"]
    return rules


def walk(node: object) -> Iterator[Json]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


# --- small evaluators of the generated JSON ----------------------------------------------


def select_vhost(virtual_hosts: list[Json], host: str) -> Json:
    """Envoy's choice: exact domain, then the longest `*.suffix`, then `*`."""
    host = host.lower()
    for vhost in virtual_hosts:
        if host in vhost["domains"]:
            return vhost
    best: tuple[int, Json] | None = None
    for vhost in virtual_hosts:
        for domain in vhost["domains"]:
            wildcard = domain.startswith("*") and domain != "*" and host.endswith(domain[1:])
            if wildcard and (best is None or len(domain) > best[0]):
                best = (len(domain), vhost)
    if best is not None:
        return best[1]
    (fallback,) = [v for v in virtual_hosts if "*" in v["domains"]]
    return fallback


def header_matches(matcher: Json, headers: dict[str, str]) -> bool:
    value = headers[matcher["name"]]
    string_match = matcher["string_match"]
    if "exact" in string_match:
        hit = value == string_match["exact"]
    else:
        hit = re.fullmatch(string_match["safe_regex"]["regex"], value) is not None
    return hit != bool(matcher.get("invert_match"))


def select_route(vhost: Json, method: str, authority: str, scheme: str = "http") -> Json:
    headers = {":authority": authority, ":scheme": scheme}
    for route in vhost["routes"]:
        match = route["match"]
        if ("connect_matcher" in match) != (method == "CONNECT"):
            continue
        if all(header_matches(h, headers) for h in match.get("headers", [])):
            return route  # type: ignore[no-any-return]
    raise AssertionError(f"no route for {method} {authority}")


def route_reason(cfg: Json, method: str, host: str, port: int | None) -> str:
    authority = host if port is None else f"{host}:{port}"
    route = select_route(select_vhost(vhosts(cfg), host), method, authority)
    name: str = route["name"]
    return name


def permission_matches(rule: Json, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if "or_rules" in rule:
        return any(permission_matches(r, ip) for r in rule["or_rules"]["rules"])
    if "and_rules" in rule:
        return all(permission_matches(r, ip) for r in rule["and_rules"]["rules"])
    if "not_rule" in rule:
        return not permission_matches(rule["not_rule"], ip)
    if "matcher" in rule:
        assert rule["matcher"]["name"] == "envoy.rbac.matchers.upstream_ip_port"
        typed = rule["matcher"]["typed_config"]
        assert typed["@type"] == UPSTREAM_IP
        cidr = typed["upstream_ip"]
        net = ipaddress.ip_network(f"{cidr['address_prefix']}/{cidr['prefix_len']}")
        return ip in net
    raise AssertionError(f"unexpected permission {rule}")


def rbac_reason(cfg: Json, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """The DENY policy that matches, checking policies in name order as Envoy does."""
    rules = rbac_rules(cfg)
    assert rules["action"] == "DENY"
    policies: dict[str, Json] = rules["policies"]
    for name in sorted(policies):
        body = policies[name]
        assert body["principals"] == [{"any": True}]
        if any(permission_matches(p, ip) for p in body["permissions"]):
            return name.partition("@")[0]  # REASON@NETWORK
    return None


# --- the name and port stages -------------------------------------------------------------


def test_empty_allowlist_denies_everything() -> None:
    cfg = config(Policy())
    routes = [r for v in vhosts(cfg) for r in v["routes"]]
    assert all("direct_response" in r and r["direct_response"]["status"] == 403 for r in routes)
    assert not any("route" in r for r in routes)
    names = [v["name"] for v in vhosts(cfg)]
    assert names == ["denied_name", "not_allowlisted"]
    assert vhosts(cfg)[-1]["domains"] == ["*"]
    assert {r["name"] for r in vhosts(cfg)[-1]["routes"]} == {
        "not_allowlisted", "unsupported_request", "invalid_host"}


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
                     "unsupported_request", "invalid_host"}
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
    assert {r["name"] for r in checks} == {"unsupported_request", "invalid_host"}
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


# --- the address stage (RBAC) -------------------------------------------------------------


def test_no_destination_ip_anywhere() -> None:
    for cfg in (
        config(policy_for({"outbound": {"allow_host": ["a.test"], "allow_cidr": ["10.0.0.0/8"]}})),
        config(policy_for({"outbound": {"insecure_allow_all": True}}), ingress=True),
    ):
        text = json.dumps(cfg)
        assert "destination_ip" not in text and "destination_port" not in text


def test_http_filters_check_view_rbac_mark_dial_view_router() -> None:
    cfg = config(policy_for({"outbound": {"allow_host": ["a.test"]}}))
    filters = hcm(cfg)["http_filters"]
    assert [f["name"] for f in filters] == [
        "envoy.filters.http.dynamic_forward_proxy",
        "envoy.filters.http.rbac",
        "envoy.filters.http.set_filter_state",
        "netfence.dial_view",
        "envoy.filters.http.router",
    ]
    check, dial = filters[0]["typed_config"], filters[3]["typed_config"]
    assert check["save_upstream_address"] is True
    assert "save_upstream_address" not in dial
    # The check view resolves at the upstream resolver; the cluster dials from the dial
    # view, which resolves through the fence's own DNS (that refuses denied answers).
    (cluster,) = [
        c for c in cfg["static_resources"]["clusters"] if c["name"] == "dynamic_forward_proxy"
    ]
    assert cluster["cluster_type"]["name"] == "envoy.clusters.dynamic_forward_proxy"
    assert cluster["cluster_type"]["typed_config"]["dns_cache_config"] == dial["dns_cache_config"]
    assert check["dns_cache_config"]["name"] != dial["dns_cache_config"]["name"]
    for view, address in ((check, ("10.9.8.7", 5353)), (dial, ("127.0.0.1", 53))):
        resolver = view["dns_cache_config"]["typed_dns_resolver_config"]
        assert resolver["name"] == "envoy.network.dns_resolver.cares"
        assert resolver["typed_config"]["resolvers"] == [
            {"socket_address": {"address": address[0], "port_value": address[1]}}
        ]
        assert resolver["typed_config"]["use_resolvers_as_fallback"] is False


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


def test_rbac_is_off_on_direct_response_routes_only() -> None:
    cfg = config(policy_for({"outbound": {"allow_host": ["a.test"]}}))
    for vhost in vhosts(cfg):
        for route in vhost["routes"]:
            per_route = route.get("typed_per_filter_config", {})
            assert ("envoy.filters.http.rbac" in per_route) == ("direct_response" in route)


def test_every_denial_gets_a_body_naming_reason_and_range() -> None:
    cfg = config(policy_for({"outbound": {"allow_host": ["a.test"]}}))
    mappers = hcm(cfg)["local_reply_config"]["mappers"]
    by_expression = {
        m["filter"]["extension_filter"]["typed_config"]["expression"]:
            m["body_format_override"]["text_format_source"]["inline_string"]
        for m in mappers
    }
    for name in rbac_rules(cfg)["policies"]:
        reason, _, net = name.partition("@")
        expression = f"response.code_details == 'rbac_access_denied_matched_policy[{name}]'"
        assert by_expression[expression] == deny_body(Reason(reason), net)
    for reason in ("denied_name", "not_allowlisted", "port_not_allowed", "invalid_host",
                   "unsupported_request"):
        assert any(f"xds.route_name == '{reason}'" in e for e in by_expression), reason
    (dial,) = [m for m in mappers if "filter_state" in
               m["filter"]["extension_filter"]["typed_config"]["expression"]]
    assert dial["status_code"] == 403
    assert "denied_address_in_answer" in dial["body_format_override"]["text_format_source"][
        "inline_string"]


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


# --- listeners, admin, logs ---------------------------------------------------------------


def test_admin_is_a_private_unix_socket_in_the_state_dir() -> None:
    cfg = config(Policy())
    admin = cfg["admin"]["address"]
    assert set(admin) == {"pipe"}
    assert admin["pipe"]["path"] == str(STATE / ADMIN_SOCKET_NAME)
    assert admin["pipe"]["mode"] == 0o600


def test_egress_hcm_streams_and_tunnels() -> None:
    cfg = config(policy_for({"outbound": {"allow_host": ["a.test"]}}))
    egress = hcm(cfg)
    assert egress["upgrade_configs"] == [{"upgrade_type": "CONNECT"},
                                         {"upgrade_type": "websocket"}]
    assert egress["http_protocol_options"]["accept_http_10"] is True
    assert egress["strip_trailing_host_dot"] is True
    assert egress["stream_idle_timeout"] == "0s" and egress["request_timeout"] == "0s"
    assert egress["access_log_options"]["flush_log_on_tunnel_successfully_established"] is True
    (log,) = egress["access_log"]
    assert log["typed_config"]["path"] == str(STATE / EGRESS_LOG_NAME)
    fields = log["typed_config"]["log_format"]["json_format"]
    for command in (
        "%START_TIME%",
        "%REQ(:METHOD)%",
        "%REQ(:AUTHORITY)%",
        "%RESPONSE_CODE%",
        "%RESPONSE_CODE_DETAILS%",
        "%ROUTE_NAME%",
        "%UPSTREAM_HOST%",
        "%DOWNSTREAM_WIRE_BYTES_RECEIVED%",
        "%DOWNSTREAM_WIRE_BYTES_SENT%",
        "%DURATION%",
    ):
        assert command in fields.values()


def test_every_typed_config_names_its_type() -> None:
    cfg = config(policy_for({"outbound": {"allow_host": ["a.test"]}}), ingress=True)
    typed = [n["typed_config"] for n in walk(cfg) if "typed_config" in n]
    assert typed and all(t["@type"].startswith("type.googleapis.com/envoy.") for t in typed)


def test_egress_listener_address_and_netns() -> None:
    plain = listener(config(Policy()), "egress")["address"]["socket_address"]
    assert plain == {"address": "127.0.0.1", "port_value": 3128}
    ns = Path("/run/netns/nf-test")
    inside = listener(config(Policy(), netns=ns), "egress")["address"]["socket_address"]
    assert inside["network_namespace_filepath"] == str(ns)


def test_no_ingress_listener_without_ingress() -> None:
    cfg = config(Policy())
    assert [lst["name"] for lst in cfg["static_resources"]["listeners"]] == ["egress"]
    assert [c["name"] for c in cfg["static_resources"]["clusters"]] == ["dynamic_forward_proxy"]


def test_ingress_gates_on_loopback_names_by_default() -> None:
    cfg = config(Policy(), ingress=True)
    ingress = hcm(cfg, "ingress")
    assert ingress["route_config"]["ignore_port_in_host_matching"] is True
    assert ingress["stream_idle_timeout"] == "0s" and ingress["request_timeout"] == "0s"
    allowed, other = ingress["route_config"]["virtual_hosts"]
    assert allowed["domains"] == ["localhost", "127.0.0.1", "[::1]"]
    (route,) = allowed["routes"]
    assert route["route"] == {"cluster": "ingress_upstream", "timeout": "0s", "idle_timeout": "0s"}
    assert other["domains"] == ["*"]
    assert all(r["direct_response"]["status"] == 403 for r in other["routes"])
    (cluster,) = [c for c in cfg["static_resources"]["clusters"] if c["name"] == "ingress_upstream"]
    assert cluster["type"] == "STATIC"
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"] == {"socket_address": {"address": "127.0.0.1", "port_value": 9090}}
    ingress_listen = listener(cfg, "ingress")["address"]["socket_address"]
    assert ingress_listen == {"address": "127.0.0.1", "port_value": 8080}


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


def test_ingress_upstream_in_a_namespace_is_refused() -> None:
    bad = Placement(
        state_dir=STATE,
        egress_listen=Endpoint("127.0.0.1", 3128),
        workload_proxy="127.0.0.1:3128",
        dns_listen=Endpoint("127.0.0.1", 53),
        upstream_resolver=Endpoint("127.0.0.1", 53),
        ingress_listen=Endpoint("127.0.0.1", 8080),
        ingress_upstream=Endpoint("127.0.0.1", 9090, Path("/run/netns/x")),
    )
    with pytest.raises(ValueError, match="namespace"):
        EnvoyProxy(ENVOY).setup(Policy(), bad)


def test_deny_bodies_are_one_line_with_destination_reason_and_remedy() -> None:
    body = deny_body(Reason.NOT_ALLOWLISTED)
    assert body.count("\n") == 1 and body.endswith("\n")
    assert body.startswith("netfence: denied %REQ(:AUTHORITY)%: not_allowlisted; to allow: ")
    assert "--allow-host %CEL(" in body
    assert "--allow-port %CEL(" in deny_body(Reason.PORT_NOT_ALLOWED)
    assert deny_body(Reason.LOOPBACK_ADDRESS, "127.0.0.0/8") == (
        "netfence: denied %REQ(:AUTHORITY)%: loopback_address 127.0.0.0/8\n")
    private = deny_body(Reason.PRIVATE_ADDRESS, "10.0.0.0/8")
    assert "private_address 10.0.0.0/8; to allow: " in private and "--allow-cidr" in private


# --- the ProxySetup ----------------------------------------------------------------------


def test_setup_files_processes_env_and_logs() -> None:
    proxy = EnvoyProxy(ENVOY)
    assert proxy.name == "envoy" and proxy.listens_in_netns is True
    setup = proxy.setup(Policy(), placement(ingress=True))
    (spec,) = setup.files
    assert spec.path == STATE / BOOTSTRAP_NAME and spec.mode == 0o600 and spec.owner is None
    (process,) = setup.processes
    assert process.name == "envoy"
    assert process.argv[:3] == (ENVOY, "-c", str(STATE / BOOTSTRAP_NAME))
    assert "--disable-hot-restart" in process.argv
    assert process.ready == (Endpoint("127.0.0.1", 3128), Endpoint("127.0.0.1", 8080))
    assert process.stdout.parent == STATE and process.stderr.parent == STATE
    assert setup.decision_logs == (STATE / EGRESS_LOG_NAME,)
    assert proxy.validate_command(setup) == [
        (ENVOY, "--mode", "validate", "-c", str(STATE / BOOTSTRAP_NAME))
    ]


def test_env_sets_both_cases() -> None:
    setup = EnvoyProxy(ENVOY).setup(Policy(), placement())
    assert dict(setup.env) == proxy_env("127.0.0.1:3128")
    for key in ("http_proxy", "https_proxy", "no_proxy"):
        assert setup.env[key] == setup.env[key.upper()]
    assert setup.env["https_proxy"] == "http://127.0.0.1:3128"


def test_write_setup_makes_a_private_dir_and_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    setup = EnvoyProxy(ENVOY).setup(Policy(), placement(state=state))
    write_setup(setup, state)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    written = state / BOOTSTRAP_NAME
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert json.loads(written.read_text())["admin"]["address"]["pipe"]["path"] == str(
        state / ADMIN_SOCKET_NAME
    )


def test_setup_does_not_touch_the_filesystem(tmp_path: Path) -> None:
    state = tmp_path / "never-created"
    EnvoyProxy(ENVOY).setup(Policy(), placement(state=state))
    assert not state.exists()


# --- parse_decision -----------------------------------------------------------------------


def line(**fields: object) -> str:
    base: dict[str, object] = {
        "log": "netfence-egress",
        "time": "2026-01-01T00:00:00.000Z",
        "type": "DownstreamEnd",
        "method": "GET",
        "authority": "example.com",
        "status": 200,
        "details": "via_upstream",
        "flags": "-",
        "route": "allowed",
        "upstream_host": "93.184.216.34:80",
        "rbac_policy": None,
        "bytes_received": 10,
        "bytes_sent": 2000,
        "duration_ms": 12,
    }
    base.update(fields)
    return json.dumps(base)


def test_parse_allowed_plain_http_defaults_port_80() -> None:
    record = EnvoyProxy(ENVOY).parse_decision(line())
    assert record is not None
    assert (record.host, record.port, record.allowed, record.reason) == (
        "example.com",
        80,
        True,
        "allowed",
    )
    assert record.upstream_ip == "93.184.216.34"
    assert (record.bytes_up, record.bytes_down, record.duration_ms) == (10, 2000, 12)
    assert record.time == "2026-01-01T00:00:00.000Z" and record.status == 200


def test_parse_rbac_denial_and_ipv6_connect() -> None:
    record = EnvoyProxy(ENVOY).parse_decision(
        line(
            method="CONNECT",
            authority="[::1]:443",
            status=403,
            details="rbac_access_denied_matched_policy[loopback_address]",
            upstream_host=None,
        )
    )
    assert record is not None
    assert (record.host, record.port, record.allowed, record.reason, record.upstream_ip) == (
        "::1",
        443,
        False,
        "loopback_address",
        None,
    )


@pytest.mark.parametrize("reason", ["not_allowlisted", "port_not_allowed", "denied_name"])
def test_parse_route_denials(reason: str) -> None:
    record = EnvoyProxy(ENVOY).parse_decision(
        line(status="403", details="direct_response", route=reason, upstream_host="-")
    )
    assert record is not None
    assert record.reason == reason and not record.allowed and record.status == 403


def test_parse_failed_but_allowed_request_is_allowed() -> None:
    record = EnvoyProxy(ENVOY).parse_decision(
        line(status=503, details="dns_resolution_failure", upstream_host=None)
    )
    assert record is not None and record.allowed and record.status == 503


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[1, 2]",
        json.dumps({"log": "netfence-ingress", "status": 200}),
        "[2026-01-01 00:00:00.000][1][warning][main] something",
    ],
)
def test_parse_ignores_other_lines(text: str) -> None:
    assert EnvoyProxy(ENVOY).parse_decision(text) is None
