"""The workload's file-system view in the namespace runtime, as bubblewrap arguments.

Read-only: the system directories (/usr, /etc and the /bin, /sbin, /lib* beside them), the
command's program and its virtualenv. Fresh and private: /tmp, /var/tmp, /run, /dev/shm,
a minimal /dev, /proc of its own PID namespace, an empty home. Then the profile's grants,
each at its own path, with every host Unix socket inside them hidden unless granted.
Nothing else of the host: other homes, /root, /srv, /mnt, /var, /opt are not there, and
neither is any socket the host keeps in /tmp or /run (X11, tmux, agents, engines, D-Bus).

`plan` is pure: what it needs of the host comes in as arguments (`layout`).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from netfence.runtimes.grants import Bind, FileGrants, under

# Read-only, as they are on the host.
SYSTEM_DIRS = ("/usr", "/etc")
# Symbolic links into /usr on merged-/usr systems, directories elsewhere.
SYSTEM_TOP = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# Fresh tmpfs, private to the workload: nothing in them survives it.
SHARED_TMP = ("/tmp", "/var/tmp", "/dev/shm")
KERNEL = ("/dev", "/proc")
DEV_NULL = "/dev/null"


@dataclass(frozen=True)
class Layout:
    """What the view needs of the host's top level: each system path that exists, with
    the target of its symbolic link (None for a directory) and its real path."""

    links: Mapping[str, str | None]
    real: Mapping[str, str]


def host_layout() -> Layout:
    links: dict[str, str | None] = {}
    real: dict[str, str] = {}
    for path in (*SYSTEM_DIRS, *SYSTEM_TOP):
        if os.path.islink(path):
            links[path] = os.readlink(path)
        elif os.path.isdir(path):
            links[path] = None
        else:
            continue
        real[path] = os.path.realpath(path)
    return Layout(links, real)


def usable_home(home: str) -> bool:
    """Whether the user's home can be an empty tmpfs of its own: not `/`, nor a system
    directory or anything inside one (`daemon`'s home is /usr/sbin, `bin`'s is /bin)."""
    if home in ("", "/") or not home.startswith("/"):
        return False
    return not any(under(home, root) or under(root, home)
                   for root in (*SYSTEM_DIRS, *SYSTEM_TOP, *KERNEL))


@dataclass(frozen=True)
class _Step:
    path: str
    rank: int  # order among steps at the same path
    args: tuple[str, ...]


def _depth(path: str) -> int:
    return len(Path(path).parts)


def plan(files: FileGrants, layout: Layout, home: str, resolv: tuple[int, str],
         hidden: Sequence[str] = (), pinned: Mapping[str, int] | None = None) -> list[str]:
    """bwrap's file-system arguments for the view. Mounts go parent first (a grant inside
    the fresh /tmp or the empty home lands on top of it; a fresh directory inside a grant
    stays fresh), and at the same path: fresh, then granted, then hidden. `resolv`: the
    fd bwrap reads the fence's resolv.conf from, and where it goes. `pinned`: a grant's
    path -> a descriptor of the file that was checked, bound instead of its path (a path
    can be swapped for a link between the check and bwrap)."""
    held = pinned or {}
    resolv_fd, resolv_path = resolv
    if files.host_filesystem:
        # The host's whole file system (--host-filesystem): only /run is fresh, as the
        # engines', D-Bus's and the session's sockets live there.
        host = ["--bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/run"]
        for path in hidden:
            host += ["--tmpfs", path]
        return [*host, "--ro-bind-data", str(resolv_fd), resolv_path]

    steps: list[_Step] = []
    for path, target in layout.links.items():
        if target is not None:
            steps.append(_Step(path, 0, ("--symlink", target, path)))
        else:
            steps.append(_Step(path, 0, ("--ro-bind", path, path)))
    steps += [_Step("/dev", 0, ("--dev", "/dev")), _Step("/proc", 0, ("--proc", "/proc")),
              _Step("/run", 0, ("--tmpfs", "/run"))]
    steps += [_Step(path, 0, ("--perms", "1777", "--tmpfs", path)) for path in SHARED_TMP]
    if usable_home(home):
        steps.append(_Step(home, 0, ("--perms", "0700", "--tmpfs", home)))
    def bound(bind: Bind) -> tuple[str, ...]:
        flag = "--bind" if bind.writable else "--ro-bind"
        if bind.path in held:
            return (flag + "-fd", str(held[bind.path]), bind.path)
        return (flag, bind.source, bind.path)

    steps += [_Step(b.path, 1, bound(b)) for b in (*files.program, *files.binds)]
    steps += [_Step(s.path, 2, bound(s)) for s in files.sockets]
    steps += [_Step(path, 3, ("--tmpfs", path)) for path in hidden]
    steps += [_Step(m.path, 3, ("--ro-bind", DEV_NULL, m.path)) for m in files.masked]

    args: list[str] = []
    for step in sorted(steps, key=lambda s: (_depth(s.path), s.rank, s.path)):
        args += step.args
    # Last: over whatever a grant of /etc brought; then nothing more can be added to /.
    args += ["--ro-bind-data", str(resolv_fd), resolv_path, "--remount-ro", "/"]
    start = files.cwd or (home if usable_home(home) else "/")
    return [*args, "--chdir", start]


def roots(files: FileGrants, layout: Layout) -> list[Bind]:
    """Every host path the view shows as it is on the host (read-only or not)."""
    shown = [Bind(path, layout.real.get(path, path)) for path in layout.links]
    shown += [Bind(path, path) for path in KERNEL]
    return [*shown, *files.program, *files.binds, *files.sockets]


def shows(path: str, real: str, files: FileGrants, layout: Layout, home: str) -> bool:
    """Whether host path `path` (real path `real`) is the same file inside the view. The
    fresh directories themselves are there (empty), not what the host keeps in them."""
    if files.host_filesystem:
        return True
    fresh = ["/", "/run", *SHARED_TMP, *([home] if usable_home(home) else [])]
    if path in fresh:
        return True
    return any(under(path, r.path) for r in roots(files, layout)) and any(
        under(real, r.source) for r in roots(files, layout))


def grant_hint(path: str, kind: str) -> str:
    """The grant that shows host path `path` of `kind` ("dir", "file" or "socket"): a
    script's directory (it imports its neighbours), a directory itself, a socket by its
    exact path."""
    if kind == "socket":
        return f"--allow-unix-socket {path}"
    return f"--read {path if kind == 'dir' else posixpath.dirname(path) or '/'}"


def candidate_paths(args: Sequence[str]) -> list[str]:
    """Arguments that may name files: each argument, and the value of `--opt=VALUE`."""
    out: list[str] = []
    for arg in args:
        if not arg or "\n" in arg or "\0" in arg:
            continue
        out.append(arg)
        if arg.startswith("-") and "=" in arg:
            value = arg.split("=", 1)[1]
            if value:
                out.append(value)
    return out


def first_hidden(args: Sequence[str], cwd: str, lookup: Callable[[str], tuple[str, str] | None],
                 visible: Callable[[str, str], bool]) -> tuple[str, str, str] | None:
    """The first argument naming an existing host path that the view does not show, as
    (the argument, its absolute path, its kind); None when all are shown. `lookup(path)`
    gives (real path, kind: "dir", "file" or "socket") for a path that exists."""
    for arg in candidate_paths(args):
        absolute = posixpath.normpath(posixpath.join(cwd, arg))
        found = lookup(absolute)
        if found is None:
            continue
        real, kind = found
        if not visible(absolute, real):
            return arg, absolute, kind
    return None


# --- what the command needs to start (reads the host's files) -------------------------


def _venv_of(path: str) -> str | None:
    """The virtualenv holding `path` (VENV/bin/PROGRAM, with VENV/pyvenv.cfg), if any."""
    directory = posixpath.dirname(path)
    for candidate in (directory, posixpath.dirname(directory)):
        if candidate != "/" and os.path.isfile(posixpath.join(candidate, "pyvenv.cfg")):
            return candidate
    return None


def _venv_home(venv: str) -> str | None:
    """The installation of the interpreter a virtualenv was made from (`home = DIR`, the
    interpreter's directory: its parent when that is a `bin`)."""
    try:
        text = Path(venv, "pyvenv.cfg").read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "home" and value.strip().startswith("/"):
            home = posixpath.normpath(value.strip())
            return posixpath.dirname(home) if posixpath.basename(home) == "bin" else home
    return None


def _interpreter(path: str) -> str | None:
    """A script's `#!` interpreter, when it is an absolute path."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].split()
    first = words[0].decode(errors="replace") if words else ""
    return first if first.startswith("/") else None


def program_binds(program: str, shown: Callable[[str], bool],
                  extra: Sequence[str] = ()) -> list[Bind]:
    """Read-only binds that let `program` (the absolute path execvp will run) start: the
    file itself (and its real path, for a symbolic link), the virtualenv it sits in with
    the installation that virtualenv's interpreter comes from, and the same for a
    script's `#!` interpreter; then the `extra` paths the command needs (an npm package's
    installation, which its interpreter's arguments name). Paths the view shows already
    (`shown`) are left out."""
    binds: dict[str, Bind] = {}

    def add(path: str) -> None:
        if path not in binds and not shown(path):
            binds[path] = Bind(path, os.path.realpath(path))

    def program_and_venv(path: str) -> None:
        real = os.path.realpath(path)
        for each in dict.fromkeys((path, real)):
            venv = _venv_of(each)
            if venv is not None:
                add(venv)
                home = _venv_home(venv)
                if home is not None and os.path.isdir(home):
                    add(home)
            else:
                add(each)

    program_and_venv(program)
    interpreter = _interpreter(os.path.realpath(program))
    if interpreter is not None and os.path.exists(interpreter):
        program_and_venv(interpreter)
    for path in extra:
        add(path)
    # A venv inside another bind, or a file inside a venv, needs no bind of its own.
    kept = [b for b in binds.values()
            if not any(o is not b and under(b.path, o.path) and under(b.source, o.source)
                       for o in binds.values())]
    return sorted(kept, key=lambda b: (_depth(b.path), b.path))
