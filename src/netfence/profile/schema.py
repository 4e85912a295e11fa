"""The ToolHive permission-profile schema, plus netfence's `network.outbound.allow_cidr`:
the pydantic models that validate a profile from outside (a file, the command line, a
registry entry). `value()` gives what the rest of netfence reads (model.py), so pydantic
is imported only where something is validated.

Models are frozen: a loaded profile is never mutated, overrides build a new one.
"""

from __future__ import annotations

import ipaddress
import posixpath
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from netfence.profile import model
from netfence.profile.hosts import HostPattern, parse_host_pattern
from netfence.profile.model import IPNetwork


class _Strict(BaseModel):
    # Validators are built at the first validation, not at import (about 40 ms): a
    # command that imports the schema may not validate anything.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, defer_build=True)


def _entries(value: object, what: str) -> list[object]:
    """A list field's entries (null is an empty list); anything else is refused."""
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise ValueError(f"must be a list of {what}")
    return list(value)


def _host_patterns(value: object) -> tuple[HostPattern, ...]:
    # A dict keeps the first occurrence's order and finds a duplicate at once: 100,000
    # hosts checked against a list took minutes.
    out: dict[HostPattern, None] = {}
    for i, raw in enumerate(_entries(value, "host names")):
        if isinstance(raw, HostPattern):  # already parsed (with_overrides merges these)
            out[raw] = None
            continue
        if not isinstance(raw, str):
            raise ValueError(f"entry {i} must be a string, got {raw!r}")
        try:
            pattern = parse_host_pattern(raw)
        except ValueError as exc:
            raise ValueError(f"entry {i} {raw!r}: {exc}") from None
        out[pattern] = None
    return tuple(out)


# allow_host, outbound and inbound alike: host patterns, duplicates dropped.
HostPatterns = Annotated[tuple[HostPattern, ...], BeforeValidator(_host_patterns)]


class OutboundSchema(_Strict):
    insecure_allow_all: bool = False
    allow_host: HostPatterns = ()
    # None means "not given": the policy then uses DEFAULT_PORTS.
    allow_port: tuple[int, ...] | None = None
    allow_cidr: tuple[IPNetwork, ...] = ()

    @field_validator("allow_port", mode="before")
    @classmethod
    def _ports(cls, value: object) -> object:
        if value is None:
            return None
        ports: dict[int, None] = {}
        for i, port in enumerate(_entries(value, "port numbers")):
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise ValueError(f"entry {i} {port!r}: a port is an integer from 1 to 65535")
            ports[port] = None
        return tuple(ports)

    @field_validator("allow_cidr", mode="before")
    @classmethod
    def _cidrs(cls, value: object) -> object:
        nets: dict[IPNetwork, None] = {}
        for i, raw in enumerate(_entries(value, "CIDR networks")):
            try:
                net = ipaddress.ip_network(str(raw).strip(), strict=False)
            except ValueError:
                raise ValueError(f"entry {i} {raw!r}: not an IPv4 or IPv6 network") from None
            if not isinstance(raw, str) or raw != raw.strip():
                raise ValueError(f"entry {i} {raw!r}: not an IPv4 or IPv6 network")
            nets[net] = None
        return tuple(nets)

    def value(self) -> model.OutboundNetwork:
        return model.OutboundNetwork(
            insecure_allow_all=self.insecure_allow_all, allow_host=self.allow_host,
            allow_port=self.allow_port, allow_cidr=self.allow_cidr)


class InboundSchema(_Strict):
    allow_host: HostPatterns = ()

    def value(self) -> model.InboundNetwork:
        return model.InboundNetwork(allow_host=self.allow_host)


class NetworkSchema(_Strict):
    # "host" would share the host's network: the one thing a fence must never do.
    mode: Literal["bridge", "none"] = "bridge"
    # The defaults are not validated either way; model_construct needs no validator.
    outbound: OutboundSchema = Field(default_factory=OutboundSchema.model_construct)
    inbound: InboundSchema = Field(default_factory=InboundSchema.model_construct)

    def value(self) -> model.Network:
        return model.Network(mode=self.mode, outbound=self.outbound.value(),
                             inbound=self.inbound.value())


def grant_path(raw: str) -> str:
    """One read/write/allow_unix_socket entry as an absolute, normalised path. ToolHive's
    `HOST:CONTAINER` form is accepted when both are the same path: netfence shows a grant
    at its own path (a different path inside is not supported)."""
    if "\0" in raw or raw.strip() == "":
        raise ValueError("not a path")
    host, sep, inside = raw.rpartition(":")
    if sep and host.startswith("/") and inside.startswith("/"):
        if posixpath.normpath(host) != posixpath.normpath(inside):
            raise ValueError("a grant appears at its own path inside; HOST:CONTAINER with "
                             "two different paths is not supported")
        raw = host
    if not raw.startswith("/"):
        raise ValueError("must be an absolute path")
    # normpath keeps a leading "//"; the kernel reads it as "/".
    return "/" + posixpath.normpath(raw).lstrip("/")


class ProfileSchema(_Strict):
    name: str = "custom"
    # File-system grants (ToolHive's read and write): shown to the workload at the same
    # path, read-only or read-write. allow_unix_socket (netfence's): host Unix sockets the
    # workload may connect to, by exact path; every other host socket stays out of reach.
    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    allow_unix_socket: tuple[str, ...] = ()
    privileged: Literal[False] = False
    network: NetworkSchema = Field(default_factory=NetworkSchema.model_construct)

    @field_validator("read", "write", "allow_unix_socket")
    @classmethod
    def _grants(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        paths: dict[str, None] = {}
        for i, raw in enumerate(value):
            try:
                path = grant_path(raw)
            except ValueError as exc:
                raise ValueError(f"entry {i} {raw!r}: {exc}") from None
            paths[path] = None
        return tuple(paths)

    def value(self) -> model.Profile:
        """The validated profile as netfence reads it."""
        return model.Profile(name=self.name, read=self.read, write=self.write,
                             allow_unix_socket=self.allow_unix_socket,
                             privileged=self.privileged, network=self.network.value())
