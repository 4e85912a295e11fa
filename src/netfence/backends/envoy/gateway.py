"""The gateway: one Envoy per host serving every namespace workload (as root), each with
its own listeners in its own network namespace, its own policy and its own decision log.

A workload's resources are the own fence's (`live`, with the placement the root namespace
runtime gives it: egress and transparent listeners in its namespace, its DNS relayed to
its own dnsmasq on the host's loopback), renamed to be its own (_rename): compiled once,
at run or update, kept in its state dir (WorkloadResources.dumps) and published verbatim
(the host's addresses are part of a policy: compiling again later could change another
workload's listeners and drain its connections).

Envoy takes everything from files it watches (no xDS server: after a restart it restores
every workload alone), each in a directory of its own under `directory/xds`, since a
file renamed into a watched directory makes every file watched there be read again (the
listener file of 20 workloads is megabytes): the clusters (CDS), the listeners (LDS), the
connection limits (RTDS), and each workload's route configurations (RDS, one file each,
in a directory per workload). Every file's version is a digest of its content, which
`applied` compares with what Envoy reports.

Publishing (the daemon's part): route files and clusters first, then `applied` on the
clusters file, then listeners and limits, then `applied` on everything; removal the other
way round. A listener naming a cluster not loaded yet is not retried once rejected, and a
listener waits (warming) for its route files.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from netfence.backends.base import (
    DNS_PORT,
    Endpoint,
    FileSpec,
    Forward,
    Placement,
    ProcessSpec,
)
from netfence.backends.envoy._admin import stats
from netfence.backends.envoy._bootstrap import ADMIN_SOCKET_NAME, frame, live
from netfence.backends.envoy._log import EGRESS_LOG_NAME
from netfence.backends.envoy._names import DFP_CLUSTER, INGRESS_CLUSTER, Json
from netfence.backends.envoy._process import DRAIN_TIME_S, default_envoy_path, envoy_argv
from netfence.backends.envoy._rename import Renamer
from netfence.backends.envoy._transparent import LISTENER_NAME as TRANSPARENT
from netfence.backends.envoy._transparent_filters import ORIGINAL_DST_CLUSTER
from netfence.backends.envoy._xds import (
    CLUSTER_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    RUNTIME_TYPE,
    config_source,
    discovery_response,
    encoded,
    inline,
    resources_of,
    version_of,
    versioned,
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
BOOTSTRAP_NAME = "envoy.json"
XDS_DIR_NAME = "xds"
RUNTIME_RESOURCE = "netfence_limits"
LIMIT_KEY = "envoy.resource_limits.listener.{}.connection_limit"
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")
_RESOURCES_FORMAT = 1

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
        there (the egress on the first only). A path of this run of the workload only,
        never one where an earlier namespace was: Envoy keeps a removed UDP listener's
        socket for --drain-time-s and gives it to a new listener on the same address
        (seen with 1.40: a workload started again at once with a new namespace at the
        same path had TCP in its new namespace, but DNS on UDP still in the old one).
    dns: its own dnsmasq on the host's loopback: the DNS relays' target and the dial view's
        resolver. Keep its port for the workload's life (the dial view names it).
    upstream_resolver: the real resolver (the check view's).
    logs: the directory of its decision log: one per workload name under the gateway's
        directory (Envoy keeps every access-log path it ever opened until it exits).
    connection_limit: per listener (the egress, the transparent listener).
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
    and the decision logs its listeners write."""

    name: str
    listeners: list[Json]
    clusters: list[Json]
    routes: dict[str, Json]
    limits: dict[str, int]
    decision_logs: tuple[Path, ...]

    def dumps(self) -> str:
        """Compact JSON, to keep in the workload's state dir."""
        return json.dumps({
            "format": _RESOURCES_FORMAT, "name": self.name, "listeners": self.listeners,
            "clusters": self.clusters, "routes": self.routes, "limits": self.limits,
            "decision_logs": [str(p) for p in self.decision_logs],
        }, separators=(",", ":"))

    @classmethod
    def loads(cls, text: str) -> WorkloadResources:
        """What dumps wrote; ValueError for anything else."""
        try:
            body = json.loads(text)
            if not isinstance(body, dict) or body.get("format") != _RESOURCES_FORMAT:
                raise ValueError("not a gateway workload record of this netfence")
            found = cls(name=_checked_name(body["name"]),
                        listeners=_list_of_dicts(body["listeners"]),
                        clusters=_list_of_dicts(body["clusters"]),
                        routes=_dict_of(body["routes"], dict),
                        limits=_dict_of(body["limits"], int),
                        decision_logs=tuple(Path(p) for p in _list_of(body["decision_logs"],
                                                                      str)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"gateway workload resources: {exc}") from None
        return found

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


def _checked_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"not a workload name: {name!r}")
    return name


