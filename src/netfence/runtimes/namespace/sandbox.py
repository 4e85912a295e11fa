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
from dataclasses import dataclass
from pathlib import Path

from netfence.errors import NetfenceError, UsageError


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
    resolv_fd: int,
    info_fd: int,
    hidden: tuple[Path, ...],
) -> list[str]:
    """nsenter joins the namespace and drops to the user; bwrap builds the rest."""
    argv = [
        "nsenter", f"--net={netns_file}", f"--setuid={user.uid}", f"--setgid={user.gid}", "--",
        bwrap_path(),
        "--bind", "/", "/",
        "--dev", "/dev",
        "--proc", "/proc",
        "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        "--die-with-parent", "--new-session", "--cap-drop", "ALL",
        "--ro-bind-data", str(resolv_fd), "/etc/resolv.conf",
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


def workload_pids(init_pid: int) -> list[int]:
    """The processes bwrap's init started: the command we were asked to run."""
    try:
        text = Path(f"/proc/{init_pid}/task/{init_pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]
