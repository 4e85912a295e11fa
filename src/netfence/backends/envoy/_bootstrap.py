"""The bootstrap: the listeners' parts, the admin socket, runtime and overload limits; as
Envoy runs it (the policy in watched files, _xds) or whole (one static config, to read)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from netfence.backends.base import Placement
from netfence.backends.envoy._listeners import Part, egress, ingress
from netfence.backends.envoy._names import CONN_LIMIT_TYPE, Json
from netfence.backends.envoy._transparent import LISTENER_NAME as TRANSPARENT_LISTENER
from netfence.backends.envoy._transparent import transparent
from netfence.backends.envoy._xds import LISTENERS_NAME, config_source, to_rds, xds_dir
from netfence.backends.relay import relay_resources
from netfence.policy import Policy

ADMIN_SOCKET_NAME = "envoy-admin.sock"
ADMIN_SOCKET_MODE = 0o600
MAX_DOWNSTREAM_CONNECTIONS = 10_000
RE2_MAX_PROGRAM_SIZE = 100_000
# No memory_allocator_manager: it gave back 11 MiB after loading 100,000 names, but its
# thread sleeps out its interval when Envoy stops (a 1 s interval: 0.95 s to exit).


def parts(policy: Policy, placement: Placement) -> list[Part]:
    """The listeners the placement asks for: the egress always, the transparent listener
    where the runtime redirects the workload's connections, the ingress for a workload
    that serves (not stdio), and the relays it carries (the fence's DNS)."""
    out = policy_parts(policy, placement)
    relays = relay_part(placement)
    return [*out, relays] if relays is not None else out


def policy_parts(policy: Policy, placement: Placement) -> list[Part]:
    """The listeners that decide by the policy (the relays do not)."""
    out = [egress(policy, placement)]
    if placement.transparent_listen:
        out.append(transparent(policy, placement))
    if placement.ingress_listen is not None:
        out.append(ingress(policy, placement))
    return out


def relay_part(placement: Placement) -> Part | None:
    if not placement.relays:
        return None
    listeners, clusters = relay_resources(placement.relays)
    return Part(tuple(listeners), tuple(clusters))


def static_resources(pieces: Iterable[Part]) -> Json:
    """Every part's listeners, and its clusters once each (in the order first named)."""
    listeners: list[Json] = []
    clusters: dict[str, Json] = {}
    for part in pieces:
        listeners += part.listeners
        for cluster in part.clusters:
            known = clusters.setdefault(cluster["name"], cluster)
            if known != cluster:
                raise ValueError(f"two different Envoy clusters named {cluster['name']!r}")
    return {"listeners": listeners, "clusters": list(clusters.values())}


@dataclass(frozen=True)
class Live:
    """What Envoy reads: the bootstrap (the placement's alone: it never changes with the
    policy), the listeners whose own configuration is the policy (for their LDS file), and
    every HCM's route configuration by name (an RDS file each)."""

    bootstrap: Json
    listeners: list[Json]
    routes: dict[str, Json]


def live(policy: Policy, placement: Placement) -> Live:
    """The configuration as Envoy runs it: the policy in files it watches (_xds).

    The clusters depend on the placement only, so they stay in the bootstrap (no CDS, and
    no race of listeners naming clusters not yet loaded). So do the egress and ingress
    listeners: with their routes and the address rules in RDS, nothing of theirs depends
    on the policy, and a static listener that cannot bind (a port in use) stops Envoy at
    once with the reason, where one from a file is only rejected while Envoy runs on. The
    transparent listener's chains and matcher are the policy: it comes from the file."""
    directory = xds_dir(placement.state_dir)
    pieces = policy_parts(policy, placement)
    relays = relay_part(placement)
    resources = static_resources(pieces + ([relays] if relays is not None else []))
    listeners, routes = to_rds(
        [lst for part in pieces for lst in part.listeners], directory)
    dynamic = [lst for lst in listeners if lst["name"] == TRANSPARENT_LISTENER]
    static = {"listeners": [lst for lst in listeners if lst["name"] != TRANSPARENT_LISTENER]
              + (list(relays.listeners) if relays is not None else []),
              "clusters": resources["clusters"]}
    config = _frame(placement, static)
    config["dynamic_resources"] = {
        "lds_config": config_source(directory / LISTENERS_NAME)}
    return Live(config, dynamic, routes)


def listeners_path(placement: Placement) -> Path:
    return xds_dir(placement.state_dir) / LISTENERS_NAME


def bootstrap(policy: Policy, placement: Placement) -> Json:
    """The whole Envoy configuration for a policy and placement, as one static bootstrap
    with the routes inline (what `live` spreads over files)."""
    return _frame(placement, static_resources(parts(policy, placement)))


def _frame(placement: Placement, static: Json) -> Json:
    """The bootstrap around the static resources."""
    return frame(f"netfence-{placement.workload_name}",
                 placement.state_dir / ADMIN_SOCKET_NAME, static)


def frame(node_id: str, admin: Path, static: Json | None,
          runtime_layers: Iterable[Json] = ()) -> Json:
    """A bootstrap: the node, admin on the Unix socket `admin`, the static resources (none:
    no such field), the runtime (the static layer, then `runtime_layers`) and the limits."""
    config: Json = {
        "node": {"id": node_id, "cluster": "netfence"},
        # A unix socket in a 0700 directory: no TCP port for anyone to reach the admin API.
        "admin": {"address": {"pipe": {"path": str(admin), "mode": ADMIN_SOCKET_MODE}}},
    }
    if static is not None:
        config["static_resources"] = static
    config.update({
        # The authority regexes for IP-literal spellings exceed RE2's default program-size
        # limit (100); they are generated here, not taken from requests.
        "layered_runtime": {"layers": [{"name": "netfence", "static_layer": {
            "re2.max_program_size.error_level": RE2_MAX_PROGRAM_SIZE,
            "re2.max_program_size.warn_level": RE2_MAX_PROGRAM_SIZE,
        }}, *runtime_layers]},
        # Bounds connections (and silences Envoy's start-up warning about having no bound).
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": CONN_LIMIT_TYPE,
                        "max_active_downstream_connections": MAX_DOWNSTREAM_CONNECTIONS,
                    },
                }
            ]
        },
    })
    return config
