"""Listeners with their filter chains, and the clusters they route to.

Each listener comes as a Part: the listener and the clusters it needs. The bootstrap
assembles the parts, so a new listener is one more Part.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from netfence.backends.base import Endpoint, Placement
from netfence.backends.envoy._log import (
    EGRESS_LOG_FORMAT,
    EGRESS_LOG_NAME,
    INGRESS_LOG_FORMAT,
    INGRESS_LOG_NAME,
    access_log,
)
from netfence.backends.envoy._names import (
    CARES_TYPE,
    CHECK_FILTER,
    CHECKED_KEY,
    DFP_CLUSTER,
    DFP_CLUSTER_TYPE,
    DFP_FILTER_TYPE,
    DIAL_CACHE_NAME,
    DIAL_FILTER,
    DNS_CACHE_NAME,
    HCM_TYPE,
    INGRESS_CLUSTER,
    RBAC_FILTER,
    RBAC_TYPE,
    ROUTER_TYPE,
    SET_FILTER_STATE_TYPE,
    Json,
)
from netfence.backends.envoy._rbac import address_stage
from netfence.backends.envoy._replies import deny_replies
from netfence.backends.envoy._routes import (
    egress_virtual_hosts,
    host_check_filter,
    ingress_virtual_hosts,
)
from netfence.backends.relay import socket_address
from netfence.policy import Policy


@dataclass(frozen=True)
class Part:
    """What one listener brings to the bootstrap: itself and the clusters it routes to (a
    cluster that several parts route to is listed by each, identically)."""

    listeners: tuple[Json, ...]
    clusters: tuple[Json, ...] = ()


# --- the DNS views ---------------------------------------------------------------------


def dial_cache_config(placement: Placement) -> Json:
    """The dial view: shared verbatim by its DFP filter and the cluster (Envoy requires
    them identical). It resolves through the fence's own DNS."""
    return dns_cache_config(placement.dns_listen, DIAL_CACHE_NAME)


def dns_cache_config(resolver: Endpoint, name: str = DNS_CACHE_NAME) -> Json:
    """A DFP DNS cache resolving at `resolver` only."""
    return {
        "name": name,
        "dns_lookup_family": "V4_PREFERRED",
        "typed_dns_resolver_config": resolver_config(resolver),
    }


def resolver_config(resolver: Endpoint) -> Json:
    """A DNS resolver asking `resolver` only, never the system's."""
    return {
        "name": "envoy.network.dns_resolver.cares",
        "typed_config": {
            "@type": CARES_TYPE,
            "resolvers": [socket_address(Endpoint(resolver.host, resolver.port))],
            "use_resolvers_as_fallback": False,
            # No search list from resolv.conf: a name goes out exactly as allowed.
            "dns_resolver_options": {
                "use_tcp_for_dns_lookups": False,
                "no_default_search_domain": True,
            },
        },
    }


# --- the HTTP connection manager -------------------------------------------------------


def streaming_hcm(name: str, virtual_hosts: list[Json], http_filters: list[Json]) -> Json:
    """HCM settings every listener shares: long-lived streams, HTTP/1.0 clients, virtual
    hosts chosen by the host alone (a route checks the port)."""
    route_config = {
        "name": name,
        "ignore_port_in_host_matching": True,
        "virtual_hosts": virtual_hosts,
    }
    return {
        "@type": HCM_TYPE,
        "stat_prefix": name,
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
        "address": socket_address(endpoint),
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }


# --- egress ----------------------------------------------------------------------------


