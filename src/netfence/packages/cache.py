"""netfence's own cache of installed packages: one directory per package and exact version.

    CACHE/uvx/NAME/VERSION/          a virtualenv, with netfence-package.json
    CACHE/npx/[@SCOPE/]NAME/VERSION/ an npm prefix (node_modules/...), likewise
    CACHE/KIND/NAME/latest           the version "latest" was resolved to at its install

An install is built in a hidden directory beside its final place and renamed into it
once complete (with its manifest), so a version directory is always whole. Installs and
removals hold CACHE/.lock; a run that finds its version needs no lock and no network.

The cache belongs to the user who ran sudo (files they own, in their home); root's own
(no sudo caller) is /var/cache/netfence/packages, which a workload's user can read.
$XDG_CACHE_HOME is not used: sudo drops it, and the same user would get two caches.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netfence.errors import UsageError
from netfence.packages.refs import KINDS, PackageRef, parse
from netfence.runtimes.caller import sudo_caller

ENV_VAR = "NETFENCE_CACHE_DIR"
ROOT_CACHE = Path("/var/cache/netfence/packages")
MANIFEST = "netfence-package.json"
LATEST = "latest"
LOCK = ".lock"
STAGING_PREFIX = ".install-"
OLD_PREFIX = ".old-"


def cache_user() -> pwd.struct_passwd:
    """Whose cache it is: the sudo caller's, else this process's user."""
    caller = sudo_caller()
    return pwd.getpwuid(caller[0] if caller else os.getuid())


def cache_root() -> Path:
    """NETFENCE_CACHE_DIR, else ~/.cache/netfence/packages of the cache's user, else (root
    itself) /var/cache/netfence/packages."""
    chosen = os.environ.get(ENV_VAR)
    if chosen:
        return Path(chosen).absolute()
    user = cache_user()
    if user.pw_uid == 0:
        return ROOT_CACHE
    return Path(user.pw_dir, ".cache", "netfence", "packages")


@dataclass(frozen=True)
class Installed:
    """One package version in the cache: where it is and the commands it offers, each a
    path relative to `directory` (a venv's console script, an npm package's bin file)."""

    ref: PackageRef  # with its exact version
    directory: Path
    commands: dict[str, str] = field(default_factory=dict)
    installer: str = ""
    installed_at: float = 0.0

    def command(self, wanted: str | None) -> tuple[str, str]:
        """(name, path relative to the directory) of the command to run: `wanted`, else
        the one named after the package, else the only one."""
        if wanted is not None:
            if wanted not in self.commands:
                raise UsageError(f"{self.ref}: no command {wanted!r} in it "
                                 f"(it has: {', '.join(sorted(self.commands)) or 'none'})")
            return wanted, self.commands[wanted]
        own = self.ref.default_command
        if own in self.commands:
            return own, self.commands[own]
        if len(self.commands) == 1:
            return next(iter(self.commands.items()))
        if not self.commands:
            raise UsageError(f"{self.ref}: the package has no command to run")
        choices = ", ".join(sorted(self.commands))
        raise UsageError(f"{self.ref}: the package has several commands ({choices})",
                         remedy=f"name one: {self.ref.with_version(None)}#COMMAND")

    def manifest(self) -> dict[str, Any]:
        return {"package": str(self.ref.with_version(self.ref.version)),
                "kind": self.ref.kind, "name": self.ref.name, "version": self.ref.version,
                "commands": self.commands, "installer": self.installer,
                "installed_at": self.installed_at}


def package_dir(root: Path, ref: PackageRef) -> Path:
    return root.joinpath(*ref.key)


def version_dir(root: Path, ref: PackageRef) -> Path:
    assert ref.version is not None
    return package_dir(root, ref) / ref.version


def read_manifest(directory: Path) -> Installed | None:
    """The install at `directory`, or None when it is not a complete one."""
    try:
        data = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        ref = parse(str(data["package"]))
        commands = {str(k): str(v) for k, v in dict(data["commands"]).items()}
        return Installed(ref=PackageRef(ref.kind, ref.name, str(data["version"])),
                         directory=directory, commands=commands,
                         installer=str(data.get("installer", "")),
                         installed_at=float(data.get("installed_at", 0.0)))
    except (OSError, ValueError, KeyError, TypeError, UsageError):
        return None


def write_manifest(installed: Installed, directory: Path) -> None:
    """The manifest of `installed`, written into `directory` (where it is being made)."""
    path = directory / MANIFEST
    path.write_text(json.dumps(installed.manifest(), indent=2) + "\n", encoding="utf-8")


def latest_version(root: Path, ref: PackageRef) -> str | None:
    """The version the last install of `ref` without a version resolved to."""
    try:
        data = json.loads((package_dir(root, ref) / LATEST).read_text(encoding="utf-8"))
        return str(data["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def record_latest(root: Path, ref: PackageRef, version: str) -> None:
    path = package_dir(root, ref) / LATEST
    tmp = path.with_name(f".{LATEST}.{os.getpid()}")
    tmp.write_text(json.dumps({"version": version, "resolved_at": time.time()}) + "\n",
                   encoding="utf-8")
    tmp.replace(path)


def find(root: Path, ref: PackageRef) -> Installed | None:
    """The cached install `ref` names (its version, or the cached latest), or None."""
    version = ref.version or latest_version(root, ref)
    if version is None:
        return None
    return read_manifest(version_dir(root, ref.with_version(version)))


def open_lock(root: Path) -> int:
    """The cache's lock file, opened (the cache made first): call as the cache's user."""
    root.mkdir(parents=True, exist_ok=True)
    return os.open(root / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)


def hold(fd: int, waiting: Callable[[], None] = lambda: None) -> None:
    """One install or removal at a time: another run waits here (released with the fd),
    after calling `waiting` (an install takes at most install.INSTALL_TIMEOUT)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        waiting()
        fcntl.flock(fd, fcntl.LOCK_EX)