def _list_of(value: object, kind: type) -> list[Any]:
    if not isinstance(value, list) or not all(isinstance(v, kind) for v in value):
        raise TypeError(f"not a list of {kind.__name__}")
    return value


def _list_of_dicts(value: object) -> list[Json]:
    return _list_of(value, dict)


def _dict_of(value: object, kind: type) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, kind) and not isinstance(v, bool)
            for k, v in value.items()):
        raise TypeError(f"not a map of {kind.__name__}")
    return value


# --- where the files are ---------------------------------------------------------------


def xds_dir(directory: Path) -> Path:
    return directory / XDS_DIR_NAME


def clusters_path(directory: Path) -> Path:
    return xds_dir(directory) / "clusters" / "clusters.json"


def listeners_path(directory: Path) -> Path:
    return xds_dir(directory) / "listeners" / "listeners.json"


def runtime_path(directory: Path) -> Path:
    return xds_dir(directory) / "runtime" / "runtime.json"


def routes_dir(directory: Path) -> Path:
    """The route files, in one directory per workload (their names start with its name)."""
    return xds_dir(directory) / "routes"


def route_path(directory: Path, workload: str, route_config: str) -> Path:
    return routes_dir(directory) / workload / f"{route_config}.json"


def admin_socket(directory: Path) -> Path:
    return directory / ADMIN_SOCKET_NAME


# --- one workload ----------------------------------------------------------------------


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
        route_file=lambda route: route_path(directory, name, route),
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
    return WorkloadResources(
        name=name,
        listeners=renamed,
        clusters=[renamer.cluster(c) for c in clusters],
        routes=routes,
        limits=limits,
        decision_logs=(slot.logs / EGRESS_LOG_NAME,),
    )


# --- the gateway's Envoy ---------------------------------------------------------------


def gateway_bootstrap(directory: Path) -> Json:
    """Admin on a 0600 Unix socket in `directory`; clusters and listeners from the files
    it watches; the runtime: the static limits, then the connection limits (a watched
    file), then the admin API's overrides (lost when Envoy restarts)."""
    limits = {"name": "limits", "rtds_layer": {
        "name": RUNTIME_RESOURCE, "rtds_config": config_source(runtime_path(directory))}}
    config = frame("netfence-gateway", admin_socket(directory), None,
                   [limits, {"name": "admin", "admin_layer": {}}])
    config["dynamic_resources"] = {
        "cds_config": config_source(clusters_path(directory)),
        "lds_config": config_source(listeners_path(directory)),
    }
    return config


def gateway_process(directory: Path, envoy_path: str | None = None,
                    drain_time_s: int = DRAIN_TIME_S) -> tuple[FileSpec, ProcessSpec]:
    """The bootstrap file and how to run the gateway's Envoy.

    Envoy does not start unless the files it watches exist: write a publication first
    (`publication(directory, [])` when there is no workload yet). Nothing to probe for
    readiness (no listener of its own): it is ready when `applied(directory, files)` holds
    for the files published (its admin socket answers once it has loaded them)."""
    path = directory / BOOTSTRAP_NAME
    content = json.dumps(gateway_bootstrap(directory), separators=(",", ":")) + "\n"
    process = ProcessSpec(
        name="gateway",
        argv=envoy_argv(envoy_path or default_envoy_path(), path, drain_time_s),
        ready=(),
        stdout=directory / "envoy.stdout.log",
        stderr=directory / "envoy.stderr.log",
        role="egress",
        # :53 in each namespace, and setns() into them to create the listeners there.
        capabilities=("NET_BIND_SERVICE", "SYS_ADMIN"),
        reads=(path,),
    )
    return FileSpec(path, content), process


# --- publishing ------------------------------------------------------------------------


@dataclass(frozen=True)
class Publication:
    """The files Envoy watches, for a set of workloads: write (FileSpec, base.write_file)
    those whose content changed, in the order of the module doc."""

    routes: tuple[FileSpec, ...]
    clusters: FileSpec
    listeners: FileSpec
    runtime: FileSpec

    @property
    def files(self) -> tuple[FileSpec, ...]:
        return (*self.routes, self.clusters, self.listeners, self.runtime)


def publication(directory: Path, workloads: Sequence[WorkloadResources]) -> Publication:
    """Every workload's resources in the gateway's files (in the order of their names, so
    that the same workloads give the same files). ValueError for two workloads of one
    name, or two resources of one name."""
    ordered = sorted(workloads, key=lambda w: w.name)
    _check_disjoint(ordered)
    limits: dict[str, int] = {}
    for workload in ordered:
        limits.update(sorted(workload.limits.items()))
    runtime = {"name": RUNTIME_RESOURCE, "layer": limits}
    return Publication(
        routes=tuple(FileSpec(route_path(directory, w.name, name), content)
                     for w in ordered for name, content in w._route_files.items()),
        clusters=FileSpec(clusters_path(directory),
                          _joined(w._clusters_json for w in ordered)),
        listeners=FileSpec(listeners_path(directory),
                           _joined(w._listeners_json for w in ordered)),
        runtime=FileSpec(runtime_path(directory), discovery_response([runtime], RUNTIME_TYPE)),
    )


