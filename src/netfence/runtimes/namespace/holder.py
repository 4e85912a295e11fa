"""The rootless fence's namespaces: a small child process (the holder) unshares a user
namespace, owned by the calling user, and a network namespace owned by that user
namespace. Both live as long as the holder, which dies with the supervisor
(PR_SET_PDEATHSIG): nothing is left on disk and nothing outlives a killed run.

The supervisor cannot enter the holder's network namespace: setns() asks for
CAP_SYS_ADMIN in the namespace's owner AND in the caller's own user namespace, and an
unprivileged caller has it only in the first. So the holder creates, on request, every
socket that must live in the namespace and passes it back (SCM_RIGHTS); a socket keeps its
namespace for life, whoever uses it. Programs reach the namespaces with
`nsenter --user --net --preserve-credentials` (preserve: setgroups is denied there).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import signal
import socket
import struct
import threading
from pathlib import Path

from netfence.errors import PrivilegeError
from netfence.runtimes import netns

CLONE_NEWUSER = 0x10000000
_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


class UserNamespaceUnavailable(PrivilegeError):
    """This user cannot create a user namespace owning a network namespace, or cannot
    use its capabilities there."""


def _sysctl(name: str) -> str | None:
    try:
        return Path("/proc/sys", *name.split(".")).read_text().strip()
    except OSError:
        return None


def unavailable(detail: str) -> UserNamespaceUnavailable:
    """The one line for a failed attempt (`detail`: what failed, e.g. "unshare: EPERM"),
    naming the cause the sysctls show: decided by what failed, since inside another
    sandbox the sysctls can read as allowed while the kernel refuses."""
    sudo = "or run netfence with sudo"
    if _sysctl("kernel.unprivileged_userns_clone") == "0":
        return UserNamespaceUnavailable(
            "unprivileged user namespaces are disabled here "
            "(kernel.unprivileged_userns_clone=0)",
            remedy=f"sysctl -w kernel.unprivileged_userns_clone=1, {sudo}")
    if detail.endswith("ENOSPC") or _sysctl("user.max_user_namespaces") == "0":
        return UserNamespaceUnavailable(
            "this user may create no more user namespaces (user.max_user_namespaces is 0 "
            "or reached)", remedy=f"sysctl -w user.max_user_namespaces=15000, {sudo}")
    if (_sysctl("kernel.apparmor_restrict_unprivileged_userns") == "1"
            and not detail.startswith("unshare")):
        return UserNamespaceUnavailable(
            "AppArmor restricts unprivileged user namespaces "
            "(kernel.apparmor_restrict_unprivileged_userns=1)",
            remedy=f"an AppArmor profile granting `userns,` to netfence, {sudo}")
    if detail == "unshare: EPERM":
        return UserNamespaceUnavailable(
            "creating a user namespace is refused here (a container's seccomp profile or "
            "a security module)", remedy=f"run netfence on the host, {sudo}")
    return UserNamespaceUnavailable(f"user namespaces do not work here ({detail})",
                                    remedy=sudo)


def _errname(err: int) -> str:
    return errno.errorcode.get(err, str(err))


class Holder:
    """The holder process and the namespaces it keeps; close() ends both."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the holder; coverage cannot follow os._exit
            ours.close()
            _hold(theirs, parent)
        theirs.close()
        self.pid = pid
        self._control = ours
        self._lock = threading.Lock()
        try:
            self._map(ours.recv(64))
        except BaseException:
            self.close()
            raise
        self.netns = Path(f"/proc/{pid}/ns/net")
        self.userns = Path(f"/proc/{pid}/ns/user")

    def _map(self, first: bytes) -> None:
        """Map the caller to root in the holder's user namespace, then let it set up."""
        if first != b"unshared":
            raise unavailable(first.decode(errors="replace") or "the holder died")
        proc = Path(f"/proc/{self.pid}")
        try:
            (proc / "uid_map").write_text(f"0 {os.getuid()} 1\n")
            # An unprivileged gid map needs setgroups denied first.
            (proc / "setgroups").write_text("deny\n")
            (proc / "gid_map").write_text(f"0 {os.getgid()} 1\n")
        except OSError as exc:
            raise unavailable(f"id map: {_errname(exc.errno or 0)}") from None
        self._control.send(b"mapped")
        answer = self._control.recv(64)
        if answer != b"ready":
            raise unavailable(answer.decode(errors="replace") or "the holder died")

    def nsenter(self) -> list[str]:
        """nsenter's arguments to run a program in the namespaces (as root there)."""
        return [f"--user={self.userns}", f"--net={self.netns}", "--preserve-credentials"]

    def new_socket(self, family: int, kind: int) -> socket.socket:
        """A new socket in the holder's network namespace."""
        with self._lock:
            self._control.send(struct.pack("=ii", family, kind))
            _msg, fds, _flags, _addr = socket.recv_fds(self._control, 16, 1)
        if not fds:
            raise OSError(errno.EIO, "the namespace holder gave no socket")
        # Received descriptors are inheritable (no MSG_CMSG_CLOEXEC): none may reach a
        # process started later.
        os.set_inheritable(fds[0], False)
        return socket.socket(fileno=fds[0])

    def open_socket(self, host: str, kind: socket.SocketKind, netns_file: Path | None
                    ) -> socket.socket:
        """A socket for `host`'s family: in the namespace when `netns_file` names one
        (it can only be the holder's), else in the caller's (relay.SocketOpener)."""
        if netns_file is None:
            return netns.open_socket(host, kind, None)
        return self.new_socket(netns.family_of(host), kind)

    def close(self) -> None:
        """End the holder: it exits when its control socket closes (killed if it has not
        within a second)."""
        self._control.close()
        with contextlib.suppress(ChildProcessError, ProcessLookupError):
            exited = os.pidfd_open(self.pid)
            try:
                if not select.select([exited], [], [], 1.0)[0]:
                    os.kill(self.pid, signal.SIGKILL)
            finally:
                os.close(exited)
            os.waitpid(self.pid, 0)


