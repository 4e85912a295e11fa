"""What a workload may see of the host's files, checked once, the same way for every
runtime: the profile's `read` and `write` grants and its `allow_unix_socket` entries (the
command line's --read, --write and --allow-unix-socket are merged into the profile).

A Unix socket is reached through the file system from any network namespace, so a socket
inside a granted directory would be a way around the fence (an ssh or gpg agent, a tmux
server, a container engine). Each granted directory is searched for sockets before the
workload starts (bounded: a grant too large to search is refused) and every socket found
is hidden, unless its exact path is granted with allow_unix_socket.

Paths are checked with the permissions of the user who ran sudo (as for --profile):
through a sudoers rule, a grant must not show the workload what its caller cannot read.
"""

from __future__ import annotations

import os
import posixpath
import pwd
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from netfence.errors import UsageError
from netfence.runtimes.caller import caller_permissions, sudo_caller

if TYPE_CHECKING:
    from netfence.profile.model import Profile

# The search of a granted directory for Unix sockets; beyond either bound the grant is
# refused (a narrower one is cheap to search).
MAX_ENTRIES = 100_000
MAX_SECONDS = 3.0
# Whoever can talk to a container engine is root on the host: never granted.
ENGINE_SOCKETS = ("docker.sock", "podman.sock", "containerd.sock")
# Never shown to a workload, whole or in part: the kernel's views of the host, the
# devices, and the fence's own state (configs, logs, the namespaces).
_KERNEL = ("/proc", "/sys", "/dev")


@dataclass(frozen=True)
class Bind:
    """A host path shown to the workload at `path` (the path it was granted by); `source`
    is where it really is on the host (symbolic links resolved)."""

    path: str
    source: str
    writable: bool = False
    # (st_dev, st_ino) of what was checked and searched, for a grant: the namespace runtime
    # binds that very file, or refuses to start (sandbox.pin).
    ident: tuple[int, int] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class FileGrants:
    binds: tuple[Bind, ...] = ()  # read and write grants, parents before children
    sockets: tuple[Bind, ...] = ()  # granted Unix sockets, by exact path
    masked: tuple[Bind, ...] = ()  # host sockets inside `binds`, hidden from the workload
    # Namespace runtime: read-only binds the command needs to start (its program file,
    # the virtualenv it sits in); the directory it starts in (the caller's, when it is in
    # the view); and the way back to the host's whole file system (--host-filesystem).
    program: tuple[Bind, ...] = ()
    cwd: str | None = None
    host_filesystem: bool = False


def never_granted() -> tuple[str, ...]:
    from netfence.runtimes import state
    from netfence.runtimes.netns import NETNS_DIR

    return (str(state.STATE_ROOT), str(NETNS_DIR), *_KERNEL)


def never_inside() -> tuple[str, ...]:
    """The caller's other state roots (rootless runs from other kinds of session): no
    grant inside one; a grant holding one is fine, the view covers it."""
    from netfence.runtimes import state

    return tuple(str(root) for root in state.private_roots() if root != state.STATE_ROOT)


def under(path: str, root: str) -> bool:
    """Whether `path` is `root` or inside it (both absolute and normalised)."""
    return path == root or root == "/" or path.startswith(root.rstrip("/") + "/")


def refusal(path: str, real: str, never: tuple[str, ...],
            inside: tuple[str, ...] = ()) -> str | None:
    """Why a grant of `path` (really `real`) is never given, or None."""
    for candidate in dict.fromkeys((path, real)):
        if candidate == "/":
            return "the whole file system is never granted"
        for root in never:
            if under(candidate, root) or under(root, candidate):
                return f"{root} is never shown to a workload"
        for root in inside:
            if under(candidate, root):
                return f"{root} is never shown to a workload"
    return None


def is_engine_socket(path: str, real: str) -> bool:
    engine = os.environ.get("DOCKER_HOST", "")
    engine_path = engine.removeprefix("unix://") if engine.startswith("unix://") else None
    names = {posixpath.basename(path), posixpath.basename(real)}
    return bool(names & set(ENGINE_SOCKETS)) or (
        engine_path is not None and os.path.realpath(engine_path) == real)


def _is_channel(mode: int) -> bool:
    return stat.S_ISSOCK(mode) or stat.S_ISFIFO(mode)


def find_sockets(root: str, max_entries: int = MAX_ENTRIES,
                 max_seconds: float = MAX_SECONDS) -> list[str] | None:
    """The Unix sockets and named pipes under directory `root`, as paths relative to it;
    None when the search passed a bound. A pipe is a channel to a host program as a socket
    is, and a read-only mount does not stop writes into it. Symbolic links are not followed
    (inside the workload's view they resolve in that view), mount points are crossed (a
    bind shows them)."""
    found: list[str] = []
    deadline = time.monotonic() + max_seconds
    seen = 0
    todo = [""]
    while todo:
        rel = todo.pop()
        try:
            entries = os.scandir(os.path.join(root, rel) if rel else root)
        except OSError:
            continue  # gone, or closed even to root (then closed to the workload too)
        with entries:
            for entry in entries:
                seen += 1
                if seen > max_entries or (seen % 1000 == 0 and time.monotonic() > deadline):
                    return None
                child = posixpath.join(rel, entry.name) if rel else entry.name
                try:
                    if entry.is_dir(follow_symlinks=False):
                        todo.append(child)
                    elif not (entry.is_file(follow_symlinks=False)
                              or entry.is_symlink()) and _is_channel(
                                  entry.stat(follow_symlinks=False).st_mode):
                        found.append(child)
                except OSError:
                    continue
    return sorted(found)