def _joined(fragments: Iterable[str]) -> str:
    """A discovery response of the resources of each fragment (a JSON list's items), as
    _xds.discovery_response gives for the resources in one list."""
    return versioned("[" + ",".join(f for f in fragments if f) + "]")


def _check_disjoint(workloads: Sequence[WorkloadResources]) -> None:
    owners: dict[tuple[str, str], int] = {}
    for index, workload in enumerate(workloads):
        named = [("workload", workload.name)]
        named += [("listener", r["name"]) for r in workload.listeners]
        named += [("cluster", r["name"]) for r in workload.clusters]
        named += [("route configuration", n) for n in workload.routes]
        named += [("runtime key", k) for k in workload.limits]
        for kind, name in named:
            owner = owners.setdefault((kind, name), index)
            if owner != index:
                raise ValueError(f"two of the gateway's workloads ({workloads[owner].name!r}, "
                                 f"{workload.name!r}) have a {kind} named {name!r}")


def route_files_in_use(directory: Path, workloads: Iterable[WorkloadResources]) -> set[Path]:
    """The route files of these workloads: the others under routes_dir(directory) may be
    deleted once the listeners naming them are gone (`applied` on the listener file)."""
    return {route_path(directory, w.name, name) for w in workloads for name in w.routes}


def whole_config(directory: Path, published: Publication) -> Json:
    """The gateway's configuration with these files as one static bootstrap (the limits a
    static runtime layer): to validate (Envoy's validate mode reads no file it watches),
    and to read."""
    contents = {f.path: f.content for f in published.files}

    def read(path: Path) -> str:
        return contents[path]

    config = gateway_bootstrap(directory)
    config["static_resources"] = {"clusters": resources_of(
        read(clusters_path(directory)), CLUSTER_TYPE, str(clusters_path(directory)))}
    config["dynamic_resources"] = {"lds_config": config["dynamic_resources"]["lds_config"]}
    whole: Json = inline(config, read)
    (runtime,) = resources_of(read(runtime_path(directory)), RUNTIME_TYPE,
                              str(runtime_path(directory)))
    whole["layered_runtime"]["layers"] = [
        {"name": layer["name"], "static_layer": runtime["layer"]} if "rtds_layer" in layer
        else layer for layer in whole["layered_runtime"]["layers"]]
    return whole


# --- what the running Envoy applies -------------------------------------------------------

_CDS_VERSION = "cluster_manager.cds.version_text"
_LDS_VERSION = "listener_manager.lds.version_text"
_RTDS_VERSION = "runtime.version_text"
_CLUSTERS_WARMING = "cluster_manager.warming_clusters"
_LISTENERS_WARMING = "listener_manager.total_listeners_warming"
_STATS = r"(version_text|warming_clusters|total_listeners_warming)$"


def applied(directory: Path, files: Iterable[FileSpec]) -> bool:
    """Whether the gateway's Envoy reports exactly these files' versions (any of the
    publication's: the clusters file alone, say), with no cluster warming (when the
    clusters file is among them) and no listener warming (the listener file or a route
    file). False when it does not answer. A rejected file keeps the version before it:
    this stays False (the reason is in Envoy's stderr).
    A route file's version is reported only while a listener names its route
    configuration: pass it with or after the listener file that does."""
    want: dict[str, str | None] = {}
    warming: list[str] = []
    for spec in files:
        version = version_of(spec.content)
        if spec.path == clusters_path(directory):
            want[_CDS_VERSION] = version
            warming.append(_CLUSTERS_WARMING)
        elif spec.path == listeners_path(directory):
            want[_LDS_VERSION] = version
            warming.append(_LISTENERS_WARMING)
        elif spec.path == runtime_path(directory):
            want[_RTDS_VERSION] = version
        elif spec.path.parent.parent == routes_dir(directory):
            # Each HCM's stat prefix is its route configuration's name (_rename).
            name = spec.path.name.removesuffix(".json")
            want[f"http.{name}.rds.{name}.version_text"] = version
            warming.append(_LISTENERS_WARMING)
        else:
            raise ValueError(f"{spec.path}: not a file the gateway in {directory} watches")
    try:
        found = stats(admin_socket(directory), _STATS)
    except OSError:
        return False
    return (all(found.get(name) == version for name, version in want.items())
            and all(found.get(name, "0") == "0" for name in warming))
