"""One workload in the gateway: its slot (where it is), and its resources, the own fence's
(`live`, with the placement the root namespace runtime gives it) under names of its own
(_rename), the address stage of its transparent TLS chains once (_ecds), compiled once and
kept as they are."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from netfence.backends.base import DNS_PORT, Endpoint, Forward, Placement
from netfence.backends.envoy import _gateway_paths as paths
from netfence.backends.envoy._bootstrap import live
from netfence.backends.envoy._ecds import TYPED_EXTENSION_TYPE, by_discovery, named, shared_filters
from netfence.backends.envoy._log import EGRESS_LOG_NAME
from netfence.backends.envoy._names import DFP_CLUSTER, INGRESS_CLUSTER, Json
from netfence.backends.envoy._rename import Renamer
from netfence.backends.envoy._transparent import LISTENER_NAME as TRANSPARENT
from netfence.backends.envoy._transparent_filters import ORIGINAL_DST_CLUSTER
from netfence.backends.envoy._xds import (
    CLUSTER_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    discovery_response,
    encoded,
)
from netfence.backends.relay import relay_resources
from netfence.policy import Policy

# Per workload listener (egress, transparent; DNS over TCP gets less, below). The
# workload's DFP cluster has Envoy's default circuit breakers (1,024 connections, pending
# and active requests): more connections than that would only wait there. A workload at
# its limits holds 2 x 1,024 + 2 x 64 connections, so it alone cannot use up the
# gateway's global bound (_bootstrap.MAX_DOWNSTREAM_CONNECTIONS, 10,000).
DEFAULT_CONNECTION_LIMIT = 1024
# DNS over TCP: dnsmasq serves at most 20 TCP clients at once (a process each).
DNS_TCP_CONNECTION_LIMIT = 64
EGRESS_PORT = 3128
TRANSPARENT_PORT = 15001
LOOPBACKS = ("127.0.0.1", "::1")
LIMIT_KEY = "envoy.resource_limits.listener.{}.connection_limit"
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")

# Suffixes of the workload's resources (_rename): the egress, ingress and transparent
# listeners and route configurations keep their names.
_CLUSTERS = {DFP_CLUSTER: "dfp", ORIGINAL_DST_CLUSTER: "original_dst",
             INGRESS_CLUSTER: "ingress"}
_POLICY_LISTENERS = ("egress", "ingress", TRANSPARENT)
_LIMITED = ("egress", TRANSPARENT)


@dataclass(frozen=True)
class Slot:
    """One workload's place in the gateway.

    name: the workload's (a netfence state name), the prefix of each of its resources.
    netns: its network namespace file; its egress (egress_port), transparent
        (transparent_port) and DNS (:53, UDP and TCP) listeners are on each of `loopbacks`
        there (the egress on the first only; a host without IPv6 has no ::1 there). A
        path of this run of the workload only, never one where an earlier namespace was:
        Envoy keeps a removed UDP listener's socket for --drain-time-s and gives it to a
        new listener on the same address (seen with 1.40: a workload started again at
        once with a new namespace at the same path had TCP in its new namespace, but DNS
        on UDP still in the old one).
    dns: its own dnsmasq on the host's loopback: the DNS relays' target and the dial view's
        resolver. Keep its port for the workload's life (the dial view names it).
    upstream_resolver: the real resolver (the check view's).
    logs: the directory of its decision log: one per workload name under the gateway's
        directory (Envoy keeps every access-log path it ever opened until it exits).
    connection_limit: per listener (the egress, the transparent listener; DNS over TCP
        at most DNS_TCP_CONNECTION_LIMIT), set through the runtime (RTDS).
    ingress_listen / ingress_upstream: for a workload that serves (not stdio): the
        listener on the host and where the workload's port is reached from it.
    """

    name: str
    netns: Path
    dns: Endpoint
    upstream_resolver: Endpoint
    logs: Path
    connection_limit: int = DEFAULT_CONNECTION_LIMIT
    loopbacks: tuple[str, ...] = LOOPBACKS
    egress_port: int = EGRESS_PORT
    transparent_port: int = TRANSPARENT_PORT
    ingress_listen: Endpoint | None = None
    ingress_upstream: Endpoint | None = None


@dataclass(frozen=True)
class WorkloadResources:
    """What one workload adds to the gateway, compiled once and published verbatim:
    listeners, clusters, route configurations by name, connection limits by runtime key,
    the decision logs its listeners write, and the network filters its listeners name by
    discovery (_ecds), by role."""

    name: str
    listeners: list[Json]
    clusters: list[Json]
    routes: dict[str, Json]
    limits: dict[str, int]
    decision_logs: tuple[Path, ...]
    filters: dict[str, Json] = field(default_factory=dict)

    # Encoded once (cached on the instance): publication joins them for every file it writes.

    @cached_property
    def _listeners_json(self) -> str:
        return encoded(self.listeners, LISTENER_TYPE)[1:-1]

    @cached_property
    def _clusters_json(self) -> str:
        return encoded(self.clusters, CLUSTER_TYPE)[1:-1]

    @cached_property
    def _route_files(self) -> dict[str, str]:
        return {name: discovery_response([route], ROUTE_TYPE)
                for name, route in sorted(self.routes.items())}

    @cached_property
    def _filter_files(self) -> dict[str, str]:
        return {role: discovery_response([resource], TYPED_EXTENSION_TYPE)
                for role, resource in sorted(self.filters.items())}

    @cached_property
    def watched_filters(self) -> int:
        """The filter resources its chains name: one subscription (inotify instance) each."""
        return len(named(self._listeners_json, self.filters))


def _checked_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"not a workload name: {name!r}")
    return name


def slot_placement(slot: Slot) -> tuple[Placement, dict[str, str]]:
    """The placement the root namespace runtime gives its own fence, for the slot; and the
    DNS relays' listener names with their suffixes."""
    def inside(host: str, port: int) -> Endpoint:
        return Endpoint(host, port, slot.netns)

    if not slot.loopbacks:
        raise ValueError("a gateway slot needs a loopback address to listen on")
    relays: list[Forward] = []
    names: dict[str, str] = {}
    for host in slot.loopbacks:
        family = "6" if ":" in host else "4"
        for protocol in ("udp", "tcp"):
            forward = Forward(inside(host, DNS_PORT), slot.dns, protocol)
            relays.append(forward)
            (listener,), _ = relay_resources([forward])
            names[listener["name"]] = f"dns_{protocol}{family}"
    placement = Placement(
        state_dir=slot.logs,  # where the access logs are (nothing else of it is used)
        egress_listen=inside(slot.loopbacks[0], slot.egress_port),
        workload_proxy=f"{slot.loopbacks[0]}:{slot.egress_port}",
        dns_listen=slot.dns,
        upstream_resolver=slot.upstream_resolver,
        ingress_listen=slot.ingress_listen,
        ingress_upstream=slot.ingress_upstream,
        workload_name=slot.name,
        transparent_listen=tuple(inside(h, slot.transparent_port) for h in slot.loopbacks),
        relays=tuple(relays),
    )
    return placement, names


def workload_resources(policy: Policy, slot: Slot, directory: Path) -> WorkloadResources:
    """One workload's resources in the gateway whose directory is `directory` (its route
    files are there), every name of them its own."""
    name = _checked_name(slot.name)
    if slot.connection_limit < 1:
        raise ValueError(f"{name}: a connection limit must be at least 1")
    placement, relay_names = slot_placement(slot)
    config = live(policy, placement)
    static = config.bootstrap["static_resources"]
    listeners: list[Json] = [*static["listeners"], *config.listeners]
    clusters: list[Json] = static["clusters"]
    (_, (dns_cluster,)) = relay_resources(placement.relays[:1])
    renamer = Renamer(
        name,
        clusters={**_CLUSTERS, dns_cluster["name"]: "dns"},
        listeners={**{n: n for n in _POLICY_LISTENERS}, **relay_names},
        routes={n: n for n in config.routes},
        route_file=lambda route: paths.route_path(directory, name, route),
        logs=slot.logs)
    renamed = [renamer.listener(lst) for lst in listeners]
    limits: dict[str, int] = {}
    for old, new in zip(listeners, renamed, strict=True):
        if old["name"] in _LIMITED:
            limits[LIMIT_KEY.format(new["name"])] = slot.connection_limit
        elif relay_names.get(old["name"], "").startswith("dns_tcp"):
            limits[LIMIT_KEY.format(new["name"])] = min(slot.connection_limit,
                                                        DNS_TCP_CONNECTION_LIMIT)
    routes = {renamer.routes[n]: renamer.route(rc) for n, rc in config.routes.items()}
    filters = shared_filters(policy, renamer, renamed)
    return WorkloadResources(
        name=name,
        listeners=by_discovery(renamed, filters,
                               lambda role: paths.filter_path(directory, name, role)),
        clusters=[renamer.cluster(c) for c in clusters],
        routes=routes,
        limits=limits,
        decision_logs=(slot.logs / EGRESS_LOG_NAME,),
        filters=filters,
    )