def _hold(control: socket.socket, parent: int) -> None:  # pragma: no cover - runs in the holder
    """The holder's life: unshare, wait to be mapped, set loopback up, serve sockets."""
    code = 1
    try:
        # Nothing of the supervisor's stays open here (its stdout: a client waiting for
        # EOF; its locks and pipes).
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, control.fileno())
        os.closerange(control.fileno() + 1, os.sysconf("SC_OPEN_MAX"))
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            return  # the supervisor died before the death signal was armed
        if _libc.unshare(CLONE_NEWUSER | netns.CLONE_NEWNET) != 0:
            control.send(f"unshare: {_errname(ctypes.get_errno())}".encode())
            return
        control.send(b"unshared")
        if control.recv(16) != b"mapped":
            return
        # Loopback up: the first use of the namespace's capabilities, which is what a
        # security module (AppArmor) takes away while still allowing the unshare.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                netns.set_loopback_up(s)
            except OSError as exc:
                control.send(f"loopback up: {_errname(exc.errno or 0)}".encode())
                return
        control.send(b"ready")
        while request := control.recv(16):
            family, kind = struct.unpack("=ii", request)
            with socket.socket(family, kind) as made:
                socket.send_fds(control, [b"s"], [made.fileno()])
        code = 0
    finally:
        os._exit(code)  # whatever happened: never back into the supervisor's code


def probe() -> None:
    """Raise UserNamespaceUnavailable (one line, with the remedy) unless a rootless fence
    can be built here: a holder is made, loopback set up in it, and ended."""
    Holder().close()


def problem() -> UserNamespaceUnavailable | None:
    """Why a rootless fence cannot be built here (probe), or None when it can."""
    try:
        probe()
    except UserNamespaceUnavailable as exc:
        return exc
    return None
