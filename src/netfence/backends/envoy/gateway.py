"""The gateway: one Envoy per host serving every namespace workload (as root), each with
its own listeners in its own network namespace, its own policy and its own decision log.

A workload's resources are the own fence's (`live`, with the placement the root namespace
runtime gives it: egress and transparent listeners in its namespace, its DNS relayed to
its own dnsmasq on the host's loopback), renamed to be its own (_rename): compiled once,
at run or update, held by the daemon and published verbatim (the host's addresses are
part of a policy: compiling again later could change another workload's listeners and
drain its connections).

Envoy takes everything from files it watches (no xDS server: after a restart it restores
every workload alone), each in a directory of its own under `directory/xds`, since a
file renamed into a watched directory makes every file watched there be read again (the
listener file of 20 workloads is megabytes): the clusters (CDS), the listeners (LDS), the
connection limits (RTDS), each workload's route configurations (RDS, one file each, in a
directory per workload), and each workload's address stage for its transparent TLS
chains (ECDS, a file per role in a directory per workload: the chains name it instead of
each holding a copy, _ecds). Every file's version is a digest of its content, which
`applied` compares with what Envoy reports.

Publishing (the daemon's part): route and filter files (Publication.routes) always
before the listener file that names them (a listener waits, warming, for its route and
filter files, and one naming a filter file that does not exist is rejected). What only
adds is written at once (route and filter files, clusters, listeners, limits), then
`applied` on everything: Envoy (1.40) takes a listener naming a cluster it has not
loaded yet, in whichever order it reads the files, and its connections fail until the
cluster comes. A publication that removes anything goes in stages: route and filter
files and the clusters old and new, `applied` on the clusters file; then listeners and
limits, `applied` on everything; then the clusters without what went, `applied`; then
the route and filter files no listener names are deleted.

This module is the whole interface; _workload (a workload's slot and resources), _publish
(the files) and _gateway_paths (where they are) hold the parts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from netfence.backends.base import FileSpec, ProcessSpec
from netfence.backends.envoy import _gateway_paths as paths
from netfence.backends.envoy._admin import admin_get, stats
from netfence.backends.envoy._bootstrap import ADMIN_SOCKET_NAME, frame
from netfence.backends.envoy._gateway_paths import (
    admin_socket,
    clusters_path,
    filter_path,
    filters_dir,
    listeners_path,
    route_path,
    routes_dir,
    runtime_path,
    xds_dir,
)
from netfence.backends.envoy._names import Json
from netfence.backends.envoy._process import DRAIN_TIME_S, default_envoy_path, envoy_argv
from netfence.backends.envoy._publish import (
    NEW_WORKLOAD_WATCHES,
    RUNTIME_RESOURCE,
    Publication,
    inotify_instances,
    publication,
    route_files_in_use,
)
from netfence.backends.envoy._workload import (
    DEFAULT_CONNECTION_LIMIT,
    DNS_TCP_CONNECTION_LIMIT,
    EGRESS_PORT,
    LIMIT_KEY,
    LOOPBACKS,
    TRANSPARENT_PORT,
    Slot,
    WorkloadResources,
    slot_placement,
    workload_resources,
)
from netfence.backends.envoy._xds import (
    CLUSTER_TYPE,
    RUNTIME_TYPE,
    config_source,
    inline,
    resources_of,
    version_of,
)

BOOTSTRAP_NAME = "envoy.json"


def gateway_bootstrap(directory: Path) -> Json:
    """Admin on a 0600 Unix socket in `directory`; clusters and listeners from the files
    it watches; the runtime: the static limits, then the connection limits (a watched
    file), then the admin API's overrides (lost when Envoy restarts)."""
    limits = {"name": "limits", "rtds_layer": {
        "name": RUNTIME_RESOURCE, "rtds_config": config_source(paths.runtime_path(directory))}}
    config = frame("netfence-gateway", paths.admin_socket(directory), None,
                   [limits, {"name": "admin", "admin_layer": {}}])
    config["dynamic_resources"] = {
        "cds_config": config_source(paths.clusters_path(directory)),
        "lds_config": config_source(paths.listeners_path(directory)),
    }
    # Only the statistics `applied` reads: every listener, route and cluster of every
    # workload has dozens, most of an extra workload's memory (measured by
    # benchmarks/gateway.py: Envoy with 20 workloads 92 -> 68 MiB PSS).
    config["stats_config"] = {"stats_matcher": {"inclusion_list": {"patterns": [
        {"suffix": suffix} for suffix in _KEPT_STATS]}}}
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


def whole_config(directory: Path, published: Publication) -> Json:
    """The gateway's configuration with these files as one static bootstrap (the limits a
    static runtime layer): to validate (Envoy's validate mode reads no file it watches),
    and to read."""
    contents = {f.path: f.content for f in published.files}

    def read(path: Path) -> str:
        return contents[path]

    config = gateway_bootstrap(directory)
    config["static_resources"] = {"clusters": resources_of(
        read(paths.clusters_path(directory)), CLUSTER_TYPE, str(paths.clusters_path(directory)))}
    config["dynamic_resources"] = {"lds_config": config["dynamic_resources"]["lds_config"]}
    whole: Json = inline(config, read)
    (runtime,) = resources_of(read(paths.runtime_path(directory)), RUNTIME_TYPE,
                              str(paths.runtime_path(directory)))
    whole["layered_runtime"]["layers"] = [
        {"name": layer["name"], "static_layer": runtime["layer"]} if "rtds_layer" in layer
        else layer for layer in whole["layered_runtime"]["layers"]]
    return whole


