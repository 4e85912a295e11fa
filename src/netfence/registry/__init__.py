"""A registry of known MCP servers: for each, how to get it (a package, or a command the
user installed), its transport, the environment variables it needs and a reviewed
permission profile (ToolHive's format). netfence ships one (servers.yaml beside this
file); a team adds its own files in the same format (--registry FILE, NETFENCE_REGISTRY),
whose entries replace shipped ones of the same name.

`netfence run -- registry://NAME [ARGS...]` runs an entry with its profile. Pure but for
reading the files: the CLI turns an entry into a command line, a profile and grants.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from netfence.errors import UsageError
from netfence.packages.refs import parse as parse_package
from netfence.profile import Profile
from netfence.profile.schema import ProfileSchema

SCHEME = "registry://"
ENV_VAR = "NETFENCE_REGISTRY"
BUILTIN = "servers.yaml"
# As workload names (an entry's name can be one): lower case, digits, '-'.
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,23}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

Grant = Literal["read", "write"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EnvVar(_Strict):
    """An environment variable the server reads. `grant`: its value is a host path the
    server must see (`write-parent`: a file it creates, whose directory it writes)."""

    name: str
    description: str = ""
    required: bool = False
    secret: bool = False
    grant: Literal["read", "write", "write-parent"] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _ENV_NAME.match(value):
            raise ValueError("not an environment variable name")
        return value


class Server(_Strict):
    description: str
    # Exactly one: a package (uvx://, npx://; installed outside, into netfence's cache)
    # or a command the user installed (run as given, found on PATH).
    package: str | None = None
    command: tuple[str, ...] | None = None
    args: tuple[str, ...] = ()  # before the ones given on the command line
    transport: Literal["stdio", "sse", "streamable-http"] = "stdio"
    target_port: int | None = Field(default=None, ge=1, le=65535)
    env_vars: tuple[EnvVar, ...] = ()
    # The arguments given on the command line that name existing host paths are granted
    # (read or write): the directories a filesystem server serves.
    grant_arguments: Grant | None = None
    permissions: ProfileSchema = Field(default_factory=ProfileSchema)
    repository_url: str | None = None
    tools: tuple[str, ...] = ()

    @field_validator("package")
    @classmethod
    def _package(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_package(value)
            except UsageError as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Server:
        if (self.package is None) == (self.command is None):
            raise ValueError("give either package or command")
        if self.command is not None and not (self.command and self.command[0]):
            raise ValueError("command must name a program")
        if self.transport != "stdio" and self.target_port is None:
            raise ValueError(f"transport {self.transport} needs target_port")
        names = [v.name for v in self.env_vars]
        if len(names) != len(set(names)):
            raise ValueError("env_vars names a variable twice")
        return self


class RegistryFile(_Strict):
    version: Literal[1] = 1
    servers: dict[str, Server] = Field(default_factory=dict)

    @field_validator("servers")
    @classmethod
    def _names(cls, value: dict[str, Server]) -> dict[str, Server]:
        for name in value:
            if not _NAME.match(name):
                raise ValueError(f"{name!r}: a server's name is 1-24 lower-case letters, "
                                 "digits and '-'")
        return value


@dataclass(frozen=True)
class Entry:
    name: str
    server: Server
    source: str  # "built-in" or the file it came from

    @property
    def permissions(self) -> ProfileSchema:
        """The entry's reviewed profile as written, named after it unless it names itself."""
        profile = self.server.permissions
        if "name" not in profile.model_fields_set:
            profile = profile.model_copy(update={"name": self.name})
        return profile

    @property
    def profile(self) -> Profile:
        """The entry's reviewed profile, named after it unless it names itself."""
        return self.permissions.value()


def profile_data(profile: Profile | ProfileSchema) -> dict[str, Any]:
    """A profile in ToolHive's format, only what differs from the defaults (an empty
    allow_host too when the schema says it was written)."""
    data: dict[str, Any] = {"name": profile.name}
    for key in ("read", "write", "allow_unix_socket"):
        if getattr(profile, key):
            data[key] = list(getattr(profile, key))
    out = profile.network.outbound
    outbound: dict[str, Any] = {}
    if out.insecure_allow_all:
        outbound["insecure_allow_all"] = True
    if out.allow_host or "allow_host" in getattr(out, "model_fields_set", ()):
        outbound["allow_host"] = [str(h) for h in out.allow_host]
    if out.allow_port is not None:
        outbound["allow_port"] = list(out.allow_port)
    if out.allow_cidr:
        outbound["allow_cidr"] = [str(c) for c in out.allow_cidr]
    network: dict[str, Any] = {}
    if profile.network.mode != "bridge":
        network["mode"] = profile.network.mode
    if outbound:
        network["outbound"] = outbound
    if profile.network.inbound.allow_host:
        network["inbound"] = {"allow_host": [str(h) for h in profile.network.inbound.allow_host]}
    if network:
        data["network"] = network
    return data