def egress_filters(placement: Placement, *, host_from_filter_state: bool = False) -> list[Json]:
    """Host check -> DFP (check view) -> RBAC -> mark checked -> DFP (dial view) -> router.

    The host check refuses an authority the policy cannot read as a host, before the
    check view would resolve it (_routes.host_check_filter).
    The check view resolves the name at the upstream resolver and saves the first
    address; RBAC denies it by address rule, with the reason. The cluster then dials from
    the dial view, resolved through the fence's DNS, which turns any answer holding a
    denied address into NXDOMAIN (dnsmasq.answer_filter). Without it, a name answering
    [allowed, 127.0.0.1] passed RBAC on its first address and the DFP cluster's happy
    eyeballs fell back to 127.0.0.1 when the first did not answer: every address Envoy
    may dial must be checked, and Envoy 1.40 offers no way to dial only the checked one.
    IP literals resolve to themselves in both views, so RBAC decides those alone.
    host_from_filter_state: both DFP filters take the host and port from the filter state
    when set there (the transparent listener sets the port the client dialed).
    RBAC's rules come with the routes (address_stage): they change with the policy, and
    the HCM must not (a changed HCM drains its listener's connections). Here it lets
    nothing through: a route configuration without them allows no address.
    """
    from_state = {"allow_dynamic_host_from_filter_state": True} if host_from_filter_state else {}
    mark = {
        "object_key": CHECKED_KEY,
        "factory_key": "envoy.string",
        "format_string": {"text_format_source": {"inline_string": "yes"}},
    }
    return [
        host_check_filter(),
        {
            "name": CHECK_FILTER,
            "typed_config": {
                "@type": DFP_FILTER_TYPE,
                "dns_cache_config": dns_cache_config(placement.upstream_resolver),
                # RBAC below decides on this saved address.
                "save_upstream_address": True,
                **from_state,
            },
        },
        {
            "name": RBAC_FILTER,
            "typed_config": {
                "@type": RBAC_TYPE,
                "rules": {"action": "ALLOW", "policies": {}},
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
                **from_state,
            },
        },
        {
            "name": "envoy.filters.http.router",
            # No x-envoy-* headers towards arbitrary upstreams.
            "typed_config": {"@type": ROUTER_TYPE, "suppress_envoy_headers": True},
        },
    ]


def egress_listener(policy: Policy, placement: Placement) -> Json:
    filters = egress_filters(placement)
    hcm = streaming_hcm("egress", egress_virtual_hosts(policy), filters)
    hcm["route_config"]["typed_per_filter_config"] = address_stage(policy)
    hcm.update(
        {
            # WebSocket too: a plain http:// request to an allowed destination may upgrade.
            "upgrade_configs": [{"upgrade_type": "CONNECT"}, {"upgrade_type": "websocket"}],
            # Clients speaking HTTP/2 to the proxy tunnel with an HTTP/2 CONNECT.
            "http2_protocol_options": {"allow_connect": True},
            "local_reply_config": deny_replies(),
            # A forward proxy adds nothing of its own to what it relays.
            "generate_request_id": False,
            "server_header_transformation": "PASS_THROUGH",
            "access_log": [access_log(placement.state_dir / EGRESS_LOG_NAME, EGRESS_LOG_FORMAT)],
            # Log a CONNECT tunnel when it opens, not only when it closes (hours later).
            "access_log_options": {"flush_log_on_tunnel_successfully_established": True},
        }
    )
    return _listener("egress", placement.egress_listen, hcm)


def dfp_cluster(placement: Placement) -> Json:
    """The dynamic forward proxy's cluster: it dials what the dial view resolved."""
    return {
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


def egress(policy: Policy, placement: Placement) -> Part:
    """The forward proxy the workload talks to, and the cluster it dials out through."""
    return Part((egress_listener(policy, placement),), (dfp_cluster(placement),))


# --- ingress ---------------------------------------------------------------------------


def ingress_listener(policy: Policy, listen: Endpoint, state_dir: Path) -> Json:
    filters: list[Json] = [
        {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}
    ]
    hcm = streaming_hcm("ingress", ingress_virtual_hosts(policy), filters)
    hcm["access_log"] = [access_log(state_dir / INGRESS_LOG_NAME, INGRESS_LOG_FORMAT)]
    return _listener("ingress", listen, hcm)


def ingress_cluster(upstream: Endpoint, resolver: Endpoint) -> Json:
    """The workload's port as the ingress reaches it: one static address, or a name (a
    cluster's Service) resolved at the fence's upstream resolver, as Squid's cache_peer is."""
    cluster: Json = {
        "name": INGRESS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "10s",
        "load_assignment": {
            "cluster_name": INGRESS_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(upstream)}}]}],
        },
    }
    if not _is_ip(upstream.host):
        # A STATIC cluster takes addresses only.
        cluster.update(type="STRICT_DNS", dns_lookup_family="V4_PREFERRED",
                       typed_dns_resolver_config=resolver_config(resolver))
    return cluster


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def ingress(policy: Policy, placement: Placement) -> Part:
    """The reverse proxy clients reach the workload through, and its cluster."""
    listen, upstream = placement.ingress_listen, placement.ingress_upstream
    if listen is None or upstream is None:
        raise ValueError("an ingress listener needs an ingress upstream")
    if upstream.netns is not None:
        # Envoy refuses it ("hosts cannot specify network namespaces"); fail here, early.
        raise ValueError(
            "Envoy cannot dial into another network namespace; the runtime must relay "
            f"ingress to {upstream} from the host namespace"
        )
    return Part((ingress_listener(policy, listen, placement.state_dir),),
                (ingress_cluster(upstream, placement.upstream_resolver),))
