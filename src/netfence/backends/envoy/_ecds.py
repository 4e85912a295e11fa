"""The big network filters of a gateway workload's listeners, each in a file of the
workload's, named by extension config discovery (ECDS) instead of held inline: the address
stage of the transparent TLS chains (once per workload, where each chain held a copy), and
each HTTP connection manager (the egress listener's, the transparent listener's, the
ingress's).

Why: that RBAC (every address rule as an upstream_ip_port matcher, about 19 KB of JSON) is
the same in every chain that dials an SNI, and there is one such chain per allowed port and
allowlist entry (or bucket: _transparent.sni_groups), up to 64: it was 36 KB of a
workload's 81 KB of listeners with one allowed name, 576 KB of 699 KB with 50. Envoy parses
the whole listener file, every workload's, at each add, update or removal.

Why the HTTP connection managers: each is about 13 KB (the host check's regex, the local
replies that explain denials): two thirds of a workload's listeners. Envoy parses the whole
listener file again at each add (measured with 1.40: about 3.6 ms per live workload's
listeners, most of an add with 19 live), and a file it watches only when that file
changes. Their routes stay RDS (a route change reaches established connections, as a
policy change must; an HCM's new configuration would reach new connections only).

What the chains name is exactly what was compiled: the filters found in the compiled
listeners are replaced only where they equal one of the two configurations compiled here
(_transparent_filters.address_filter), and one left over is an error. So Envoy decides as
with the copies (tests/unit/backends/envoy/test_gateway.py inlines the files back and
compares).

Seen with Envoy 1.40 (network filter ECDS from a file, no default configuration):
- the listener waits (warming) for the file's first read; one naming a file that does not
  exist is rejected (connections refused); a file whose resource has another name, or
  none, leaves the filter without a configuration, and Envoy closes every connection its
  chain takes (network_extension_config_missing). Closed either way.
- each filter still builds its own RBAC from the resource (a provider per chain): what is
  saved is the listener file, its parse and its copy in Envoy, not the RBAC's own memory.
- each resource name watched is a subscription, with an inotify instance of its own.

The resource's name carries a digest of its content, the file's name does not: a listener
names exactly the rules compiled with it, so no update pairs the new names (the listener)
with the old address rules, or the reverse, while one file is applied and the other not yet;
the chains change with the rules and drain, as they did with the rules inline. The file is
replaced in place: a subscription to the former name (its chains draining) refuses the new
content (config_fail) and keeps what it had.

Both roles' files are written for every workload, named by a chain or not, so that a
workload's files stay one set whatever its policy (none is left behind when an update drops
the last chain naming it); a resource no chain names has no subscription and costs only
its file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from netfence.backends.envoy._names import HCM_TYPE, NET_RBAC_TYPE, Json
from netfence.backends.envoy._rename import Renamer
from netfence.backends.envoy._transparent_filters import address_filter
from netfence.backends.envoy._xds import TYPED_EXTENSION_TYPE, config_source, hcms
from netfence.policy import Policy

# Each role's configuration: the address rules, and the same each only with an SNI (for a
# chain that also passes TLS without one: _transparent_filters.dial_sni).
ROLES = {"address": False, "address_sni": True}
# The listeners whose HTTP connection manager has a role (`<listener>_http`) and a file.
HTTP_LISTENERS = ("egress", "transparent", "ingress")


def shared_filters(policy: Policy, renamer: Renamer, listeners: list[Json]) -> dict[str, Json]:
    """The workload's filter resources by role, each named `<workload>.<role>_<digest>`:
    the address stages, and the HTTP connection managers of its (renamed) listeners.
    ValueError for a listener with two different ones, or one the gateway has no role for."""
    out = {}
    for role, sni_only in ROLES.items():
        stage = renamer.filter(address_filter(policy, sni_only=sni_only))
        out[role] = _resource(renamer.prefix, role, stage["typed_config"])
    for listener in listeners:
        for hcm in hcms(listener):
            suffix = listener["name"].removeprefix(renamer.prefix)
            if suffix not in HTTP_LISTENERS:
                raise ValueError(f"an HTTP connection manager the gateway does not share: "
                                 f"in {listener['name']}")
            role = f"{suffix}_http"
            if out.setdefault(role, _resource(renamer.prefix, role, hcm))["typed_config"] != hcm:
                raise ValueError(f"two HTTP connection managers in {listener['name']}")
    return out


def _resource(prefix: str, role: str, typed: Json) -> Json:
    digest = hashlib.sha256(json.dumps(typed, sort_keys=True, separators=(",", ":"))
                            .encode()).hexdigest()[:16]
    return {"name": f"{prefix}{role}_{digest}", "typed_config": typed}


def by_discovery(listeners: list[Json], filters: dict[str, Json],
                 path: Callable[[str], Path]) -> list[Json]:
    """The listeners with each network filter whose configuration is one of `filters`'
    naming that resource instead, from the file `path(role)`. ValueError for an address
    stage or an HTTP connection manager left over (compiled otherwise than here: it must
    not go unshared unnoticed)."""
    prefixes = {r["typed_config"]["stat_prefix"] for r in filters.values()}

    def shared(network_filter: Json) -> Json:
        typed = network_filter.get("typed_config")
        if not isinstance(typed, dict) or typed.get("@type") not in _SHARED_TYPES:
            return network_filter
        # Compared as they are (equal dicts: the same message), first by what differs.
        found = [(role, r["name"]) for role, r in filters.items()
                 if typed.get("rules") == r["typed_config"].get("rules")
                 and typed == r["typed_config"]]
        if not found:
            if typed.get("stat_prefix") in prefixes or typed["@type"] == HCM_TYPE:
                raise ValueError(f"a network filter the gateway does not share: "
                                 f"{network_filter['name']} in {typed['stat_prefix']}")
            return network_filter
        ((role, name),) = found
        return {"name": name, "config_discovery": {
            "config_source": config_source(path(role)), "type_urls": [typed["@type"]]}}

    def swapped(chain: Json) -> Json:
        if "filters" not in chain:
            return chain
        return {**chain, "filters": [shared(f) for f in chain["filters"]]}

    out: list[Json] = []
    for listener in listeners:
        listener = dict(listener)
        if "filter_chains" in listener:
            listener["filter_chains"] = [swapped(c) for c in listener["filter_chains"]]
        if "default_filter_chain" in listener:
            listener["default_filter_chain"] = swapped(listener["default_filter_chain"])
        out.append(listener)
    return out


def named(listeners_json: str, filters: dict[str, Json]) -> list[str]:
    """The roles whose resource a chain names (each one subscription, an inotify instance),
    read from the listeners' JSON."""
    return [role for role, r in filters.items() if f'"{r["name"]}"' in listeners_json]


_SHARED_TYPES = (NET_RBAC_TYPE, HCM_TYPE)

__all__ = ["HTTP_LISTENERS", "ROLES", "TYPED_EXTENSION_TYPE", "by_discovery", "named",
           "shared_filters"]
