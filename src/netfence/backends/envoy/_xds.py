"""The live layout: the policy in files Envoy watches, so that `netfence update` can replace
it while Envoy runs.

The bootstrap holds only what the placement decides (admin, clusters, relays, limits, and
the egress and ingress listeners, whose HTTP connection managers name their routes). Each
HCM takes its routes from a file of their own (RDS) under a name that never changes
(`egress`, `transparent`, `ingress`), the address stage's rules with them; the
transparent listener, whose chains and matcher are the policy, comes from a listener file
(LDS). Envoy re-reads a file when one is renamed into its directory (write_file writes
every file so), compares each listener and filter chain with the one it runs, and
replaces only those that differ; their connections drain (--drain-time-s), the others'
stay. So a policy change touches the route files (HTTP and CONNECT decide each request
anew) and the transparent listener's TLS chains of the names it adds or drops, never the
egress listener. Each file's version_info is a digest of its resources: `settled`
compares it with the version Envoy reports.

Seen with Envoy 1.40 while researching issue 12: with routes inline, or under names that
change, every update drained the whole egress listener (CONNECT tunnels closed when the
drain ended).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from netfence.backends.envoy._names import HCM_TYPE, Json

XDS_DIR_NAME = "envoy-xds"
LISTENERS_NAME = "listeners.json"
_ROUTES_PREFIX = "routes-"
LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
RUNTIME_TYPE = "type.googleapis.com/envoy.service.runtime.v3.Runtime"
TYPED_EXTENSION_TYPE = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
# The head of every file this module writes: the version comes first.
_VERSION = re.compile(r'^\{"version_info":"([0-9a-f]+)"')


def xds_dir(state_dir: Path) -> Path:
    """The directory Envoy watches: its own, so that other files renamed into the state
    dir (dnsmasq's) do not make it re-read the listeners."""
    return state_dir / XDS_DIR_NAME


def route_file(directory: Path, name: str) -> Path:
    return directory / f"{_ROUTES_PREFIX}{name}.json"


def route_name_of(path: Path) -> str | None:
    """The route configuration a route_file holds; None for another file."""
    if path.parent.name != XDS_DIR_NAME or not path.name.startswith(_ROUTES_PREFIX):
        return None
    return path.name[len(_ROUTES_PREFIX):].removesuffix(".json")


def config_source(path: Path) -> Json:
    """A file Envoy reads at start and again whenever a file is renamed into its directory."""
    return {"resource_api_version": "V3", "path_config_source": {
        "path": str(path), "watched_directory": {"path": str(path.parent)}}}


def discovery_response(resources: list[Json], type_url: str) -> str:
    """A file's content: the resources under a version that is their digest (compact JSON,
    as the bootstrap: json's C encoder)."""
    return versioned(encoded(resources, type_url))


def encoded(resources: list[Json], type_url: str) -> str:
    """The resources as a JSON list, each with its @type."""
    return json.dumps([{"@type": type_url, **r} for r in resources], separators=(",", ":"))


def versioned(body: str) -> str:
    """A discovery response holding `body` (a JSON list of resources, as `encoded` gives),
    its version the digest of that list."""
    version = hashlib.sha256(body.encode()).hexdigest()[:16]
    return f'{{"version_info":"{version}","resources":{body}}}\n'


def version_of(content: str) -> str | None:
    """The version of a file discovery_response wrote (read from its head only: a file
    with 100,000 names is not parsed for it)."""
    found = _VERSION.match(content[:64])
    return found.group(1) if found else None


def hcms(listener: Json) -> Iterator[Json]:
    """The HTTP connection managers of a listener's filter chains."""
    chains = [*listener.get("filter_chains", ())]
    if "default_filter_chain" in listener:
        chains.append(listener["default_filter_chain"])
    for chain in chains:
        for network_filter in chain.get("filters", ()):
            typed = network_filter.get("typed_config", {})
            if typed.get("@type") == HCM_TYPE:
                yield typed


def to_rds(listeners: list[Json], directory: Path) -> tuple[list[Json], dict[str, Json]]:
    """The listeners with each HCM's inline routes replaced by RDS from a file named after
    the route configuration (a stable name: the HCM stays the same message whatever the
    routes), and those route configurations by name. HCMs that share a route config name
    must share its content (the transparent HTTP chains are one)."""
    routes: dict[str, Json] = {}
    out: list[Json] = []
    for listener in listeners:
        listener = _copy_chains(listener)
        for hcm in hcms(listener):
            route_config = hcm.pop("route_config")
            name = route_config["name"]
            if routes.setdefault(name, route_config) != route_config:
                raise ValueError(f"two different Envoy route configs named {name!r}")
            hcm["rds"] = {"route_config_name": name,
                          "config_source": config_source(route_file(directory, name))}
        out.append(listener)
    return out, routes


def _copy_chains(listener: Json) -> Json:
    """The listener with new dicts down to each HCM (the generated parts may share them)."""
    def chain(c: Json) -> Json:
        return {**c, "filters": [
            {**f, "typed_config": dict(f["typed_config"])} if "typed_config" in f else f
            for f in c.get("filters", ())]}
    copied = {**listener, "filter_chains": [chain(c) for c in listener.get("filter_chains", ())]}
    if "default_filter_chain" in listener:
        copied["default_filter_chain"] = chain(listener["default_filter_chain"])
    return copied


def resources_of(content: str, type_url: str, where: str) -> list[Json]:
    """The resources of a file discovery_response wrote, without their @type; ValueError
    naming `where` for anything else."""
    try:
        body = json.loads(content)
        found = body["resources"]
        if not isinstance(body.get("version_info"), str) or not isinstance(found, list):
            raise TypeError
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{where}: not a discovery response ({exc})") from None
    out: list[Json] = []
    for resource in found:
        if not isinstance(resource, dict) or resource.get("@type") != type_url:
            raise ValueError(f"{where}: a resource that is not a {type_url.rsplit('.', 1)[-1]}")
        out.append({k: v for k, v in resource.items() if k != "@type"})
    return out


def inline(bootstrap: Json, read: Callable[[Path], str]) -> Json:
    """The whole configuration as one static bootstrap: the bootstrap's listeners, then
    those of the listener file, each HCM's routes from their file and each network filter
    found by discovery from its file, inline, as Envoy runs them. `read` gives a file's
    content.
    For validation (Envoy's validate mode reads no xDS file) and for reading."""
    whole = {k: v for k, v in bootstrap.items() if k != "dynamic_resources"}
    static = dict(whole.get("static_resources", {}))
    lds = bootstrap.get("dynamic_resources", {}).get("lds_config")
    listeners = list(static.get("listeners", ()))
    if lds is not None:
        path = Path(lds["path_config_source"]["path"])
        listeners += resources_of(read(path), LISTENER_TYPE, str(path))
    listeners = [_copy_chains(listener) for listener in listeners]
    for listener in listeners:
        for chain in _chains_of(listener):
            chain["filters"] = [_discovered(f, read) if "config_discovery" in f else f
                                for f in chain.get("filters", ())]
        for hcm in hcms(listener):
            if "rds" in hcm:
                hcm["route_config"] = _route_config(hcm.pop("rds"), read)
    static["listeners"] = listeners
    whole["static_resources"] = static
    return whole


def _chains_of(listener: Json) -> list[Json]:
    chains = list(listener.get("filter_chains", ()))
    return chains + ([listener["default_filter_chain"]] if "default_filter_chain" in listener
                     else [])


def _discovered(network_filter: Json, read: Callable[[Path], str]) -> Json:
    """A network filter found by discovery (ECDS), with the configuration of its file."""
    name = network_filter["name"]
    discovery = network_filter["config_discovery"]
    path = Path(discovery["config_source"]["path_config_source"]["path"])
    found = resources_of(read(path), TYPED_EXTENSION_TYPE, str(path))
    # Envoy takes exactly one resource, named as the filter, of a type it asks for.
    if len(found) != 1 or found[0].get("name") != name:
        raise ValueError(f"{path}: not the one filter configuration {name!r}")
    typed = found[0].get("typed_config", {})
    if typed.get("@type") not in discovery.get("type_urls", ()):
        raise ValueError(f"{path}: {name!r} is not of a type the filter takes")
    return {"name": name, "typed_config": typed}


def _route_config(rds: Json, read: Callable[[Path], str]) -> Json:
    name = rds["route_config_name"]
    path = Path(rds["config_source"]["path_config_source"]["path"])
    found = resources_of(read(path), ROUTE_TYPE, str(path))
    # Envoy takes exactly one route configuration from a file, named as the HCM asks.
    if len(found) != 1 or found[0].get("name") != name:
        raise ValueError(f"{path}: not the one route configuration {name!r}")
    return found[0]
