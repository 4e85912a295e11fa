"""Minimal root filesystems assembled from the host's own files, as image build contexts.

For hosts that reach no registry: a program, the shared libraries `ldd` names for it and a
few text files (passwd, group, nsswitch) are enough for Envoy, Squid and dnsmasq, and for
test workloads. Paths keep the host's layout, symlinks included (merged /usr or not), so
the dynamic loader finds every library where the binary expects it.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from netfence.errors import NetfenceError

DOCKERFILE = "FROM scratch\nCOPY rootfs/ /\n"
PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_MAX_LINKS = 40  # like the kernel's limit on symlinks followed in one lookup
# `ldd` lines: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
# "/lib64/ld-linux-x86-64.so.2 (0x...)"; "linux-vdso.so.1 (0x...)" has no file.
_LDD_ARROW = re.compile(r"=>\s+(/\S+)")
_LDD_BARE = re.compile(r"^\s*(/\S+)\s+\(0x[0-9a-f]+\)")
_LDD_MISSING = re.compile(r"^\s*(\S+)\s+=>\s+not found")


def parse_ldd(text: str) -> list[str]:
    """Library paths in `ldd` output, in order; a library `ldd` could not find is an error."""
    paths: list[str] = []
    for line in text.splitlines():
        missing = _LDD_MISSING.match(line)
        if missing:
            raise NetfenceError(f"shared library {missing.group(1)} not found on this host")
        found = _LDD_ARROW.search(line) or _LDD_BARE.match(line)
        if found and found.group(1) not in paths:
            paths.append(found.group(1))
    return paths


def shared_libraries(binary: Path) -> list[str]:
    """The shared libraries (and loader) a dynamically linked binary needs; [] if static."""
    try:
        done = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise NetfenceError("`ldd` is not installed", remedy="apt-get install libc-bin") from None
    if done.returncode != 0:
        # "not a dynamic executable": nothing to add.
        return []
    return parse_ldd(done.stdout)


@dataclass
class Rootfs:
    """What goes into an image: entries keyed by their absolute path in the image.

    Each entry is ("dir", ""), ("symlink", target), ("file", host source) or
    ("text", content); `modes` overrides a file or text entry's mode.
    """

    entries: dict[str, tuple[str, str]] = field(default_factory=dict)
    modes: dict[str, int] = field(default_factory=dict)
    _walked: set[str] = field(default_factory=set)

    def _parents(self, path: PurePosixPath) -> None:
        for parent in reversed(path.parents):
            key = str(parent)
            if key != "/" and key not in self.entries:
                self.entries[key] = ("dir", "")

    def add_host_path(self, path: str, _depth: int = 0) -> None:
        """`path` as the host has it: every symlink on the way, then the file or tree."""
        if _depth > _MAX_LINKS:
            raise NetfenceError(f"too many symbolic links resolving {path}")
        normal = os.path.normpath(path)
        if normal in self.entries and self.entries[normal][0] != "dir":
            return
        parts = PurePosixPath(normal).parts
        current = PurePosixPath("/")
        for index, part in enumerate(parts[1:], start=1):
            current = current / part
            host = Path(current)
            if host.is_symlink():
                target = os.readlink(host)
                self._parents(current)
                self.entries[str(current)] = ("symlink", target)
                rest = PurePosixPath(*parts[index + 1 :]) if index + 1 < len(parts) else None
                resolved = PurePosixPath(os.path.normpath(current.parent / target))
                self.add_host_path(str(resolved / rest if rest else resolved), _depth + 1)
                return
            if not host.exists():
                raise NetfenceError(f"{path} does not exist on this host")
        host = Path(current)
        if host.is_dir():
            self.add_tree(current)
        else:
            self._parents(current)
            self.entries[str(current)] = ("file", str(host))

    def add_tree(self, directory: PurePosixPath) -> None:
        key = str(directory)
        if self.entries.get(key) == ("dir", "") and key in self._walked:
            return  # a symlink loop, or a tree already copied
        self._walked.add(key)
        self._parents(directory)
        self.entries[key] = ("dir", "")
        with os.scandir(directory) as listing:
            names = sorted(e.name for e in listing if e.name != "__pycache__")
        for name in names:
            self.add_host_path(str(directory / name))

    def add_program(self, host_path: str, at: str | None = None) -> None:
        """A binary (at its host path, or copied to `at`) and the libraries it loads."""
        if at is None:
            self.add_host_path(host_path)
        else:
            image_path = PurePosixPath(at)
            self._parents(image_path)
            self.entries[str(image_path)] = ("file", str(Path(host_path).resolve()))
            self.modes[str(image_path)] = 0o755
        for library in shared_libraries(Path(host_path)):
            self.add_host_path(library)

    def add_text(self, path: str, content: str, mode: int = 0o644) -> None:
        image_path = PurePosixPath(path)
        self._parents(image_path)
        self.entries[str(image_path)] = ("text", content)
        self.modes[str(image_path)] = mode

    def add_dir(self, path: str, mode: int = 0o755) -> None:
        image_path = PurePosixPath(path)
        self._parents(image_path)
        self.entries[str(image_path)] = ("dir", "")
        self.modes[str(image_path)] = mode


def host_program(name: str) -> str:
    """A program's path on this host (PATH, then the sbin directories)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if found is None:
        raise NetfenceError(f"{name} is not installed on this host",
                            remedy="run scripts/install, or apt-get install it")
    return found


