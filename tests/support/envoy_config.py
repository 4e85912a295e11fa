"""The Envoy backend's tests: a generated bootstrap, and small evaluators of its
virtual-host/route/RBAC JSON that decide as Envoy would (the real binary validates and
serves these configs in tests/integration)."""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from netfence.backends.base import Endpoint, Placement, ProxySetup
from netfence.backends.envoy import EnvoyProxy, whole_config
from netfence.policy import Policy, compile_policy
from netfence.profile.loader import parse_profile

Json = dict[str, Any]
ENVOY = "/opt/test/envoy"
STATE = Path("/run/netfence/test-workload")
RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
RBAC_PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"

UPSTREAM_IP = (
    "type.googleapis.com/envoy.extensions.rbac.matchers.upstream_ip_port.v3.UpstreamIpPortMatcher"
)

HOST_ADDRESS = ipaddress.ip_address("192.0.2.10")


TRANSPARENT_PORT = 15001


def placement(
    *, ingress: bool = False, netns: Path | None = None, state: Path = STATE,
    transparent: bool = False,
) -> Placement:
    listen = (Endpoint("127.0.0.1", TRANSPARENT_PORT, netns),
              Endpoint("::1", TRANSPARENT_PORT, netns))
    return Placement(
        state_dir=state,
        egress_listen=Endpoint("127.0.0.1", 3128, netns),
        workload_proxy="127.0.0.1:3128",
        dns_listen=Endpoint("127.0.0.1", 53),
        upstream_resolver=Endpoint("10.9.8.7", 5353),
        ingress_listen=Endpoint("127.0.0.1", 8080) if ingress else None,
        ingress_upstream=Endpoint("127.0.0.1", 9090) if ingress else None,
        transparent_listen=listen if transparent else (),
    )


def policy_for(network: dict[str, object]) -> Policy:
    profile = parse_profile({"network": network}, "test")
    return compile_policy(profile, host_addresses=[HOST_ADDRESS])


def config(policy: Policy, **kwargs: Any) -> Json:
    """The whole configuration Envoy runs: the bootstrap with its listener and route files
    inline (whole_config)."""
    return whole(EnvoyProxy(ENVOY).setup(policy, placement(**kwargs)))


def whole(setup: ProxySetup) -> Json:
    found: Json = whole_config(setup)
    return found


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


def rbac_rules(cfg: Json, name: str = "egress") -> Json:
    """The address stage's rules: the HCM's RBAC filter lets nothing through by itself;
    its route configuration brings the rules (so that they change with the routes)."""
    (rbac,) = [f for f in hcm(cfg, name)["http_filters"] if f["name"] == "envoy.filters.http.rbac"]
    assert rbac["typed_config"] == {"@type": RBAC_TYPE, "rules": {"action": "ALLOW",
                                                                  "policies": {}}}
    per_route = hcm(cfg, name)["route_config"]["typed_per_filter_config"][
        "envoy.filters.http.rbac"]
    assert per_route["@type"] == RBAC_PER_ROUTE_TYPE
    rules: Json = per_route["rbac"]["rules"]
    return rules


def walk(node: object) -> Iterator[Json]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


# --- small evaluators of the generated JSON --------------------------------------------


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


def select_route(vhost: Json, method: str, authority: str, scheme: str = "http",
                 state: dict[str, str] | None = None) -> Json:
    """The first route that matches; `state`: the connection's filter state (strings)."""
    headers = {":authority": authority, ":scheme": scheme}
    for route in vhost["routes"]:
        match = route["match"]
        if ("connect_matcher" in match) != (method == "CONNECT"):
            continue
        if not all((state or {}).get(m["key"]) == m["string_match"]["exact"]
                   for m in match.get("filter_state", [])):
            continue
        if all(header_matches(h, headers) for h in match.get("headers", [])):
            return route  # type: ignore[no-any-return]
    raise AssertionError(f"no route for {method} {authority}")


HOST_CHECK = "netfence.host_check"


