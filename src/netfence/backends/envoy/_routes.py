"""The name and port stages: virtual hosts and routes, decided before anything resolves.

Egress: denied names, then the allowlist (exact and `*.suffix` domains: flat to 100,000
names, unlike a regex), then a catch-all 403; on an allowed host, the port by an
`:authority` matcher. Route names are policy.Reason values (the access log's reason).
Before them, once per HCM, the host check (host_check_filter): an authority the policy
cannot read as a host is refused as invalid_host.
The transparent listener's HTTP chains: the same stages, the port being the dialed one.
Ingress: the inbound hosts, then a catch-all 403.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from netfence.backends.envoy._names import (
    CHECK_FILTER,
    DFP_CLUSTER,
    DFP_PER_ROUTE_TYPE,
    HOST_CHECK_FILTER,
    HTTP_DEFAULT_PORT,
    INGRESS_CLUSTER,
    RBAC_FILTER,
    RBAC_PER_ROUTE_TYPE,
    RBAC_TYPE,
    Json,
)
from netfence.policy import DENIED_NAMES, Policy, Reason
from netfence.policy.denied import DENIED_SUFFIXES, is_denied_name, is_denied_zone
from netfence.profile import HostPattern
from netfence.profile.host_regex import LEGACY_IPV4, VALID_HOST_RE, literal_spellings
from netfence.profile.hosts import MAX_NAME


def _forward(cluster: str) -> Json:
    """A route's action to `cluster`, timeouts off: MCP streams (SSE, streamable HTTP) stay
    open and idle for long."""
    return {"cluster": cluster, "timeout": "0s", "idle_timeout": "0s"}


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
    TLS goes through CONNECT. (Envoy would otherwise send plaintext to port 80.)

    The host check is off on this route: where it comes first in its virtual host (every
    egress one, the transparent allowed ones), such a URL is unsupported_request whatever
    its host."""
    route = _forbidden(Reason.UNSUPPORTED_REQUEST.value)[1]
    route["match"] = {"prefix": "/", "headers": [
        {"name": ":scheme", "string_match": {"exact": "http"}, "invert_match": True}]}
    route["typed_per_filter_config"][HOST_CHECK_FILTER] = {"@type": RBAC_PER_ROUTE_TYPE}
    return route


# --- the host check --------------------------------------------------------------------


def host_check_filter() -> Json:
    """The host check, an HTTP filter before anything that resolves: 403 invalid_host (the
    RBAC policy's name, which the response details carry to the log and the reply) for an
    authority the policy would not read as a host (a label starting with '-', over 63
    characters, a name over 253), before the DFP would send it to DNS. Such a name never
    matches an allowlist entry, but it may match a wildcard domain, or the catch-all when
    every name is allowed.

    Once per HCM: as routes in every virtual host, these two regexes (RE2 expands their
    counted repetitions) were over half of what a workload's policy cost Envoy. They do
    not depend on the policy, so the HCM can hold them. Its name is its own: the address
    stage's per-route RBAC configs (RBAC_FILTER) do not reach it (verified with Envoy 1.40:
    a route turning RBAC_FILTER off leaves the host check on)."""
    bad = _authority_matcher(f"^{VALID_HOST_RE}(:[0-9]*)?$")
    bad["invert_match"] = True
    long = _authority_matcher(f"^[^:\\[]{{{MAX_NAME + 1},}}(:[0-9]*)?$")
    invalid = {"permissions": [{"header": bad}, {"header": long}], "principals": [{"any": True}]}
    return {"name": HOST_CHECK_FILTER, "typed_config": {"@type": RBAC_TYPE, "rules": {
        "action": "DENY", "policies": {Reason.INVALID_HOST.value: invalid}}}}


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


# Every denied domain ends so: only those need the full check (a long allowlist has few).
_DENIED_ENDINGS = (*DENIED_NAMES, *DENIED_SUFFIXES)


def _without_denied(domains: list[str]) -> list[str]:
    return [d for d in domains if not (d.endswith(_DENIED_ENDINGS) and _denied_domain(d))]


def allowed_domains(policy: Policy) -> list[str]:
    return _without_denied(host_domains(policy.hosts))


