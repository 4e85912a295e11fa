"""One workload's resources under names of its own, for the gateway (one Envoy serving
every workload of a host): `<workload>.<suffix>` for every name Envoy keys a resource by
(listeners, clusters, route configurations, DNS caches) and every stat prefix, and every
reference to them rewritten alike.

A suffix holds no dot, so two workloads' names never meet: `a.x` of workload `a` could only
be workload `a.x`'s name `a.x.y` if some suffix were `x.y`. Chain, route, virtual-host,
filter and RBAC policy names stay as they are: each is scoped by its listener, route
configuration or filter (and the decision log reads the chain and route names).

Each reference is rewritten where it is expected, and a reference to a name not known here
is an error, not left as it was: a name shared by accident between workloads would be
one workload's resource serving another (a DNS cache resolving at another's dnsmasq), or a
configuration Envoy rejects (a DNS cache name with other settings).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from netfence.backends.envoy._names import (
    DIAL_CACHE_NAME,
    DNS_CACHE_NAME,
    FILE_LOG_TYPE,
    HCM_TYPE,
    Json,
)
from netfence.backends.envoy._xds import config_source

# The two DNS views' caches: check (at the upstream resolver) and dial (at the workload's
# dnsmasq). Their names also carry a digest of their settings: Envoy keeps a cache while
# anything still uses it (a listener draining for --drain-time-s), and a cache asked for
# under a known name with other settings is rejected, so a workload that starts again at
# once under the same name with another resolver (its dnsmasq on another port) needs
# another cache name.
_CACHE_ROLES = {DNS_CACHE_NAME: "check", DIAL_CACHE_NAME: "dial"}


class Renamer:
    """Rewrites one workload's listeners, clusters and route configurations.

    clusters / listeners / routes: each original name to its suffix. route_file: where a
    route configuration's file is, by its new name. logs: the only directory an access
    log may write to."""

    def __init__(self, workload: str, *, clusters: Mapping[str, str],
                 listeners: Mapping[str, str], routes: Mapping[str, str],
                 route_file: Callable[[str], Path], logs: Path) -> None:
        self.prefix = f"{workload}."
        for suffix in (*clusters.values(), *listeners.values(), *routes.values()):
            if "." in suffix or not suffix:
                raise ValueError(f"a resource suffix must be a word without dots: {suffix!r}")
        self.clusters = {old: self.prefix + new for old, new in clusters.items()}
        self.listeners = {old: self.prefix + new for old, new in listeners.items()}
        self.routes = {old: self.prefix + new for old, new in routes.items()}
        self.route_file = route_file
        self.logs = logs

    def listener(self, listener: Json) -> Json:
        out: Json = self._walk(listener, "")
        out["name"] = name = self._known(self.listeners, listener["name"], "listener")
        # Listener stats are keyed by address otherwise: every workload's egress is
        # 127.0.0.1:3128 in its own namespace, and their stats would add up.
        out["stat_prefix"] = name
        return out

    def cluster(self, cluster: Json) -> Json:
        out: Json = self._walk(cluster, "")
        out["name"] = self._known(self.clusters, cluster["name"], "cluster")
        return out

    def route(self, route_config: Json) -> Json:
        out: Json = self._walk(route_config, "")
        out["name"] = self._known(self.routes, route_config["name"], "route configuration")
        return out

    def filter(self, network_filter: Json) -> Json:
        """A network filter as it is in the renamed listeners (its stat prefix, the clusters
        and caches it names): to share it once per workload (_ecds)."""
        out: Json = self._walk(network_filter, "")
        return out

    def _walk(self, node: Any, key: str) -> Any:
        if isinstance(node, list):
            return [self._walk(item, key) for item in node]
        if not isinstance(node, dict):
            return self._value(node, key)
        out = {k: self._walk(v, k) for k, v in node.items()}
        if key == "dns_cache_config":
            out["name"] = self._cache(node)
        elif key == "rds":
            name = self._known(self.routes, node["route_config_name"], "route configuration")
            out = {"route_config_name": name, "config_source": config_source(self.route_file(name))}
        if node.get("@type") == HCM_TYPE and "rds" in node:
            # Its RDS stats are http.<stat_prefix>.rds.<route config>.*: one prefix per
            # route configuration, the same string (gateway.applied looks them up so).
            out["stat_prefix"] = out["rds"]["route_config_name"]
        elif node.get("@type") == FILE_LOG_TYPE and Path(node["path"]).parent != self.logs:
            raise ValueError(f"an access log outside {self.logs}: {node['path']}")
        return out

    def _value(self, value: Any, key: str) -> Any:
        if not isinstance(value, str):
            return value
        if key in ("cluster", "cluster_name"):
            return self._known(self.clusters, value, "cluster")
        if key == "stat_prefix":
            return self.prefix + value
        if key == "inline_string" and "%CEL(" in value:
            # A cluster chosen by an expression (the transparent TLS chain's, by SNI).
            for old, new in self.clusters.items():
                value = value.replace(f"'{old}'", f"'{new}'")
        return value

    def _cache(self, config: Json) -> str:
        role = self._known(_CACHE_ROLES, config["name"], "DNS cache")
        settings = {k: v for k, v in config.items() if k != "name"}
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
        return f"{self.prefix}{role}_{digest[:8]}"

    @staticmethod
    def _known(names: Mapping[str, str], name: str, kind: str) -> str:
        try:
            return names[name]
        except KeyError:
            raise ValueError(f"a {kind} the gateway cannot name per workload: {name!r}") from None
