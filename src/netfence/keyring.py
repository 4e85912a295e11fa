"""The workload's own session keyring (imported by a warm run too: stdlib only)."""

from __future__ import annotations

import ctypes
import os

from netfence.errors import NetfenceError

# keyctl(2) has no glibc wrapper: its system call number per architecture.
_SYS_KEYCTL = {"x86_64": 250, "aarch64": 219}
_KEYCTL_JOIN_SESSION_KEYRING = 1


def leave_session_keyring() -> None:
    """Give the calling thread (and the sandbox it starts next) a new, empty session
    keyring. Whoever holds a session keyring has every right on it, across users and
    user namespaces, and bubblewrap keeps the one it was started with: the caller's (an
    ssh passphrase, a Kerberos ticket) would be the workload's to read and write."""
    machine = os.uname().machine  # not platform's: a warm run would import it for this
    number = _SYS_KEYCTL.get(machine)
    if number is None:
        raise NetfenceError(f"cannot give the workload a keyring of its own on {machine} "
                            "(keyctl's system call is unknown here)")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(number, _KEYCTL_JOIN_SESSION_KEYRING, None) < 0:
        err = ctypes.get_errno()
        raise NetfenceError(f"cannot give the workload a keyring of its own: "
                            f"{os.strerror(err)}")