def host_check_reason(hcm_json: Json, route: Json, authority: str) -> str | None:
    """The reason the HCM's host check (an RBAC DENY filter before the DFP) refuses a
    request that `route` matched with, None when it lets it through: off on a route that
    turns it off, else its header policies on the authority."""
    (check,) = [f for f in hcm_json["http_filters"] if f["name"] == HOST_CHECK]
    per_route = route.get("typed_per_filter_config", {}).get(HOST_CHECK)
    if per_route is not None:
        assert per_route == {"@type": RBAC_PER_ROUTE_TYPE}  # off; no rules of its own
        return None
    rules = check["typed_config"]["rules"]
    assert rules["action"] == "DENY"
    for name, body in sorted(rules["policies"].items()):
        assert body["principals"] == [{"any": True}]
        if any(header_matches(p["header"], {":authority": authority})
               for p in body["permissions"]):
            return str(name)
    return None


def request_reason(hcm_json: Json, method: str, host: str, authority: str,
                   scheme: str = "http", state: dict[str, str] | None = None) -> str:
    """The name and port stages as an HCM decides them: the route, unless the host check
    refuses first."""
    route = select_route(select_vhost(hcm_json["route_config"]["virtual_hosts"], host),
                         method, authority, scheme, state)
    name: str = route["name"]
    return host_check_reason(hcm_json, route, authority) or name


def route_reason(cfg: Json, method: str, host: str, port: int | None,
                 scheme: str = "http") -> str:
    authority = host if port is None else f"{host}:{port}"
    return request_reason(hcm(cfg), method, host, authority, scheme)


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


# --- the transparent listener's filter-chain choice ---------------------------------------


@functools.lru_cache(maxsize=256)
def _networks(ranges: tuple[tuple[str, int], ...]) -> tuple[Any, ...]:
    return tuple(ipaddress.ip_network(f"{a}/{n}") for a, n in ranges)


