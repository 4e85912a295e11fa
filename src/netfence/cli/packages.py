"""`netfence packages list | install | remove`: netfence's cache of uvx:// and npx://
packages (the sudo caller's own; NETFENCE_CACHE_DIR overrides it)."""

from __future__ import annotations

import os
import shutil
import time
from typing import TYPE_CHECKING

import click

from netfence.cli import output
from netfence.cli.targets import install_log
from netfence.errors import UsageError
from netfence.runtimes.caller import caller_permissions

# The installer is imported by the commands that use it (cli.targets).
if TYPE_CHECKING:
    from netfence.packages.refs import PackageRef


def _size(size: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}"
        size //= 1024
    return f"{size:.0f} GiB"


@click.group()
def packages() -> None:
    """The cache of uvx:// and npx:// packages that `netfence run` installs."""


@packages.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_packages(as_json: bool) -> None:
    """The cached packages, each version with its size."""
    from netfence.packages import cache

    root = cache.cache_root()
    with caller_permissions():
        found = cache.all_installed(root)
        latest = {(i.ref.kind, i.ref.name): cache.latest_version(root, i.ref) for i in found}
        sizes = [cache.size_of(i.directory) for i in found]
    rows = [{"package": f"{item.ref.kind}://{item.ref.name}", "version": item.ref.version,
             "latest": latest[(item.ref.kind, item.ref.name)] == item.ref.version,
             "commands": sorted(item.commands), "installer": item.installer,
             "installed_at": item.installed_at, "size": size, "directory": str(item.directory)}
            for item, size in zip(found, sizes, strict=True)]
    if as_json:
        output.print_json(rows)
        return
    if not rows:
        output.err.print(f"netfence: no packages in {root}", markup=False)
        return
    table = [(f"{item.ref.kind}://{item.ref.name}", item.ref.version or "",
              "yes" if latest[(item.ref.kind, item.ref.name)] == item.ref.version else "",
              " ".join(sorted(item.commands)), _size(size),
              output.duration(time.time() - item.installed_at) + " ago")
             for item, size in zip(found, sizes, strict=True)]
    headers = ("PACKAGE", "VERSION", "LATEST", "COMMANDS", "SIZE", "INSTALLED")
    output.out.print(output.columns(headers, table), markup=False, highlight=False)
    output.err.print(f"netfence: cache: {root}", markup=False)


@packages.command("install")
@click.option("--refresh", is_flag=True, help="Reinstall (and resolve the latest anew).")
@click.argument("refs", nargs=-1, required=True, metavar="uvx://PKG[@V]|npx://PKG[@V]...")
def install_packages(refresh: bool, refs: tuple[str, ...]) -> None:
    """Install packages into the cache now, so that a later run starts at once."""
    from netfence.packages import ensure, parse

    for text in refs:
        installed = ensure(parse(text), refresh=refresh, log=install_log)
        output.err.print(f"netfence: {installed.ref} in {installed.directory}", markup=False)


@packages.command("remove")
@click.option("--all", "remove_all", is_flag=True, help="Empty the whole cache.")
@click.argument("refs", nargs=-1, metavar="[uvx://PKG[@V]|npx://PKG[@V]]...")
def remove_packages(remove_all: bool, refs: tuple[str, ...]) -> None:
    """Remove a package's version, every version of a package given without one, or
    everything (--all)."""
    from netfence.packages import cache, parse
    from netfence.packages.refs import KINDS

    if remove_all == bool(refs):
        raise UsageError("name packages to remove, or pass --all (not both)")
    parsed: list[PackageRef] = [parse(text) for text in refs]
    root = cache.cache_root()
    with caller_permissions():
        if not root.is_dir():
            output.err.print(f"netfence: no packages in {root}", markup=False)
            return
        lock = cache.open_lock(root)
    try:
        cache.hold(lock)
        with caller_permissions():
            if remove_all:
                for kind in KINDS:
                    shutil.rmtree(root / kind, ignore_errors=True)
                output.err.print(f"netfence: emptied {root}", markup=False)
                return
            for ref in parsed:
                removed = cache.remove(root, ref)
                if not removed:
                    output.err.print(f"netfence: {ref}: not in the cache", markup=False)
                for item in removed:
                    output.err.print(f"netfence: removed {item.ref}", markup=False)
    finally:
        os.close(lock)