def allowed_name_domains(policy: Policy) -> list[str]:
    """allowed_domains without the IP literals (in the same order): what an SNI can be."""
    return _without_denied(host_domains(policy.name_patterns))


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
    """The scheme check, `checks`, the allowed routes, then port_not_allowed (the host
    check is the HCM's filter)."""
    routes: list[Json] = [_unsupported_scheme(), *checks]
    ports = None if policy.any_port else policy.ports
    if ports is None or ports:
        forward = _forward(DFP_CLUSTER)
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
    forward = _forward(DFP_CLUSTER)
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
            "routes": [_unsupported_scheme(), *_forbidden(Reason.DENIED_NAME.value)],
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
            "routes": [_unsupported_scheme(), *literal_routes(policy),
                       *_forbidden(Reason.NOT_ALLOWLISTED.value)],
        }
    )
    return vhosts


# Set on each transparent HTTP connection (the port its client dialed), for the routes:
# one route table serves every port, so the allowed names are listed once.
DIALED_PORT_KEY = "netfence.dialed_port"


def _on_port(route: Json, port: int) -> Json:
    route["match"]["filter_state"] = [{"key": DIALED_PORT_KEY,
                                       "string_match": {"exact": str(port)}}]
    return route


def _transparent_port_routes(policy: Policy) -> list[Json]:
    """The port stage by the dialed port: on an allowed port P, a Host naming another port
    is refused (invalid_host), since the dial goes to P; any other port is refused."""
    if policy.any_port:  # dialed at the Host's port, or the dialed one when it names none
        return [{"name": Reason.ALLOWED.value, "match": {"prefix": "/"},
                 "route": _forward(DFP_CLUSTER)}, *_forbidden(Reason.INVALID_HOST.value)]
    routes: list[Json] = []
    for port in sorted(set(policy.ports)):
        match = {"prefix": "/",
                 "headers": [_authority_matcher(authority_regex([port], default_port=port))]}
        routes.append(_on_port({"name": Reason.ALLOWED.value, "match": match,
                                "route": _forward(DFP_CLUSTER)}, port))
        routes += [_on_port(r, port) for r in _forbidden(Reason.INVALID_HOST.value)]
    return routes + _forbidden(Reason.PORT_NOT_ALLOWED.value)


def transparent_virtual_hosts(policy: Policy) -> list[Json]:
    """The name and port stages of the transparent HTTP chains, by the Host header.

    The port is the one the client dialed (DIALED_PORT_KEY), and the dial goes there: on a
    port the policy allows, a Host naming another port is refused (invalid_host), since
    the DFP would dial the Host's port, which nothing checked; every other port is
    port_not_allowed. When every port is allowed, a Host's port is dialed as written. No
    CONNECT route: a client talking to its server sends none; an https:// (or ftp://) URL
    is refused as on the proxy path. IP literals match by their canonical text (in
    `domains`); other spellings are refused.
    """
    allowed = _transparent_port_routes(policy)
    vhosts: list[Json] = [{
        "name": Reason.DENIED_NAME.value,
        "domains": denied_domains(),
        "routes": _forbidden(Reason.DENIED_NAME.value),
    }]
    if policy.allow_all:
        routes = [_unsupported_scheme(), *_legacy_literal_routes(), *allowed]
        vhosts.append({"name": "allowed", "domains": ["*"], "routes": routes})
        return vhosts
    domains = allowed_domains(policy)
    if domains:
        vhosts.append({"name": "allowed", "domains": domains,
                       "routes": [_unsupported_scheme(), *allowed]})
    vhosts.append({
        "name": Reason.NOT_ALLOWLISTED.value,
        "domains": ["*"],
        "routes": _forbidden(Reason.NOT_ALLOWLISTED.value),
    })
    return vhosts


# --- ingress ---------------------------------------------------------------------------


def inbound_domains(policy: Policy) -> list[str]:
    return host_domains(policy.inbound_allowlist)


def ingress_virtual_hosts(policy: Policy) -> list[Json]:
    """The inbound hosts go to the workload; any other Host gets a 403."""
    body = "netfence: denied: inbound host not allowed (add it to network.inbound.allow_host)\n"
    return [
        {
            "name": "inbound",
            "domains": inbound_domains(policy),
            "routes": [
                {
                    "name": "inbound",
                    "match": {"prefix": "/"},
                    "route": _forward(INGRESS_CLUSTER),
                }
            ],
        },
        {
            "name": "inbound_host_not_allowed",
            "domains": ["*"],
            "routes": _forbidden("inbound_host_not_allowed", body),
        },
    ]
