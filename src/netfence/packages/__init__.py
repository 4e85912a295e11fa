"""Packages as commands: `uvx://PKG[@V]` and `npx://PKG[@V]`, installed outside the fence
into netfence's own cache, then run inside it.

Neither policy nor a backend nor a runtime: the CLI turns a package into a plain command
line (`prepare`) before the runtime sees it, and the runtime shows the workload the
install read-only like any program's own files (WorkloadSpec.program_paths).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from netfence.errors import UsageError
from netfence.packages import cache
from netfence.packages.cache import Installed, cache_root
from netfence.packages.install import SYSTEM_PATH, Log, find_node
from netfence.packages.refs import SCHEMES, PackageRef, is_package, parse
from netfence.runtimes.caller import caller_permissions


@dataclass(frozen=True)
class Prepared:
    """A package turned into what a runtime runs: the command line, and the host paths
    the workload must see read-only for it to start (the install)."""

    installed: Installed
    argv: tuple[str, ...]
    program_paths: tuple[str, ...]


def ensure(ref: PackageRef, *, refresh: bool = False, log: Log = lambda _: None) -> Installed:
    """The cached install of `ref`; installed first when missing (or `refresh`). A cached
    version, or the cached latest for a ref without one, needs no network."""
    root = cache_root()
    if not refresh:
        with caller_permissions():
            found = cache.find(root, ref)
        if found is not None:
            return found
    from netfence.packages.install import install

    with caller_permissions():
        lock = cache.open_lock(root)
    try:
        cache.hold(lock, lambda: log(f"netfence: waiting for another install into {root}"))
        if not refresh:  # another run may have installed it while this one waited
            with caller_permissions():
                found = cache.find(root, ref)
            if found is not None:
                return found
        return install(ref, root, log)
    finally:
        os.close(lock)


def command_line(installed: Installed, wanted: str | None,
                 path: str = SYSTEM_PATH) -> tuple[str, ...]:
    """How to start the install's command: a venv's console script through the venv's
    own interpreter (the script's `#!` names the directory it was built in, before it was
    renamed into the cache), an npm bin file through `node` from `path`."""
    _, rel = installed.command(wanted)
    target = str(installed.directory / rel)
    if installed.ref.kind == "uvx":
        return (str(installed.directory / "bin" / "python"), target)
    return (find_node(path), target)


def prepare(text: str, args: tuple[str, ...], *, refresh: bool = False,
            log: Log = lambda _: None, path: str | None = None) -> Prepared:
    """`uvx://...`/`npx://...` and its arguments as a runnable command line."""
    ref = parse(text)
    installed = ensure(ref, refresh=refresh, log=log)
    argv = command_line(installed, ref.command, path or os.environ.get("PATH") or SYSTEM_PATH)
    return Prepared(installed, (*argv, *args), (str(installed.directory),))


def docker_refusal(text: str) -> UsageError:
    return UsageError(f"{text}: uvx:// and npx:// need the namespace runtime (the install "
                      "is on this host)", remedy="drop --runtime docker, or build an image "
                                                 "with the server in it")


__all__ = ["SCHEMES", "Installed", "PackageRef", "Prepared", "cache_root", "command_line",
           "docker_refusal", "ensure", "is_package", "parse", "prepare"]
