"""What `netfence run` is asked to run, made concrete before any runtime sees it:
`registry://NAME` becomes its entry's command, profile and grants; `uvx://` and `npx://`
become the cached install's command line (installed first when missing), with the
install as a path the workload's view shows read-only. Anything else passes unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from netfence.cli import output
from netfence.errors import UsageError
from netfence.runtimes.caller import caller_permissions

if TYPE_CHECKING:
    from netfence import registry
    from netfence.profile import Profile

# registry.SCHEME and packages.SCHEMES (test_targets checks it), told apart before
# either is imported: the registry's models and the installer take about 0.15 s to
# import, and most commands are neither.
REGISTRY_SCHEME = "registry://"
PACKAGE_SCHEMES = ("uvx://", "npx://")


@dataclass(frozen=True)
class Target:
    command: tuple[str, ...]
    entry: registry.Entry | None = None  # the registry entry it came from
    read: tuple[str, ...] = ()  # grants the entry asks for (its arguments, variables)
    write: tuple[str, ...] = ()
    program_paths: tuple[str, ...] = field(default=())

    @property
    def profile(self) -> Profile | None:
        return self.entry.profile if self.entry is not None else None


def needs_namespace(command: tuple[str, ...], runtime: str) -> None:
    """Packages and registry entries are installed and found on this host: a container
    runtime cannot use them."""
    first = command[0]
    if runtime != "namespace" and first.startswith((REGISTRY_SCHEME, *PACKAGE_SCHEMES)):
        from netfence.packages import docker_refusal

        raise docker_refusal(first)


def load_entries(files: tuple[str, ...]) -> dict[str, registry.Entry]:
    from netfence import registry

    def read(path: str) -> str:
        with caller_permissions():  # the caller's files: read them as they could
            return registry.read_text(path)

    return registry.load(registry.registry_files(files), read)


def from_registry(command: tuple[str, ...], env: dict[str, str],
                  files: tuple[str, ...]) -> Target:
    """`registry://NAME [ARGS...]` as its entry's command and grants; other commands as
    they are."""
    if not command[0].startswith(REGISTRY_SCHEME):
        return Target(command)
    from netfence import registry

    entry = registry.find(command[0], load_entries(files))
    with caller_permissions():  # which argument paths exist: as the caller sees them
        resolved = registry.resolve(entry, command[1:], env, os.getcwd())
    return Target(resolved.command, entry, resolved.read, resolved.write)


def install_log(line: str) -> None:
    output.progress.clear()
    output.err.print(line, markup=False, highlight=False)


def installed(target: Target, *, refresh: bool, path: str | None) -> Target:
    """A package command as its install's command line (installing it when missing);
    other commands as they are."""
    if not target.command[0].startswith(PACKAGE_SCHEMES):
        if refresh:
            raise UsageError("--refresh is for uvx:// and npx:// packages")
        return target
    from netfence.packages import prepare

    ready = prepare(target.command[0], target.command[1:], refresh=refresh, log=install_log,
                    path=path)
    return Target(ready.argv, target.entry, target.read, target.write, ready.program_paths)