def account_lines(path: Path, names: Iterable[str]) -> str:
    """The host's passwd/group lines for these names: ids must match the host's, since the
    fence's files are shared with the containers through a bind mount."""
    wanted = set(names)
    try:
        lines = path.read_text().splitlines()
    except OSError:
        lines = []
    return "".join(line + "\n" for line in lines if line.split(":", 1)[0] in wanted)


def base_rootfs(users: Iterable[str] = ("root", "nobody"),
                groups: Iterable[str] = ("root", "nogroup")) -> Rootfs:
    rootfs = Rootfs()
    rootfs.add_text("/etc/passwd", account_lines(Path("/etc/passwd"), users))
    rootfs.add_text("/etc/group", account_lines(Path("/etc/group"), groups))
    # Names: /etc/hosts (the engine writes it), then DNS (the fence's resolver).
    rootfs.add_text("/etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n")
    rootfs.add_dir("/tmp", 0o1777)
    return rootfs


def _tar_info(name: str, kind: str, mode: int | None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = 0  # reproducible contexts
    if kind == "dir":
        info.type = tarfile.DIRTYPE
        info.mode = mode if mode is not None else 0o755
    elif kind == "symlink":
        info.type = tarfile.SYMTYPE
        info.mode = 0o777
    else:
        info.mode = mode if mode is not None else 0o644
    return info


def write_context(rootfs: Rootfs, out: io.BufferedIOBase | io.BytesIO,
                  labels: Mapping[str, str] = {}, env: Mapping[str, str] = {}) -> None:
    """A build context: a Dockerfile that copies rootfs/ into an empty image."""
    lines = [DOCKERFILE.rstrip("\n")]
    env = {"PATH": PATH_ENV, **env}
    lines += [f"ENV {key}={value}" for key, value in env.items()]
    lines += [f'LABEL "{key}"="{value}"' for key, value in labels.items()]
    dockerfile = ("\n".join(lines) + "\n").encode()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = _tar_info("Dockerfile", "text", 0o644)
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
        tar.addfile(_tar_info("rootfs", "dir", 0o755))
        for path in sorted(rootfs.entries):
            kind, value = rootfs.entries[path]
            mode = rootfs.modes.get(path)
            info = _tar_info("rootfs" + path, kind, mode)
            if kind == "symlink":
                info.linkname = value
                tar.addfile(info)
            elif kind == "dir":
                tar.addfile(info)
            elif kind == "text":
                data = value.encode()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                source = Path(value)
                stat = source.stat()
                info.size = stat.st_size
                if mode is None:
                    info.mode = stat.st_mode & 0o7777
                with source.open("rb") as fh:
                    tar.addfile(info, fh)
