"""backends/envoy/_transparent.py: the listener deciding redirected connections by the name
they carry, agreeing with Policy.decide for every kind of policy.

Each connection of a grid (address, port, SNI / Host / nothing) goes through the chain
Envoy would pick (tests/support select_chain), and the decision-log line that chain would
write is parsed back: generator, chain names and parser are checked together."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
from pathlib import Path

import pytest

from netfence.backends.envoy import EGRESS_LOG_NAME, EnvoyProxy
from netfence.backends.envoy._chains import (
    HTTP_ROLES,
    RAW_PASS,
    TLS_ALLOWED,
    TLS_PASS,
    split_chain_name,
)
from netfence.backends.envoy._log import RBAC_DETAIL_FORMAT, parse_decision
from netfence.backends.envoy._rbac import rbac_policies
from netfence.backends.envoy._routes import DIALED_PORT_KEY
from netfence.backends.envoy._transparent import layout_listener
from netfence.policy import Policy, Reason, compile_policy
from netfence.profile.hosts import parse_ip
from netfence.profile.loader import parse_profile
from tests.support.envoy_config import (
    ENVOY,
    HOST_ADDRESS,
    STATE,
    TRANSPARENT_PORT,
    Json,
    config,
    listener,
    permission_matches,
    placement,
    policy_for,
    request_reason,
    select_chain,
    select_route,
    select_vhost,
    whole,
)

ALLOWLIST = policy_for({"outbound": {"allow_host": [
    "a.test", ".b.test", "*.c.test", "93.184.216.34", "2606:4700::1111"]}})
POLICIES: dict[str, Policy] = {
    "allowlist": ALLOWLIST,
    "custom_ports": policy_for({"outbound": {"allow_host": ["a.test"], "allow_port": [22, 8443]}}),
    # Allowlisted literals the address stage denies (private, host, loopback), one lifted.
    "denied_literals": policy_for({"outbound": {
        "allow_host": ["a.test", "10.1.2.3", "10.7.7.7", str(HOST_ADDRESS), "127.0.0.1", "fd00::1"],
        "allow_cidr": ["10.7.0.0/16"]}}),
    "literals_only": policy_for({"outbound": {"allow_host": ["93.184.216.34", "::ffff:8.8.8.8"]}}),
    "allow_all": policy_for({"outbound": {"insecure_allow_all": True,
                                          "allow_cidr": ["10.7.0.0/16"]}}),
    "allow_all_ports": policy_for({"outbound": {"insecure_allow_all": True, "allow_port": [8443]}}),
    "learn": compile_policy(parse_profile({"network": {"outbound": {"allow_host": ["a.test"]}}},
                                          "test"), [HOST_ADDRESS], learn=True),
    "any_port_allowlist": dataclasses.replace(ALLOWLIST, any_port=True),
    "deny_all": policy_for({}),
    "none_mode": policy_for({"mode": "none", "outbound": {"allow_host": ["a.test"]}}),
    "no_ports": policy_for({"outbound": {"allow_host": ["a.test", "93.184.216.34"],
                                         "allow_port": []}}),
}
ADDRESSES = ("93.184.216.34", "93.184.216.99", "8.8.8.8", "2606:4700::1111", "2606:4700::2222",
             "10.1.2.3", "10.7.7.7", "10.9.9.9", str(HOST_ADDRESS), "192.0.2.77", "127.0.0.1",
             "169.254.169.254", "fd00::1", "::1")
PORTS = (80, 443, 22, 8443, 7000)
NAMES = ("a.test", "b.test", "www.b.test", "www.c.test", "c.test", "other.test", "localhost",
         "x.localhost", "host.docker.internal")
# Hosts the policy cannot read (the host check refuses them, before any route's stage).
INVALID_HOSTS = ("-x.c.test", "x-.b.test", "a..test", "-x.localhost", "-x.other.test",
                 "x" * 64 + ".c.test", ".".join(["x" * 62] * 4) + ".c.test")
HTTP_HOSTS = (*NAMES, "93.184.216.34", "[2606:4700::1111]", "10.7.7.7", "127.0.0.1",
              *INVALID_HOSTS)


def transparent(policy: Policy, netns: Path | None = None) -> Json:
    return listener(config(policy, transparent=True, netns=netns), "transparent")


def layout(policy: Policy) -> Json:
    """The listener as laid out, each chain with its filter_chain_match (the bootstrap's
    filter_chain_matcher decides alike: test_matcher.py)."""
    return layout_listener(policy, placement(transparent=True))


def hcm_of(chain: Json) -> Json:
    (found,) = [f["typed_config"] for f in chain["filters"]
                if f["name"] == "envoy.filters.network.http_connection_manager"]
    return found


@pytest.fixture(scope="module", params=sorted(POLICIES))
def case(request: pytest.FixtureRequest) -> tuple[Policy, Json]:
    policy = POLICIES[request.param]
    return policy, transparent(policy)


def _rbac_detail(chain: Json, sni: str) -> str | None:
    """The RBAC denial a connection gets at its first data, by its SNI alone (the
    address stage's upstream_ip_port rules need a resolved address: none here)."""
    for net_filter in chain["filters"]:
        if net_filter["name"] != "envoy.filters.network.rbac":
            continue
        for name, body in sorted(net_filter["typed_config"]["rules"]["policies"].items()):
            if any(_sni_matches(p, sni) for p in body["permissions"]):
                return RBAC_DETAIL_FORMAT.format(name)
    return None


def _sni_matches(permission: Json, sni: str) -> bool:
    if "not_rule" in permission:
        return not _sni_matches(permission["not_rule"], sni)
    if "requested_server_name" in permission:
        assert permission["requested_server_name"] == {"safe_regex": {"regex": ".+"}}
        return bool(sni)
    return False


def role(chain: Json) -> str:
    scope_role = split_chain_name(chain["name"])
    assert scope_role is not None, chain["name"]
    return scope_role[1]


def _cluster(chain: Json, sni: str = "") -> str | None:
    """The cluster a connection is dialed through (None: refused at once)."""
    cluster: str | None = chain["filters"][-1]["typed_config"].get("cluster")
    for net_filter in chain["filters"]:
        for state in net_filter["typed_config"].get("on_new_connection", []):
            if state["object_key"] == "envoy.tcp_proxy.cluster":
                # Chosen per connection: the name's DFP with an SNI, else the address.
                assert state["format_string"]["text_format_source"]["inline_string"] == (
                    "%CEL(connection.requested_server_name == '' ? 'original_dst' : "
                    "'dynamic_forward_proxy')%")
                return "dynamic_forward_proxy" if sni else "original_dst"
    return cluster


def connection(listener_json: Json, ip: str, port: int, sni: str = "",
               tls: bool = True) -> tuple[Json, object]:
    """The chain a TLS (or, tls=False, plain TCP) connection gets, and its parsed record."""
    chain = select_chain(listener_json, ip, port, sni=sni,
                         transport="tls" if tls else "raw_buffer")
    details = _rbac_detail(chain, sni)
    passes = details is None and _cluster(chain, sni) is not None
    dialed = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    line = json.dumps({"log": "netfence-transparent", "time": "2026-12-06T01:07:23.684Z",
                       "chain": chain["name"], "sni": sni or None, "original_dst": dialed,
                       "upstream_host": dialed if passes else None, "flags": "-",
                       "details": details, "bytes_received": 1, "bytes_sent": 2,
                       "duration_ms": 3})
    return chain, parse_decision(line)


# --- Policy.decide, connection by connection ---------------------------------------------


def test_tls_with_sni_is_decided_by_the_name(case: tuple[Policy, Json]) -> None:
    policy, lst = case
    for ip in ADDRESSES:
        for port in PORTS:
            for name in NAMES:
                chain, record = connection(lst, ip, port, name)
                expected = policy.decide(name, port)
                where = (ip, port, name, chain["name"])
                assert record is not None, where
                assert record.reason == expected.reason.value, where  # type: ignore[attr-defined]
                assert record.host == name and record.port == port  # type: ignore[attr-defined]
                if not expected.allowed:
                    continue
                # Dialed by name (the chain for TLS to an allowed literal when every name
                # is allowed: no match tells TLS with an SNI from TLS without).
                allow_all_literal = role(chain) == TLS_PASS and policy.allow_all
                assert role(chain) == TLS_ALLOWED or allow_all_literal, where
                assert _cluster(chain, name) == "dynamic_forward_proxy", where


def test_a_connection_without_a_name_goes_only_to_an_allowed_literal(
        case: tuple[Policy, Json]) -> None:
    policy, lst = case
    for ip in ADDRESSES:
        for port in PORTS:
            expected = policy.decide(ip, port)  # the address stage included
            for tls in (True, False):
                chain, record = connection(lst, ip, port, tls=tls)
                where = (ip, port, tls, chain["name"])
                assert record is not None, where
                assert record.reason == expected.reason.value, where  # type: ignore[attr-defined]
                assert record.method == ("TLS" if tls else "TCP")  # type: ignore[attr-defined]
                assert record.host == ip  # type: ignore[attr-defined]
                if expected.allowed:
                    assert role(chain) in (TLS_PASS, RAW_PASS)
                    assert _cluster(chain) == "original_dst"
                elif expected.reason.value.endswith("_address"):
                    assert record.address == ip  # type: ignore[attr-defined]


def _http_reason(chain: Json, host: str, authority: str, port: int) -> str:
    hcm = hcm_of(chain)
    state = {DIALED_PORT_KEY: str(port)}
    name = request_reason(hcm, "GET", host, authority, state=state)
    route = select_route(select_vhost(hcm["route_config"]["virtual_hosts"], host), "GET",
                         authority, state=state)
    ip = parse_ip(host)
    if name != Reason.ALLOWED.value or ip is None:
        return name
    # An allowed IP literal: the address stage (RBAC on the DFP's address: the literal),
    # its rules the route's, else the route configuration's (the HCM's allow nothing).
    rbac = "envoy.filters.http.rbac"
    per_route = {**hcm["route_config"].get("typed_per_filter_config", {}),
                 **route.get("typed_per_filter_config", {})}.get(rbac, {}).get("rbac")
    if per_route is None:
        (http_rbac,) = [f for f in hcm["http_filters"] if f["name"] == rbac]
        per_route = http_rbac["typed_config"]
    for policy_name, body in sorted(per_route["rules"]["policies"].items()):
        if any(permission_matches(p, ip) for p in body["permissions"]):
            return policy_name.partition("@")[0]
    return name



def test_plain_http_is_decided_by_the_host_at_the_dialed_port(case: tuple[Policy, Json]) -> None:
    policy, lst = case
    for ip in ADDRESSES:
        for port in PORTS:
            chain = select_chain(lst, ip, port, alpn=("http/1.1",))
            assert role(chain) in HTTP_ROLES, (ip, port, chain["name"])
            for host in HTTP_HOSTS:
                expected = policy.decide(host, port).reason.value
                for authority in (host, f"{host}:{port}"):
                    got = _http_reason(chain, host, authority, port)
                    assert got == expected, (ip, port, authority, chain["name"])
                if expected == Reason.ALLOWED.value and not policy.any_port:
                    # Dialed at the port the client dialed: a Host naming another is refused.
                    assert _http_reason(chain, host, f"{host}:9999", port) == "invalid_host"
                if expected == Reason.ALLOWED.value:
                    # An https:// URL in plain text: refused, as on the proxy path.
                    got = request_reason(hcm_of(chain), "GET", host, host, scheme="https",
                                         state={DIALED_PORT_KEY: str(port)})
                    assert got == Reason.UNSUPPORTED_REQUEST.value, (host, port)


def test_denied_literals_never_pass_through(case: tuple[Policy, Json]) -> None:
    policy, _ = case
    lst = layout(policy)
    denied = [n for rule in policy.address_rules() for n in rule.networks]
    for chain in lst["filter_chains"]:
        if _cluster(chain) != "original_dst":  # without a name
            continue
        for prefix in chain["filter_chain_match"]["prefix_ranges"]:
            net = ipaddress.ip_network(f"{prefix['address_prefix']}/{prefix['prefix_len']}")
            assert not any(net.overlaps(d) for d in denied if d.version == net.version), net


# --- structure ---------------------------------------------------------------------------


def test_chain_names_are_unique_and_say_what_the_chain_does(case: tuple[Policy, Json]) -> None:
    lst = layout(case[0])
    names = [c["name"] for c in lst["filter_chains"]] + [lst["default_filter_chain"]["name"]]
    assert len(names) == len(set(names))
    assert all(split_chain_name(n) is not None for n in names)


def test_server_names_are_never_empty_and_never_an_address(case: tuple[Policy, Json]) -> None:
    # An empty list would match every SNI.
    lst = layout(case[0])
    for chain in lst["filter_chains"]:
        names = chain["filter_chain_match"].get("server_names")
        if names is not None:
            assert names and not any(parse_ip(n) for n in names), chain["name"]


def test_dialing_a_name_checks_its_address_first(case: tuple[Policy, Json]) -> None:
    policy, _ = case
    lst = layout(policy)
    for chain in lst["filter_chains"]:
        if _cluster(chain, "a.test") != "dynamic_forward_proxy":
            continue
        names = [f["name"] for f in chain["filters"]]
        assert names[-4:] == ["envoy.filters.network.sni_dynamic_forward_proxy",
                              "envoy.filters.network.rbac", "netfence.sni_dial_view",
                              "envoy.filters.network.tcp_proxy"]
        check, rbac, dial, tcp = (f["typed_config"] for f in chain["filters"][-4:])
        assert check["save_upstream_address"] and "save_upstream_address" not in dial
        assert check["dns_cache_config"]["name"] == "netfence_dns_cache"
        assert dial["dns_cache_config"]["name"] == "netfence_dial_view"
        expected = rbac_policies(policy)
        if _cluster(chain) == "original_dst":
            # Also TLS without SNI, which resolves nothing: each rule needs an SNI first.
            expected = {name: {**body, "permissions": [{"and_rules": {"rules": [
                {"requested_server_name": {"safe_regex": {"regex": ".+"}}},
                *body["permissions"]]}}]} for name, body in expected.items()}
        assert rbac["rules"] == {"action": "DENY", "policies": expected}
        # RBAC acts on the first data: connect only after it.
        assert tcp["upstream_connect_mode"] == "ON_DOWNSTREAM_DATA"
        assert tcp["cluster"] == "dynamic_forward_proxy" and tcp["idle_timeout"] == "0s"
        port = chain["filter_chain_match"].get("destination_port")
        assert check["port_value"] == dial["port_value"] == (port or 443)
        if port is None:
            state, *_ = chain["filters"][0]["typed_config"]["on_new_connection"]
            assert state["object_key"] == "envoy.upstream.dynamic_port"
            assert state["format_string"]["text_format_source"]["inline_string"] == (
                "%DOWNSTREAM_LOCAL_PORT%")


def test_http_chains_reuse_the_egress_stages(case: tuple[Policy, Json]) -> None:
    policy, lst = case
    egress = listener(config(policy), "egress")["filter_chains"][0]["filters"][0]["typed_config"]
    for chain in lst["filter_chains"]:
        if role(chain) not in HTTP_ROLES:
            continue
        hcm = hcm_of(chain)
        state, *rest = hcm["http_filters"]
        keys = [s["object_key"] for s in state["typed_config"]["on_request_headers"]]
        if policy.any_port:
            # No port in the chain's match: a Host's own port must not be dialed.
            assert keys == ["envoy.upstream.dynamic_host", "envoy.upstream.dynamic_port"]
        else:
            assert keys == ["envoy.upstream.dynamic_port"]
        assert [f["name"] for f in rest] == [f["name"] for f in egress["http_filters"]]
        for ours, theirs in zip(rest, egress["http_filters"], strict=True):
            extra = {k: v for k, v in ours["typed_config"].items()
                     if theirs["typed_config"].get(k) != v}
            assert extra in ({}, {"allow_dynamic_host_from_filter_state": True})
        # The remedy's port: the one dialed, whatever the Host says.
        bodies = [m["body_format_override"]["text_format_source"]["inline_string"]
                  for m in hcm["local_reply_config"]["mappers"]]
        assert any("--allow-port %DOWNSTREAM_LOCAL_PORT%" in b for b in bodies)
        (log,) = hcm["access_log"]
        assert log["typed_config"]["path"] == str(STATE / EGRESS_LOG_NAME)
        assert log["typed_config"]["log_format"]["json_format"]["log"] == (
            "netfence-transparent-http")
        assert hcm["upgrade_configs"] == [{"upgrade_type": "websocket"}]


def test_listener_addresses_filters_and_log() -> None:
    ns = Path("/run/netns/nf-test")
    lst = transparent(ALLOWLIST, netns=ns)
    assert lst["address"]["socket_address"] == {
        "address": "127.0.0.1", "port_value": TRANSPARENT_PORT,
        "network_namespace_filepath": str(ns)}
    assert lst["additional_addresses"] == [{"address": {"socket_address": {
        "address": "::1", "port_value": TRANSPARENT_PORT, "network_namespace_filepath": str(ns)}}}]
    assert [f["name"] for f in lst["listener_filters"]] == [
        "envoy.filters.listener.original_dst", "envoy.filters.listener.tls_inspector",
        "envoy.filters.listener.http_inspector"]
    assert lst["continue_on_listener_filters_timeout"] is True
    (log,) = lst["access_log"]
    assert log["typed_config"]["path"] == str(STATE / EGRESS_LOG_NAME)
    assert log["typed_config"]["log_format"]["json_format"]["chain"] == "%FILTER_CHAIN_NAME%"


PROXY_PROTOCOL_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol")


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_a_relayed_listener_reads_the_destination_from_a_proxy_header(name: str) -> None:
    """Behind a relay (rootless) the first listener filter is proxy_protocol, refusing
    connections without a v2 header; nothing else in the bootstrap changes."""
    policy = POLICIES[name]
    kernel = EnvoyProxy(ENVOY).setup(policy, placement(transparent=True))
    relayed = EnvoyProxy(ENVOY).setup(policy, dataclasses.replace(
        placement(transparent=True), transparent_proxy_protocol=True))
    before = listener(whole(kernel), "transparent")
    after = listener(whole(relayed), "transparent")
    first, *rest = after["listener_filters"]
    assert first == {"name": "envoy.filters.listener.proxy_protocol", "typed_config": {
        "@type": PROXY_PROTOCOL_TYPE, "allow_requests_without_proxy_protocol": False,
        "disallowed_versions": ["V1"]}}
    assert [f["name"] for f in before["listener_filters"]] == [
        "envoy.filters.listener.original_dst", *(f["name"] for f in rest)]
    # Everything else byte for byte: the chains, the matcher, the clusters, the log (the
    # listeners' file has another version: its digest).
    for plain, proxied in zip(kernel.files, relayed.files, strict=True):
        swapped = plain.content.replace(
            json.dumps(before["listener_filters"][0], separators=(",", ":")),
            json.dumps(first, separators=(",", ":")))
        assert _unversioned(swapped) == _unversioned(proxied.content)
    assert kernel.processes == relayed.processes and kernel.env == relayed.env


def _unversioned(content: str) -> str:
    return re.sub(r'^\{"version_info":"[0-9a-f]+"', "", content)


def test_unprivileged_changes_nothing_in_envoy() -> None:
    """Envoy runs as whoever starts it and owns nothing: the flag is Squid's business."""
    before = EnvoyProxy(ENVOY).setup(ALLOWLIST, placement(transparent=True, ingress=True))
    after = EnvoyProxy(ENVOY).setup(ALLOWLIST, dataclasses.replace(
        placement(transparent=True, ingress=True), unprivileged=True))
    assert after == before and all(f.owner is None for f in after.files)


def test_one_endpoint_has_no_additional_addresses() -> None:
    setup = EnvoyProxy(ENVOY).setup(ALLOWLIST, dataclasses.replace(
        placement(transparent=True), transparent_listen=(placement(
            transparent=True).transparent_listen[0],)))
    lst = listener(whole(setup), "transparent")
    assert "additional_addresses" not in lst


def test_literals_pass_through_only_to_the_address_dialed() -> None:
    lst = layout(POLICIES["denied_literals"])
    tls, raw = (c for c in lst["filter_chains"] if c["name"] in ("literal_tls@443",
                                                                  "literal_raw@443"))
    prefixes = [(p["address_prefix"], p["prefix_len"])
                for p in tls["filter_chain_match"]["prefix_ranges"]]
    assert prefixes == [("10.7.7.7", 32)]  # lifted by allow_cidr; the others are denied
    # TLS waits for its ClientHello (RBAC refuses one with an SNI); a server-first
    # protocol sends nothing, so plain TCP connects at once.
    assert tls["filters"][-1]["typed_config"]["upstream_connect_mode"] == "ON_DOWNSTREAM_DATA"
    assert "upstream_connect_mode" not in raw["filters"][-1]["typed_config"]
    literal = layout(POLICIES["literals_only"])
    (tls,) = (c for c in literal["filter_chains"] if c["name"] == "literal_tls@443")
    # ::ffff:8.8.8.8 arrives as 8.8.8.8.
    assert [p["address_prefix"] for p in tls["filter_chain_match"]["prefix_ranges"]] == [
        "93.184.216.34", "8.8.8.8"]


def test_chain_layout_per_policy_kind() -> None:
    def names(policy: Policy) -> list[str]:
        lst = layout(policy)
        return [c["name"] for c in lst["filter_chains"]] + [lst["default_filter_chain"]["name"]]

    # Nothing can pass: no chain for an allowed port at all.
    assert names(POLICIES["deny_all"]) == [
        "tls_denied_name", "http_port_not_allowed", "tls_not_allowed", "no_name"]
    assert names(POLICIES["none_mode"]) == names(POLICIES["deny_all"])
    custom = names(POLICIES["custom_ports"])
    assert custom == [
        "tls_denied_name@22", "tls_allowed@22#a.test", "http@22", "tls_not_allowed@22",
        "tls_denied_name@8443", "tls_allowed@8443#a.test", "http@8443", "tls_not_allowed@8443",
        "tls_denied_name", "tls_port_not_allowed#a.test", "http_port_not_allowed",
        "tls_not_allowed", "no_name"]
    learn = names(POLICIES["learn"])
    assert all(n.endswith("@any") for n in learn[:-1]) and learn[-1] == "no_name"
    assert learn[:4] == ["literal_tls_denied_name@any", "literal_tls@any", "literal_http@any",
                         "literal_raw@any"]
    assert "private_address_tls_allowed@any" in learn
    every = names(POLICIES["allow_all_ports"])
    assert every[-4:] == ["tls_denied_name", "tls_port_not_allowed", "http_port_not_allowed",
                          "literal_no_name"]


def test_allow_all_covers_every_address_once() -> None:
    lst = layout(POLICIES["allow_all"])
    nets = [ipaddress.ip_network(f"{p['address_prefix']}/{p['prefix_len']}")
            for c in lst["filter_chains"] if c["name"].endswith("_no_name@443")
            or c["name"] == "literal_raw@443"
            for p in c["filter_chain_match"]["prefix_ranges"]]
    for version, space in ((4, 2**32), (6, 2**128)):
        ours = [n for n in nets if n.version == version]
        # Overlaps only where a more specific rule (a host address) sits inside another.
        assert sum(n.num_addresses for n in ipaddress.collapse_addresses(ours)) == space


def test_egress_and_clusters_unchanged_by_the_transparent_listener() -> None:
    plain, with_t = config(ALLOWLIST), config(ALLOWLIST, transparent=True)
    assert listener(plain, "egress") == listener(with_t, "egress")
    assert [c["name"] for c in with_t["static_resources"]["clusters"]] == [
        "dynamic_forward_proxy", "original_dst"]
    assert "transparent" not in {lst["name"] for lst in plain["static_resources"]["listeners"]}


def test_envoy_is_transparent_and_logs_to_one_file() -> None:
    proxy = EnvoyProxy(ENVOY)
    assert proxy.transparent
    setup = proxy.setup(ALLOWLIST, placement(transparent=True))
    assert setup.decision_logs == (STATE / EGRESS_LOG_NAME,)
    # Not probed: a probe would be a decision in the log.
    (process,) = setup.processes
    assert [e.port for e in process.ready] == [3128]