def _package_dirs(root: Path) -> Iterator[Path]:
    """Every package's directory (the one holding its versions)."""
    for kind in KINDS:
        base = root / kind
        if not base.is_dir():
            continue
        for entry in sorted(base.iterdir()):
            if entry.name.startswith("@") and entry.is_dir():  # an npm scope
                yield from (e for e in sorted(entry.iterdir()) if e.is_dir())
            elif entry.is_dir() and not entry.name.startswith("."):
                yield entry


def all_installed(root: Path) -> list[Installed]:
    found: list[Installed] = []
    for directory in _package_dirs(root):
        for version in sorted(directory.iterdir()):
            if version.is_dir() and not version.name.startswith("."):
                installed = read_manifest(version)
                if installed is not None:
                    found.append(installed)
    return found


def size_of(directory: Path) -> int:
    total = 0
    for parent, _, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(parent, name)).st_size
    return total


def clear_leftovers(directory: Path) -> None:
    """Half-made installs and replaced versions an interrupted run left (lock held)."""
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        if entry.name.startswith((STAGING_PREFIX, OLD_PREFIX)):
            shutil.rmtree(entry, ignore_errors=True)


def prune(root: Path, ref: PackageRef) -> None:
    """Remove `ref`'s directory and its npm scope's when they are empty."""
    directory = package_dir(root, ref)
    for parent in (directory, directory.parent):
        if parent != root / ref.kind:
            with contextlib.suppress(OSError):
                parent.rmdir()


def remove(root: Path, ref: PackageRef) -> list[Installed]:
    """Remove `ref`'s version, or every version of it when it has none (lock held);
    what was removed."""
    directory = package_dir(root, ref)
    if ref.version is not None:
        targets = [version_dir(root, ref)]
    elif directory.is_dir():
        targets = [d for d in directory.iterdir() if d.is_dir() and not d.name.startswith(".")]
    else:
        targets = []
    removed = [i for i in (read_manifest(t) for t in targets) if i is not None]
    for target in targets:
        shutil.rmtree(target, ignore_errors=True)
    if ref.version is None or latest_version(root, ref) == ref.version:
        with contextlib.suppress(FileNotFoundError):
            (directory / LATEST).unlink()
    clear_leftovers(directory)
    prune(root, ref)
    return removed
