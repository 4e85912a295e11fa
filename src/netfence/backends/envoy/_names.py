"""Names the parts of the bootstrap share: type URLs, filters, clusters, DNS caches, and
the reasons routes deny with."""

from __future__ import annotations

from typing import Any

from netfence.policy import Reason

Json = dict[str, Any]

DFP_CLUSTER = "dynamic_forward_proxy"
INGRESS_CLUSTER = "ingress_upstream"
# Two views of DNS (see _listeners.egress_filters): the check view resolves at the upstream
# resolver, the dial view at the fence's own DNS, which refuses answers holding a denied
# address.
DNS_CACHE_NAME = "netfence_dns_cache"
DIAL_CACHE_NAME = "netfence_dial_view"
# Plain HTTP without a port in its authority goes to 80.
HTTP_DEFAULT_PORT = 80
# Reasons a route can deny with (the name and port stages); the address stage is RBAC's.
ROUTE_DENY_REASONS: tuple[Reason, ...] = (
    Reason.DENIED_NAME, Reason.NOT_ALLOWLISTED, Reason.PORT_NOT_ALLOWED,
    Reason.UNSUPPORTED_REQUEST, Reason.INVALID_HOST,
)

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
# The RBAC filter refusing an authority the policy cannot read as a host, first in every HCM
# that resolves names (_routes.host_check_filter).
HOST_CHECK_FILTER = "netfence.host_check"
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
# The transparent listener's listener filters and network filters.
ORIGINAL_DST_FILTER_TYPE = _T + "envoy.extensions.filters.listener.original_dst.v3.OriginalDst"
PROXY_PROTOCOL_FILTER_TYPE = (
    _T + "envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol"
)
TLS_INSPECTOR_TYPE = _T + "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
HTTP_INSPECTOR_TYPE = _T + "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"
SNI_DFP_TYPE = _T + "envoy.extensions.filters.network.sni_dynamic_forward_proxy.v3.FilterConfig"
NET_RBAC_TYPE = _T + "envoy.extensions.filters.network.rbac.v3.RBAC"
NET_SET_FILTER_STATE_TYPE = _T + "envoy.extensions.filters.network.set_filter_state.v3.Config"
TCP_PROXY_TYPE = _T + "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
DIRECT_RESPONSE_TYPE = _T + "envoy.extensions.filters.network.direct_response.v3.Config"