def _prefix_match(chain: Json, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    """The length of the longest prefix of `chain` holding `ip` (-1: none; 0: any address)."""
    ranges = chain["filter_chain_match"].get("prefix_ranges")
    if not ranges:
        return 0
    nets = _networks(tuple((r["address_prefix"], r["prefix_len"]) for r in ranges))
    return max((n.prefixlen for n in nets if ip in n), default=-1)


def select_chain(listener_json: Json, ip: str, port: int, *, sni: str = "",
                 transport: str = "raw_buffer", alpn: tuple[str, ...] = ()) -> Json:
    """The filter chain Envoy gives a connection to ip:port: by the listener's
    filter_chain_matcher when it has one, else by each chain's filter_chain_match."""
    if "filter_chain_matcher" in listener_json:
        return _matched_chain(listener_json, ip, port, sni, transport, alpn)
    return select_legacy_chain(listener_json, ip, port, sni=sni, transport=transport,
                               alpn=alpn)


def select_legacy_chain(listener_json: Json, ip: str, port: int, *, sni: str = "",
                        transport: str = "raw_buffer", alpn: tuple[str, ...] = ()) -> Json:
    """The filter chain Envoy gives a connection to ip:port by filter_chain_match, level by
    level, never going back to a less specific level: destination port, then the longest
    destination prefix, then server name (exact, `*.suffix` longest first, none),
    transport, application protocol; the default chain when a level has nothing."""
    address = ipaddress.ip_address(ip)
    chains: list[Json] = listener_json["filter_chains"]
    default: Json = listener_json["default_filter_chain"]
    by_port = [c for c in chains if c["filter_chain_match"].get("destination_port") == port]
    level = by_port or [c for c in chains if "destination_port" not in c["filter_chain_match"]]
    best = max((_prefix_match(c, address) for c in level), default=-1)
    if best < 0:
        return default
    level = [c for c in level if _prefix_match(c, address) == best]
    names = [c for c in level if sni and sni in c["filter_chain_match"].get("server_names", [])]
    labels = sni.split(".")
    for i in range(1, len(labels)):
        if names:
            break
        wildcard = "*." + ".".join(labels[i:])
        names = [c for c in level if wildcard in c["filter_chain_match"].get("server_names", [])]
    level = names or [c for c in level if "server_names" not in c["filter_chain_match"]]
    exact = [c for c in level if c["filter_chain_match"].get("transport_protocol") == transport]
    level = exact or [c for c in level if "transport_protocol" not in c["filter_chain_match"]]
    protocols = [c for c in level if set(alpn) & set(
        c["filter_chain_match"].get("application_protocols", []))]
    level = protocols or [c for c in level
                          if "application_protocols" not in c["filter_chain_match"]]
    if not level:
        return default
    (chain,) = level  # two chains matching alike: Envoy refuses the config
    return chain


# --- the same choice by a filter_chain_matcher ------------------------------------------

_INPUT = "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3."


def _matched_chain(listener_json: Json, ip: str, port: int, sni: str, transport: str,
                   alpn: tuple[str, ...]) -> Json:
    """Envoy's unified matcher: exact maps, ServerNameMatcher (exact name, then `*.suffix`
    longest first, then `*`) and IPMatcher (longest prefix; exclusive entries only),
    on_no_match when an input has no value or no entry; then the chain by the action's
    name, the default chain when none has it."""
    values = {
        "DestinationPortInput": str(port),
        "DestinationIPInput": ip,
        "ServerNameInput": sni or None,
        "TransportProtocolInput": transport,
        "ApplicationProtocolInput": ",".join(f"'{p}'" for p in alpn) or None,
    }
    name = _evaluate(listener_json["filter_chain_matcher"], values)
    for chain in listener_json["filter_chains"]:
        if chain["name"] == name:
            return chain  # type: ignore[no-any-return]
    default: Json = listener_json["default_filter_chain"]
    return default


def _on_match(on_match: Json, values: dict[str, str | None]) -> str | None:
    if "action" in on_match:
        typed = on_match["action"]["typed_config"]
        assert typed["@type"] == "type.googleapis.com/google.protobuf.StringValue"
        value: str = typed["value"]
        return value
    return _evaluate(on_match["matcher"], values)


def _evaluate(matcher: Json, values: dict[str, str | None]) -> str | None:
    tree = matcher["matcher_tree"]
    input_type = tree["input"]["typed_config"]["@type"]
    assert input_type.startswith(_INPUT), input_type
    value = values[input_type.removeprefix(_INPUT)]
    chosen: Json | None = None
    if value is not None and "exact_match_map" in tree:
        chosen = tree["exact_match_map"]["map"].get(value)
    elif value is not None:
        custom = tree["custom_match"]["typed_config"]
        if custom["@type"].endswith("ServerNameMatcher"):
            chosen = _by_server_name(custom, value)
        else:
            assert custom["@type"].endswith("IPMatcher")
            chosen = _by_prefix(custom, ipaddress.ip_address(value))
    if chosen is None:
        fallback = matcher.get("on_no_match")
        return None if fallback is None else _on_match(fallback, values)
    return _on_match(chosen, values)


def _by_server_name(custom: Json, name: str) -> Json | None:
    labels = name.split(".")
    candidates = [name] + ["*." + ".".join(labels[i:]) for i in range(1, len(labels))] + ["*"]
    for candidate in candidates:
        for entry in custom["domain_matchers"]:
            if candidate in entry["domains"]:
                found: Json = entry["on_match"]
                return found
    return None


def _by_prefix(custom: Json, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Json | None:
    best: tuple[int, Json] | None = None
    for entry in custom["range_matchers"]:
        assert entry["exclusive"] is True  # no fallback to a shorter prefix
        for cidr in entry["ranges"]:
            net = ipaddress.ip_network(f"{cidr['address_prefix']}/{cidr['prefix_len']}")
            if ip in net and (best is None or net.prefixlen > best[0]):
                best = (net.prefixlen, entry["on_match"])
    return None if best is None else best[1]