def _describe(source: str, exc: ValidationError) -> str:
    err = exc.errors()[0]
    path = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return f"{source}: unknown key '{path}'"
    return f"{source}: {path}: {msg}"


def parse_registry(text: str, source: str) -> RegistryFile:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"{source}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, Mapping):
        raise UsageError(f"{source}: a registry is a mapping with `servers`")
    try:
        return RegistryFile.model_validate(dict(data))
    except ValidationError as exc:
        raise UsageError(_describe(source, exc)) from None


def builtin_text() -> str:
    return resources.files(__package__).joinpath(BUILTIN).read_text(encoding="utf-8")


def registry_files(given: Sequence[str] = ()) -> list[str]:
    """The team registries: NETFENCE_REGISTRY (paths separated by ':'), then --registry."""
    from_env = [p for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    return [*from_env, *given]


def read_text(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


def load(files: Sequence[str] = (), read: Callable[[str], str] = read_text) -> dict[str, Entry]:
    """The shipped registry, then each file in order (a later entry replaces an earlier
    one of the same name). `read` reads a file: as its owner would (the CLI's business)."""
    entries = {name: Entry(name, server, "built-in")
               for name, server in parse_registry(builtin_text(), BUILTIN).servers.items()}
    for path in files:
        try:
            text = read(path)
        except OSError as exc:
            raise UsageError(f"{path}: cannot read the registry: {exc.strerror or exc}",
                             remedy=f"check --registry / {ENV_VAR}") from None
        for name, server in parse_registry(text, path).servers.items():
            entries[name] = Entry(name, server, os.path.abspath(path))
    return entries


def is_entry(word: str) -> bool:
    return word.startswith(SCHEME)


def find(word: str, entries: Mapping[str, Entry]) -> Entry:
    """The entry `registry://NAME` names; one line listing the known ones otherwise."""
    name = word.removeprefix(SCHEME)
    if name not in entries:
        raise UsageError(f"{word}: no such server in the registry",
                         remedy=f"known: {', '.join(sorted(entries))}; see netfence "
                                "registry list")
    return entries[name]


@dataclass(frozen=True)
class Resolved:
    """An entry made concrete for one run: what to run (a package reference or a command
    as its first word), and the grants its arguments and variables ask for."""

    command: tuple[str, ...]
    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()


def resolve(entry: Entry, args: Sequence[str], env: Mapping[str, str], cwd: str) -> Resolved:
    """The command line and grants for `entry` run with the extra `args` and the
    variables `env` (--env); one line naming a required variable that is missing."""
    server = entry.server
    grants: dict[str, list[str]] = {"read": [], "write": []}
    for var in server.env_vars:
        value = env.get(var.name)
        if value is None or value == "":
            if var.required:
                what = f": {var.description}" if var.description else ""
                raise UsageError(f"{SCHEME}{entry.name} needs {var.name}{what}",
                                 remedy=f"pass --env {var.name}=VALUE")
            continue
        if var.grant is not None:
            if not value.startswith("/"):
                raise UsageError(f"{var.name}={value}: an absolute path is needed (the "
                                 "server sees it at the same path)")
            path = posixpath.normpath(value)
            if var.grant == "write-parent":
                grants["write"].append(posixpath.dirname(path) or "/")
            else:
                grants[var.grant].append(path)
    if server.grant_arguments is not None:
        for arg in args:
            # A path, or an option's value given as --opt=PATH.
            value = arg.partition("=")[2] if arg.startswith("-") else arg
            if not value:
                continue
            path = posixpath.normpath(posixpath.join(cwd, value))
            if os.path.exists(path):
                grants[server.grant_arguments].append(path)
    base = (server.package,) if server.package is not None else tuple(server.command or ())
    return Resolved(command=(*base, *server.args, *args), read=tuple(grants["read"]),
                    write=tuple(grants["write"]))


__all__ = ["ENV_VAR", "SCHEME", "Entry", "EnvVar", "RegistryFile", "Resolved", "Server",
           "find", "is_entry", "load", "parse_registry", "profile_data", "registry_files",
           "resolve"]
