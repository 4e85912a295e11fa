"""The network filters of the transparent listener's chains: refuse, pass through to the
original destination, dial the SNI's name, or decide plain HTTP by its Host as the egress
does; and the cluster that dials original destinations."""

from __future__ import annotations

from pathlib import Path

from netfence.backends.base import Placement
from netfence.backends.envoy._listeners import (
    dial_cache_config,
    dns_cache_config,
    egress_filters,
    streaming_hcm,
)
from netfence.backends.envoy._log import (
    EGRESS_LOG_NAME,
    TRANSPARENT_HTTP_LOG_FORMAT,
    access_log,
)
from netfence.backends.envoy._names import (
    DFP_CLUSTER,
    DIRECT_RESPONSE_TYPE,
    NET_RBAC_TYPE,
    NET_SET_FILTER_STATE_TYPE,
    SET_FILTER_STATE_TYPE,
    SNI_DFP_TYPE,
    TCP_PROXY_TYPE,
    Json,
)
from netfence.backends.envoy._rbac import address_stage, rbac_policies
from netfence.backends.envoy._replies import HOST_OF_AUTHORITY, deny_replies
from netfence.backends.envoy._routes import DIALED_PORT_KEY, transparent_virtual_hosts
from netfence.policy import Policy, Reason

ORIGINAL_DST_CLUSTER = "original_dst"
# The port the client dialed (the listener's first filter made it the local address).
DIALED_PORT = "%DOWNSTREAM_LOCAL_PORT%"
# Where a DFP (and its cluster) takes the host and port from when set.
DYNAMIC_HOST_KEY = "envoy.upstream.dynamic_host"
DYNAMIC_PORT_KEY = "envoy.upstream.dynamic_port"
# The cluster tcp_proxy dials, chosen per connection when set.
TCP_PROXY_CLUSTER_KEY = "envoy.tcp_proxy.cluster"
# TLS with an SNI: dial the name; without one: the address dialed.
_BY_SNI = (f"%CEL(connection.requested_server_name == '' ? '{ORIGINAL_DST_CLUSTER}' : "
           f"'{DFP_CLUSTER}')%")
# The SNI of a port-agnostic chain is dialed at DIALED_PORT; this is only a fallback.
TLS_DEFAULT_PORT = 443
# What tcp_proxy holds while it waits for the first data before connecting.
EARLY_DATA_BYTES = 65536
_SNI_PRESENT = {"requested_server_name": {"safe_regex": {"regex": ".+"}}}
ADDRESS_STAT_PREFIX = "transparent_address"


def refuse() -> list[Json]:
    """Close at once, writing nothing (a chain must end in a terminal filter); the
    chain's name tells the log why."""
    return [{"name": "envoy.filters.network.direct_response",
             "typed_config": {"@type": DIRECT_RESPONSE_TYPE}}]


def pass_tls() -> list[Json]:
    """TLS without an SNI to the address dialed (any SNI left for this chain is one not
    allowed)."""
    return [_net_rbac("transparent_literal_sni", _deny_if(Reason.NOT_ALLOWLISTED, _SNI_PRESENT)),
            _tcp_proxy(ORIGINAL_DST_CLUSTER, wait_for_data=True)]


def pass_raw() -> list[Json]:
    """Neither TLS nor HTTP, to the address dialed: at once (a server-first protocol
    sends nothing to wait for)."""
    return [_tcp_proxy(ORIGINAL_DST_CLUSTER, wait_for_data=False)]


def dial_sni(policy: Policy, placement: Placement, port: int | None, no_sni: Reason | None,
             *, pass_no_sni: bool = False) -> list[Json]:
    """Resolve the SNI (check view) -> RBAC on that address -> dial the name from the dial
    view, as egress_filters does for HTTP. `port`: the chain's (None: the dialed one).
    `no_sni`: the reason to refuse TLS without SNI with (a chain without server_names
    takes it too); `pass_no_sni`: pass it to the address dialed instead (one the policy
    allows: no match can tell TLS without SNI from TLS with one)."""
    state: list[Json] = []
    if port is None:
        state.append(_state(DYNAMIC_PORT_KEY, DIALED_PORT))
    if pass_no_sni:
        state.append(_state(TCP_PROXY_CLUSTER_KEY, _BY_SNI))
    filters: list[Json] = []
    if state:
        filters.append({"name": "envoy.filters.network.set_filter_state", "typed_config": {
            "@type": NET_SET_FILTER_STATE_TYPE, "on_new_connection": state}})
    if no_sni is not None:
        # Before the DFP: it resolves nothing without an SNI, so RBAC would find no address.
        filters.append(_net_rbac("transparent_no_sni",
                                 _deny_if(no_sni, {"not_rule": _SNI_PRESENT})))
    port_value = TLS_DEFAULT_PORT if port is None else port
    filters += [
        {"name": "envoy.filters.network.sni_dynamic_forward_proxy", "typed_config": {
            "@type": SNI_DFP_TYPE,
            "dns_cache_config": dns_cache_config(placement.upstream_resolver),
            "port_value": port_value, "save_upstream_address": True}},
        address_filter(policy, sni_only=pass_no_sni),
        {"name": "netfence.sni_dial_view", "typed_config": {
            "@type": SNI_DFP_TYPE, "dns_cache_config": dial_cache_config(placement),
            "port_value": port_value}},
        _tcp_proxy(DFP_CLUSTER, wait_for_data=True),
    ]
    return filters


