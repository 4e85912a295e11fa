"""How the workload is started: in the fence's network namespace, as an unprivileged
user, inside bubblewrap (own PID, IPC and mount namespaces, no capabilities,
no_new_privs), so it cannot setns back into the host, see or signal the fence, or write
its configuration.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import pwd
import shutil
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from netfence.errors import NetfenceError, UsageError
from netfence.runtimes import grants
from netfence.runtimes.base import WorkloadSpec
from netfence.runtimes.caller import caller_permissions
from netfence.runtimes.namespace import view
from netfence.runtimes.namespace.holder import Holder
from netfence.runtimes.netfilter import SYSTEM_PATH

log = logging.getLogger("netfence")

# All that nsenter and bwrap get from us; the workload's own environment is bwrap's
# --setenv arguments.
LAUNCH_ENV = {"PATH": SYSTEM_PATH}


@dataclass(frozen=True)
class SandboxUser:
    uid: int
    gid: int
    name: str
    home: str


def resolve_user(requested: str | None) -> SandboxUser:
    """--user, else the sudo caller, else `nobody`; never root. Without root (a rootless
    fence), the caller and no one else."""
    if os.geteuid() != 0:
        pw = pwd.getpwuid(os.getuid())
        if requested is not None and requested not in (pw.pw_name, str(pw.pw_uid)):
            raise UsageError(f"--user {requested}: without root the workload runs as you "
                             f"({pw.pw_name})", remedy="drop --user, or run netfence with sudo")
    elif requested is not None:
        try:
            pw = pwd.getpwuid(int(requested)) if requested.isdigit() else pwd.getpwnam(requested)
        except KeyError:
            raise UsageError(f"--user {requested!r}: no such user") from None
    elif os.environ.get("SUDO_UID", "0") not in ("", "0"):
        pw = pwd.getpwuid(int(os.environ["SUDO_UID"]))
    else:
        pw = pwd.getpwnam("nobody")
    if pw.pw_uid == 0:
        raise UsageError("the workload must not run as root (choose another --user)")
    if pw.pw_gid == 0:
        # It would read and write whatever is root's group's (/etc/sudoers is 0440 root:root).
        raise UsageError(f"the workload must not run in root's group ({pw.pw_name}'s "
                         "primary group is root; choose another --user)")
    return SandboxUser(pw.pw_uid, pw.pw_gid, pw.pw_name, pw.pw_dir)


def _as_user(user: SandboxUser, question: Callable[[], str]) -> str:
    """`question()` answered by a child process holding the user's credentials, so ACLs
    and groups count as they will in the sandbox; "?" when it failed. Without root the
    caller is the user: asked in this process."""
    if os.geteuid() != 0:
        return question()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        answer = "?"
        try:
            os.close(read_fd)
            os.setgroups(os.getgrouplist(user.name, user.gid))
            os.setgid(user.gid)
            os.setuid(user.uid)
            answer = question()
        finally:
            with contextlib.suppress(OSError):
                os.write(write_fd, answer.encode(errors="replace"))
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as fh:
        answer_text = fh.read().decode(errors="replace")
    os.waitpid(pid, 0)
    return answer_text


def _closed(path: str) -> str | None:
    """The first directory on the way to `path` that the caller cannot enter."""
    shut = [str(d) for d in (*reversed(Path(path).parents), Path(path))
            if not os.access(d, os.X_OK)]
    return shut[0] if shut else None


def check_command(program: str, user: SandboxUser, path: str) -> str:
    """The absolute path the sandbox will run for `program`. Fails in one line, before
    the fence is built, when it will not start as `user`: not on PATH, or behind a
    directory that user cannot enter (a virtualenv or a pyenv under root's home, mode
    0700)."""
    as_root = shutil.which(program, path=path)
    real = os.path.realpath(as_root) if as_root else None

    def ask() -> str:
        found = shutil.which(program, path=path)  # execvp's search, as the user
        if found:
            return "ok:" + os.path.abspath(found)
        if real is not None:
            return "closed:" + (_closed(real) or real)
        return "missing"

    answer_text = _as_user(user, ask)
    if answer_text.startswith("ok:"):
        return answer_text.removeprefix("ok:")
    if answer_text.startswith("closed:"):
        closed = answer_text.removeprefix("closed:")
        raise UsageError(
            f"{as_root}: the workload's user {user.name} cannot run it ({closed} is closed "
            "to that user)",
            remedy=f"install it where {user.name} can read it, or choose another --user")
    what = "no such executable file" if os.sep in program else "command not found"
    raise UsageError(f"{program}: {what}", remedy="give its full path, or install it")


def prepare(spec: WorkloadSpec, user: SandboxUser, path: str) -> WorkloadSpec:
    """`spec` with its file-system view decided (`spec.files`), before anything starts:
    the grants checked, the program's own files added, and every argument that names a
    host file outside the view refused in one line naming the --read that shows it."""
    program = check_command(spec.command[0], user, path)
    if spec.host_filesystem:
        log.warning("--host-filesystem: the workload sees the host's files and its Unix "
                    "sockets outside /run; only the network is fenced")
        return dataclasses.replace(spec, files=grants.FileGrants(host_filesystem=True))
    files = grants.check(spec.profile)
    layout = view.host_layout()

    def shown(candidate: str, real: str | None = None) -> bool:
        return view.shows(candidate, real or os.path.realpath(candidate), files, layout,
                          user.home)

    needs = tuple(view.program_binds(program, shown, spec.program_paths))
    # A program's directory (its virtualenv) is searched for sockets as a grant is.
    masks = [m for b in needs for m in grants.hidden_sockets(b, "the program's directory")]
    files = dataclasses.replace(files, program=needs, masked=(*files.masked, *masks))
    cwd = os.getcwd()
    if shown(cwd):
        files = dataclasses.replace(files, cwd=cwd)

    def lookup(candidate: str) -> tuple[str, str] | None:
        try:
            mode = os.stat(candidate).st_mode
        except OSError:
            return None
        kind = "dir" if stat.S_ISDIR(mode) else "socket" if stat.S_ISSOCK(mode) else "file"
        return os.path.realpath(candidate), kind

    with caller_permissions():  # what the caller can see of the host, no more
        hidden = view.first_hidden(spec.command[1:], cwd, lookup, shown)
    if hidden is not None:
        arg, absolute, kind = hidden
        shown_as = f" ({absolute})" if absolute != arg else ""
        raise UsageError(f"{arg}{shown_as} is outside the workload's view",
                         remedy=f"pass {view.grant_hint(absolute, kind)}")
    return dataclasses.replace(spec, files=_reachable(files, user))


def _reachable(files: grants.FileGrants, user: SandboxUser) -> grants.FileGrants:
    """Every bind's source is one the workload's user can reach (bubblewrap runs as that
    user), or one line naming it; masks over sockets that user can never reach are
    dropped (bubblewrap could not place them)."""
    sources = [b.source for b in (*files.program, *files.binds, *files.sockets)]
    masks = [m.source for m in files.masked]
    if not (sources or masks):
        return files  # nothing to ask: no process to fork

    def ask() -> str:
        for source in sources:
            if not os.path.exists(source):
                return "closed:" + source + "\0" + (_closed(source) or source)
        return "ok:" + "\0".join(m for m in masks if _within_reach(m))

    answer = _as_user(user, ask)
    if answer.startswith("closed:"):
        source, closed = answer.removeprefix("closed:").split("\0", 1)
        raise UsageError(f"{source}: the workload's user {user.name} cannot reach it "
                         f"({closed} is closed to that user)",
                         remedy="grant a path that user can read, or choose another --user")
    if not answer.startswith("ok:"):
        raise NetfenceError(f"could not check the workload's view as {user.name}")
    needed = set(answer.removeprefix("ok:").split("\0"))
    return dataclasses.replace(files, masked=tuple(m for m in files.masked
                                                   if m.source in needed))


def _within_reach(path: str) -> bool:
    """Whether this process's user can reach `path`, now or after a chmod of its own: a
    socket is out of reach for good when the first directory on its way that the user
    cannot enter belongs to someone else (bubblewrap could not cover it either)."""
    for directory in reversed(Path(path).parents):
        if not os.access(directory, os.X_OK):
            try:
                return directory.lstat().st_uid == os.getuid()
            except OSError:
                return True  # unknown: keep the cover (the start fails closed)
    return True


def bwrap_path() -> str:
    path = shutil.which("bwrap")
    if path is None:
        raise NetfenceError("bubblewrap (bwrap) is not installed",
                            remedy="apt-get install bubblewrap")
    return path


def sandbox_argv(
    netns_file: Path,
    user: SandboxUser,
    command: tuple[str, ...],
    env: Mapping[str, str],
    resolv_fd: int,
    info_fd: int,
    hidden: tuple[Path, ...],
    files: grants.FileGrants | None = None,
    pinned: Mapping[str, int] | None = None,
    holder: Holder | None = None,
    gate: int | None = None,
) -> list[str]:
    """nsenter joins the namespace and drops to the user; bwrap builds the rest.
    Rootless (`holder`): nsenter joins the holder's user and network namespaces, where
    the caller is root, and bwrap puts the workload in a user namespace of its own, as
    the caller again and with no capability over the network namespace (nor a way to
    make another: --disable-userns).

    The workload's environment (partly the caller's: --env) reaches only the workload,
    through bwrap: nsenter runs as root, where PATH or LD_PRELOAD would choose its code.
    Start the argv with LAUNCH_ENV as its environment. `files`: the view `prepare` decided
    (None: the system directories and nothing granted); `pinned`: its grants' descriptors
    (`pin`), which the argv names: pass them to the process. `gate`: a descriptor bwrap
    reads one byte from, with the sandbox made, before the workload runs (--block-fd;
    the end of the file lets it run too: keep a writer until the byte is written, or the
    sandbox is ended)."""
    nsenter = shutil.which("nsenter", path=SYSTEM_PATH)
    if nsenter is None:
        raise NetfenceError("nsenter is not installed", remedy="apt-get install util-linux")
    setenv = [arg for key, value in env.items() for arg in ("--setenv", key, value)]
    enter = [f"--net={netns_file}", f"--setuid={user.uid}", f"--setgid={user.gid}"]
    own_user: list[str] = []
    if holder is not None:
        enter = holder.nsenter()
        own_user = ["--unshare-user", "--disable-userns", "--uid", str(user.uid),
                    "--gid", str(user.gid)]
    argv = [
        nsenter, *enter, "--", bwrap_path(), *own_user, "--clearenv", *setenv,
        # A Unix socket is reached through the file system, from any network namespace:
        # the view holds none of the host's but those granted (view.py).
        *view.plan(files or grants.FileGrants(), view.host_layout(), user.home,
                   # Where the file really is: /etc/resolv.conf is often a link into /run.
                   (resolv_fd, os.path.realpath("/etc/resolv.conf")),
                   hidden=[str(p) for p in hidden if p.is_dir()], pinned=pinned),
        "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        "--die-with-parent", "--new-session", "--cap-drop", "ALL",
        "--info-fd", str(info_fd),
        *(["--block-fd", str(gate)] if gate is not None else []),
    ]
    return [*argv, "--", *command]


def pin(files: grants.FileGrants | None) -> dict[str, int]:
    """A descriptor (O_PATH) of each checked grant, opened without following a link: the
    very file that was checked (grants.check) or a one-line refusal. Between the check and
    bwrap, whoever may write a grant's parent directory (a workload with a write grant
    around it) could swap it for a link to another directory of the workload's user (its
    agents' sockets, ~/.ssh); bwrap binds the descriptors, never the paths. The caller
    closes them."""
    fds: dict[str, int] = {}
    try:
        for bind in (*files.binds, *files.sockets) if files else ():
            if bind.ident is None:
                continue
            try:
                fd = os.open(bind.source, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as exc:
                raise UsageError(f"{bind.path}: gone since it was checked ({exc.strerror})",
                                 remedy="start again") from None
            fds[bind.path] = fd
            info = os.fstat(fd)
            if (info.st_dev, info.st_ino) != bind.ident:
                raise UsageError(f"{bind.path}: replaced since it was checked (is anything "
                                 "renaming it? another workload with a write grant around it?)",
                                 remedy="start again; grant a path only you can rename")
    except BaseException:
        for fd in fds.values():
            os.close(fd)
        raise
    return fds


def read_child_pid(info_fd: int) -> int | None:
    """The sandbox's init process (host PID), from bwrap's --info-fd JSON."""
    chunks = b""
    while chunk := os.read(info_fd, 4096):
        chunks += chunk
        if chunks.rstrip().endswith(b"}"):
            break
    try:
        return int(json.loads(chunks)["child-pid"])
    except (ValueError, KeyError):
        return None


def open_init(init_pid: int | None, parent_pid: int) -> int | None:
    """A pidfd for the sandbox's init while it is still the child of the bwrap we started:
    killing it ends every process in the sandbox's PID namespace, and a pidfd cannot hit
    a recycled PID."""
    if init_pid is None:
        return None
    try:
        fd = os.pidfd_open(init_pid)
    except OSError:
        return None
    if _parent_of(init_pid) != parent_pid:
        os.close(fd)
        return None
    return fd


def _parent_of(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    return None


def workload_pids(init_pid: int) -> list[int]:
    """The processes bwrap's init started: the command we were asked to run."""
    try:
        text = Path(f"/proc/{init_pid}/task/{init_pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]