def _caller_name() -> str:
    caller = sudo_caller()
    if caller is None:
        return "root"
    try:
        return pwd.getpwuid(caller[0]).pw_name
    except KeyError:
        return f"uid {caller[0]}"


def _inspect(kind: str, path: str, mode: int, verb: str) -> tuple[str, os.stat_result, int]:
    """The grant's real path and status, looked at as the caller, and a descriptor of it
    (O_PATH: the caller closes it) so that what is searched is what was checked, however
    the path changes meanwhile; a one-line error when it is missing or the caller may not
    use it as asked."""
    who = _caller_name()  # before the ids change: sudo_caller() asks for root
    with caller_permissions():
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except FileNotFoundError:
            raise UsageError(f"{kind} {path}: no such file or directory",
                             remedy="create it first, or drop the grant") from None
        except OSError as exc:
            raise UsageError(f"{kind} {path}: {who} cannot reach it "
                             f"({exc.strerror})") from None
        try:
            info = os.fstat(fd)
            real = os.readlink(held(fd))
            if stat.S_ISDIR(info.st_mode):
                mode |= os.X_OK
            if not os.access(held(fd), mode, effective_ids=True):
                raise UsageError(f"{kind} {path}: {who} cannot {verb} it")
        except BaseException:
            os.close(fd)
            raise
    return real, info, fd


def held(fd: int) -> str:
    """The path of what descriptor `fd` of this process holds, whatever its name is now."""
    return f"/proc/self/fd/{fd}"


def hidden_sockets(bind: Bind, kind: str, allowed: set[str] | frozenset[str] = frozenset(),
                   *, container: bool = False, search: str | None = None) -> list[Bind]:
    """The host Unix sockets inside a granted directory that the workload must not reach:
    every one but those `allowed` (real paths). One line when the directory is too large
    to search, or (`container`) holds a container engine's socket. `search`: where to
    search (default: `bind.source`), e.g. the directory through a descriptor held open."""
    root = search or bind.source
    if not os.path.isdir(root):
        return []
    found = find_sockets(root)
    if found is None:
        raise UsageError(
            f"{kind} {bind.path}: too large to search for Unix sockets (more than "
            f"{MAX_ENTRIES:,} entries or {MAX_SECONDS:.0f} s)",
            remedy="grant a narrower directory")
    masks: list[Bind] = []
    for rel in found:
        host_path = posixpath.join(bind.source, rel)
        real = os.path.realpath(host_path)
        if container and is_engine_socket(host_path, real):
            raise UsageError(f"{kind} {bind.path}: holds a container engine's socket "
                             f"({posixpath.join(bind.path, rel)}), which is never granted",
                             remedy="grant a narrower path")
        if real not in allowed:
            masks.append(Bind(posixpath.join(bind.path, rel), host_path))
    return masks


def check(profile: Profile, *, container: bool = False) -> FileGrants:
    """The profile's grants, checked: one line (exit status 2) for a grant that is never
    given, missing, not the caller's to give, or too large to search for sockets.
    `container`: the docker runtime, where a grant holding an engine socket is refused."""
    never, inside = never_granted(), never_inside()
    sockets: list[Bind] = []
    for path in profile.allow_unix_socket:
        why = refusal(path, path, never, inside)
        if why is not None:
            raise UsageError(f"allow_unix_socket {path}: {why}")
        real, info, fd = _inspect("allow_unix_socket", path, os.W_OK, "connect to")
        os.close(fd)
        why = refusal(path, real, never, inside)
        if why is not None:
            raise UsageError(f"allow_unix_socket {path}: {why}")
        if not stat.S_ISSOCK(info.st_mode):
            raise UsageError(f"allow_unix_socket {path}: not a Unix socket",
                             remedy="grant files and directories with --read or --write")
        if is_engine_socket(path, real):
            raise UsageError(f"allow_unix_socket {path}: a container engine's socket is "
                             "never granted (whoever holds it is root on the host)")
        sockets.append(Bind(path, real, ident=(info.st_dev, info.st_ino)))

    wanted = {path: False for path in profile.read}
    wanted.update({path: True for path in profile.write})  # the same path: write wins
    binds: list[Bind] = []
    masked: dict[str, Bind] = {}
    allowed = {b.source for b in sockets}
    for path, writable in wanted.items():
        kind = "write grant" if writable else "read grant"
        why = refusal(path, path, never, inside)
        if why is not None:
            raise UsageError(f"{kind} {path}: {why}", remedy="grant a narrower path")
        real, info, fd = _inspect(kind, path, os.R_OK | (os.W_OK if writable else 0),
                                  "write" if writable else "read")
        try:
            why = refusal(path, real, never, inside)
            if why is not None:
                raise UsageError(f"{kind} {path}: {why}", remedy="grant a narrower path")
            if stat.S_ISSOCK(info.st_mode):
                raise UsageError(f"{kind} {path}: a Unix socket",
                                 remedy=f"grant it with --allow-unix-socket {path}")
            bind = Bind(path, real, writable, ident=(info.st_dev, info.st_ino))
            # Searched through the descriptor: a path swapped meanwhile changes nothing.
            for mask in hidden_sockets(bind, kind, allowed, container=container,
                                       search=held(fd)):
                masked.setdefault(mask.path, mask)
        finally:
            os.close(fd)
        binds.append(bind)
    binds.sort(key=lambda b: (len(Path(b.path).parts), b.path))
    return FileGrants(binds=tuple(binds), sockets=tuple(sockets),
                      masked=tuple(masked.values()))
