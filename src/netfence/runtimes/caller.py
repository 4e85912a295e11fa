"""Paths on the command line are opened with the permissions of the user who ran sudo.

netfence runs as root, but a profile it reads and a learned profile it writes are the
caller's files. Opened as root, `sudo netfence run --learn /etc/shadow` would overwrite a
system file and `--profile /etc/shadow` would echo its first line in the error: a sudoers
rule for netfence would be a way to root.
"""

from __future__ import annotations

import contextlib
import os
import pwd
from collections.abc import Iterator


def sudo_caller() -> tuple[int, int] | None:
    """The uid and gid of the user who ran sudo, when that user is not root."""
    uid, gid = os.environ.get("SUDO_UID", ""), os.environ.get("SUDO_GID", "")
    if not (uid.isdigit() and gid.isdigit()) or int(uid) == 0 or os.geteuid() != 0:
        return None
    return int(uid), int(gid)


@contextlib.contextmanager
def caller_permissions() -> Iterator[None]:
    """File access inside the block is the sudo caller's (effective ids and groups);
    outside sudo, nothing changes. Single-threaded use only: the ids are per process."""
    caller = sudo_caller()
    if caller is None:
        yield
        return
    uid, gid = caller
    try:
        groups = os.getgrouplist(pwd.getpwuid(uid).pw_name, gid)
    except KeyError:  # a uid with no passwd entry: its primary group only
        groups = [gid]
    saved = os.getgroups()
    os.setgroups(groups)
    os.setegid(gid)
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(saved)
