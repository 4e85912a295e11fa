"""A permission profile as the rest of netfence reads it: frozen values, no pydantic.

Values here are already valid. Input (a file, the command line, a registry entry) is
validated by the schema (schema.py, pydantic) and only then made into these, through
profile.loader (`parse_profile`, `with_overrides`); a built-in profile is a constant.
So a run with a built-in profile imports no pydantic (about 60 ms of every start), and
validation stays the schema's alone.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

from netfence.profile.defaults import DEFAULT_PORTS as DEFAULT_PORTS  # its old home
from netfence.profile.hosts import HostPattern

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class OutboundNetwork:
    insecure_allow_all: bool = False
    allow_host: tuple[HostPattern, ...] = ()
    # None means "not given": the policy then uses DEFAULT_PORTS.
    allow_port: tuple[int, ...] | None = None
    allow_cidr: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True)
class InboundNetwork:
    allow_host: tuple[HostPattern, ...] = ()


@dataclass(frozen=True)
class Network:
    mode: Literal["bridge", "none"] = "bridge"
    outbound: OutboundNetwork = field(default_factory=OutboundNetwork)
    inbound: InboundNetwork = field(default_factory=InboundNetwork)


@dataclass(frozen=True)
class Profile:
    name: str = "custom"
    # File-system grants (ToolHive's read and write): shown to the workload at the same
    # path, read-only or read-write. allow_unix_socket (netfence's): host Unix sockets the
    # workload may connect to, by exact path; every other host socket stays out of reach.
    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    allow_unix_socket: tuple[str, ...] = ()
    privileged: Literal[False] = False
    network: Network = field(default_factory=Network)