def address_filter(policy: Policy, *, sni_only: bool) -> Json:
    """The address stage of a chain that dials the SNI: RBAC on the address the SNI
    resolved to. The same in every such chain of a policy (one of two, by `sni_only`):
    the gateway gives it to Envoy once per workload (_ecds)."""
    return _net_rbac(ADDRESS_STAT_PREFIX, _address_rules(policy, sni_only))


def _address_rules(policy: Policy, sni_only: bool) -> dict[str, Json]:
    """The egress' RBAC policies on the address the SNI resolved to. `sni_only`: for a
    chain that also takes TLS without SNI, each applies only with an SNI: without one
    nothing was resolved, and the upstream_ip_port matcher warns on every connection
    that it finds no address (and_rules stops at the first rule that fails)."""
    policies = rbac_policies(policy)
    if not sni_only:
        return policies
    return {name: {**body, "permissions": [
        {"and_rules": {"rules": [_SNI_PRESENT, *body["permissions"]]}}]}
        for name, body in policies.items()}


def http(policy: Policy, placement: Placement) -> list[Json]:
    """The egress' HTTP stages by the Host header, dialing the port dialed; one route table
    for every port (_routes.transparent_virtual_hosts), so every HTTP chain is the same."""
    state = [_state(DYNAMIC_PORT_KEY, DIALED_PORT)]
    if policy.any_port:
        # No port stage: a Host naming a port would be dialed there (the cluster appends
        # the dynamic port only to a bare host).
        state.insert(0, _state(DYNAMIC_HOST_KEY, HOST_OF_AUTHORITY))
    filters = [
        {"name": "envoy.filters.http.set_filter_state",
         "typed_config": {"@type": SET_FILTER_STATE_TYPE, "on_request_headers": state}},
        *egress_filters(placement, host_from_filter_state=True),
    ]
    hcm = streaming_hcm("transparent", transparent_virtual_hosts(policy), filters)
    hcm["route_config"]["typed_per_filter_config"] = address_stage(policy)
    hcm.update({
        "upgrade_configs": [{"upgrade_type": "websocket"}],
        # The remedy names the port dialed, whether the Host names one or not.
        "local_reply_config": deny_replies(DIALED_PORT),
        "generate_request_id": False,
        "server_header_transformation": "PASS_THROUGH",
        "access_log": [access_log(_log_path(placement), TRANSPARENT_HTTP_LOG_FORMAT)],
    })
    chain: list[Json] = []
    if not policy.any_port:
        # For the routes' port stage: the connection's state, set before any request.
        chain.append({"name": "envoy.filters.network.set_filter_state", "typed_config": {
            "@type": NET_SET_FILTER_STATE_TYPE, "on_new_connection": [
                {**_state(DIALED_PORT_KEY, DIALED_PORT), "factory_key": "envoy.string"}]}})
    chain.append({"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm})
    return chain


def _log_path(placement: Placement) -> Path:
    # The egress log: one decision log in time order, whichever path decided.
    return placement.state_dir / EGRESS_LOG_NAME


def original_dst_cluster() -> Json:
    """Connections without a name, to an allowed literal: to the address they dialed."""
    return {"name": ORIGINAL_DST_CLUSTER, "type": "ORIGINAL_DST", "connect_timeout": "10s",
            "lb_policy": "CLUSTER_PROVIDED"}


def _net_rbac(stat_prefix: str, policies: dict[str, Json]) -> Json:
    return {"name": "envoy.filters.network.rbac", "typed_config": {
        "@type": NET_RBAC_TYPE, "stat_prefix": stat_prefix,
        "rules": {"action": "DENY", "policies": policies}}}


def _deny_if(reason: Reason, permission: Json) -> dict[str, Json]:
    return {reason.value: {"permissions": [permission], "principals": [{"any": True}]}}


def _tcp_proxy(cluster: str, *, wait_for_data: bool) -> Json:
    config: Json = {"@type": TCP_PROXY_TYPE, "stat_prefix": "transparent", "cluster": cluster,
                    # MCP streams stay open and idle for long (the HCMs' timeouts are off too).
                    "idle_timeout": "0s"}
    if wait_for_data:
        # Network RBAC decides on the first data only: connecting at once would open a
        # connection to a denied address before RBAC closes it (seen with a canary). TLS
        # is client-first, so waiting for the ClientHello costs nothing.
        config["upstream_connect_mode"] = "ON_DOWNSTREAM_DATA"
        config["max_early_data_bytes"] = EARLY_DATA_BYTES
    return {"name": "envoy.filters.network.tcp_proxy", "typed_config": config}


def _state(key: str, value: str) -> Json:
    return {"object_key": key,
            "format_string": {"text_format_source": {"inline_string": value}}}
