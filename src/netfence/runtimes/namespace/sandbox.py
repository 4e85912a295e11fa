"""How the workload is started: in the fence's network namespace, as an unprivileged
user, inside bubblewrap (own PID, IPC and mount namespaces, no capabilities,
no_new_privs), so it cannot setns back into the host, see or signal the fence, or write
its configuration.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from netfence.errors import NetfenceError, UsageError

SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
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
    """--user, else the sudo caller, else `nobody`; never root."""
    if requested is not None:
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
    return SandboxUser(pw.pw_uid, pw.pw_gid, pw.pw_name, pw.pw_dir)


def check_command(program: str, user: SandboxUser, path: str) -> None:
    """Fail in one line, before the fence is built, when `program` will not start as
    `user`: not on PATH, or behind a directory that user cannot enter (a virtualenv or a
    pyenv under root's home, mode 0700). Decided by a child process holding the user's
    credentials, so ACLs and groups count as they will in the sandbox."""
    as_root = shutil.which(program, path=path)
    real = os.path.realpath(as_root) if as_root else None
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        answer = b"?"
        try:
            os.close(read_fd)
            os.setgroups(os.getgrouplist(user.name, user.gid))
            os.setgid(user.gid)
            os.setuid(user.uid)
            if shutil.which(program, path=path):  # execvp's search, as the user
                answer = b"ok"
            elif real is not None:
                shut = [str(d) for d in (*reversed(Path(real).parents), Path(real))
                        if not os.access(d, os.X_OK)]
                answer = ("closed:" + (shut[0] if shut else real)).encode()
            else:
                answer = b"missing"
            os.write(write_fd, answer)
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as fh:
        answer_text = fh.read().decode(errors="replace")
    os.waitpid(pid, 0)
    if answer_text == "missing":
        what = "no such executable file" if os.sep in program else "command not found"
        raise UsageError(f"{program}: {what}", remedy="give its full path, or install it")
    if answer_text.startswith("closed:"):
        closed = answer_text.removeprefix("closed:")
        raise UsageError(
            f"{as_root}: the workload's user {user.name} cannot run it ({closed} is closed "
            "to that user)",
            remedy=f"install it where {user.name} can read it, or choose another --user")


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
) -> list[str]:
    """nsenter joins the namespace and drops to the user; bwrap builds the rest.

    The workload's environment (partly the caller's: --env) reaches only the workload,
    through bwrap: nsenter runs as root, where PATH or LD_PRELOAD would choose its code.
    Start the argv with LAUNCH_ENV as its environment."""
    nsenter = shutil.which("nsenter", path=SYSTEM_PATH)
    if nsenter is None:
        raise NetfenceError("nsenter is not installed", remedy="apt-get install util-linux")
    setenv = [arg for key, value in env.items() for arg in ("--setenv", key, value)]
    argv = [
        nsenter, f"--net={netns_file}", f"--setuid={user.uid}", f"--setgid={user.gid}", "--",
        bwrap_path(), "--clearenv", *setenv,
        "--bind", "/", "/",
        "--dev", "/dev",
        "--proc", "/proc",
        # A Unix socket is reached through the file system, from any network namespace:
        # the engines', D-Bus's, systemd's and the user session's all live under /run.
        # The workload gets an empty one.
        "--tmpfs", "/run",
        "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        "--die-with-parent", "--new-session", "--cap-drop", "ALL",
        # Where the file really is: /etc/resolv.conf is often a link into /run.
        "--ro-bind-data", str(resolv_fd), os.path.realpath("/etc/resolv.conf"),
        "--info-fd", str(info_fd),
    ]
    for path in hidden:
        if path.is_dir():
            argv += ["--tmpfs", str(path)]
    return [*argv, "--", *command]


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