# --- what the running Envoy applies -------------------------------------------------------

_KEPT_STATS = ("version_text", "warming_clusters", "total_listeners_warming")
_CDS_VERSION = "cluster_manager.cds.version_text"
_LDS_VERSION = "listener_manager.lds.version_text"
_RTDS_VERSION = "runtime.version_text"
_CLUSTERS_WARMING = "cluster_manager.warming_clusters"
_LISTENERS_WARMING = "listener_manager.total_listeners_warming"
_STATS = r"(version_text|warming_clusters|total_listeners_warming)$"
_ECDS_VERSION = "extension_config_discovery.network_filter.{}.version_text"
# The head of a filter file (_xds.discovery_response of one TypedExtensionConfig).
_FILTER_NAME = re.compile(r'"resources":\[\{"@type":"[^"]*","name":"([^"]+)"')


def applied(directory: Path, files: Iterable[FileSpec]) -> bool:
    """Whether the gateway's Envoy reports exactly these files' versions (any of the
    publication's: the clusters file alone, say), with no cluster warming (when the
    clusters file is among them) and no listener warming (the listener file or a route
    file). False when it does not answer. A refused file keeps the version before it:
    this stays False (`rejected` names refused listeners; Envoy's stderr says more).
    A route file's version is reported only while a listener names its route
    configuration: pass it with or after the listener file that does. So is a filter
    file's, named by its resource; one that no chain names (_ecds writes each role's file)
    is reported by none: its version is compared where it is reported."""
    want: dict[str, str | None] = {}
    named: dict[str, str | None] = {}
    warming: list[str] = []
    for spec in files:
        version = version_of(spec.content)
        if spec.path == paths.clusters_path(directory):
            want[_CDS_VERSION] = version
            warming.append(_CLUSTERS_WARMING)
        elif spec.path == paths.listeners_path(directory):
            want[_LDS_VERSION] = version
            warming.append(_LISTENERS_WARMING)
        elif spec.path == paths.runtime_path(directory):
            want[_RTDS_VERSION] = version
        elif paths.routes_dir(directory) in spec.path.parents:
            # Each HCM's stat prefix is its route configuration's name (_rename).
            name = spec.path.name.removesuffix(".json")
            want[f"http.{name}.rds.{name}.version_text"] = version
            warming.append(_LISTENERS_WARMING)
        elif paths.filters_dir(directory) in spec.path.parents:
            head = _FILTER_NAME.search(spec.content[:512])
            if head is None:
                raise ValueError(f"{spec.path}: not a filter file of the gateway")
            named[_ECDS_VERSION.format(head.group(1))] = version
            warming.append(_LISTENERS_WARMING)
        else:
            raise ValueError(f"{spec.path}: not a file the gateway in {directory} watches")
    try:
        found = stats(paths.admin_socket(directory), _STATS)
    except OSError:
        return False
    return (all(found.get(name) == version for name, version in want.items())
            and all(found.get(name, version) == version for name, version in named.items())
            and all(found.get(name, "0") == "0" for name in warming))


def rejected(directory: Path) -> dict[str, str]:
    """The listeners the gateway's Envoy refused from the listener file, by name, each
    with Envoy's reason (a namespace file gone, an address in use). Envoy applies the
    others, but reports the file's version only once none is refused: while this is not
    empty, `applied` on the listener file is False; publish without the workloads named
    (a listener's name is `<workload>.<suffix>`: workload_of). OSError when Envoy does
    not answer."""
    text = admin_get(paths.admin_socket(directory),
                     "/config_dump?resource=dynamic_listeners&mask=name,error_state.details")
    try:
        configs = json.loads(text).get("configs", [])
    except ValueError:
        raise OSError("envoy admin /config_dump: not JSON") from None
    return {c["name"]: c["error_state"].get("details", "")
            for c in configs if isinstance(c, dict) and "error_state" in c and "name" in c}


def workload_of(resource: str) -> str:
    """The workload a resource name (a listener's, a cluster's) is of."""
    return resource.rpartition(".")[0]


__all__ = [
    "ADMIN_SOCKET_NAME",
    "BOOTSTRAP_NAME",
    "DEFAULT_CONNECTION_LIMIT",
    "DNS_TCP_CONNECTION_LIMIT",
    "EGRESS_PORT",
    "LIMIT_KEY",
    "LOOPBACKS",
    "NEW_WORKLOAD_WATCHES",
    "TRANSPARENT_PORT",
    "Publication",
    "Slot",
    "WorkloadResources",
    "admin_socket",
    "applied",
    "clusters_path",
    "filter_path",
    "filters_dir",
    "gateway_bootstrap",
    "gateway_process",
    "inotify_instances",
    "listeners_path",
    "publication",
    "rejected",
    "route_files_in_use",
    "route_path",
    "routes_dir",
    "runtime_path",
    "slot_placement",
    "whole_config",
    "workload_of",
    "workload_resources",
    "xds_dir",
]
