"""The whole bootstrap: the listeners' parts, the admin socket, runtime and overload limits."""

from __future__ import annotations

from collections.abc import Iterable

from netfence.backends.base import Placement
from netfence.backends.envoy._listeners import Part, egress, ingress
from netfence.backends.envoy._names import CONN_LIMIT_TYPE, Json
from netfence.backends.envoy._transparent import transparent
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
    out = [egress(policy, placement)]
    if placement.transparent_listen:
        out.append(transparent(policy, placement))
    if placement.ingress_listen is not None:
        out.append(ingress(policy, placement))
    if placement.relays:
        listeners, clusters = relay_resources(placement.relays)
        out.append(Part(tuple(listeners), tuple(clusters)))
    return out


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


def bootstrap(policy: Policy, placement: Placement) -> Json:
    """The whole Envoy bootstrap for a policy and placement."""
    return {
        "node": {"id": f"netfence-{placement.workload_name}", "cluster": "netfence"},
        # A unix socket in the 0700 state dir: no TCP port for anyone to reach the admin API.
        "admin": {
            "address": {
                "pipe": {
                    "path": str(placement.state_dir / ADMIN_SOCKET_NAME),
                    "mode": ADMIN_SOCKET_MODE,
                }
            }
        },
        "static_resources": static_resources(parts(policy, placement)),
        # The authority regexes for IP-literal spellings exceed RE2's default program-size
        # limit (100); they are generated here, not taken from requests.
        "layered_runtime": {"layers": [{"name": "netfence", "static_layer": {
            "re2.max_program_size.error_level": RE2_MAX_PROGRAM_SIZE,
            "re2.max_program_size.warn_level": RE2_MAX_PROGRAM_SIZE,
        }}]},
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
    }
