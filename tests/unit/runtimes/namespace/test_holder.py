"""The rootless fence's namespace holder: a real one (root may make it too), and the one
line said for each way the kernel refuses it."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from netfence.runtimes.namespace import holder
from netfence.runtimes.namespace.holder import Holder

LOOPBACK = "127.0.0.1"


@pytest.fixture
def made() -> Iterator[Holder]:
    h = Holder()
    yield h
    h.close()


def test_sockets_from_the_holder_live_in_its_network_namespace(made: Holder) -> None:
    assert made.netns.resolve() != Path("/proc/self/ns/net").resolve()
    with socket.create_server((LOOPBACK, 0)) as host_side:
        port = host_side.getsockname()[1]
        with made.open_socket(LOOPBACK, socket.SOCK_STREAM, made.netns) as inside:
            inside.bind((LOOPBACK, port))  # the same port is free there
            inside.listen()
        with made.open_socket(LOOPBACK, socket.SOCK_STREAM, made.netns) as inside:
            inside.settimeout(5)
            with pytest.raises(ConnectionRefusedError):  # the host's listener is not there
                inside.connect((LOOPBACK, port))
    # Without a namespace named: a socket of the caller's own.
    with made.open_socket("::1", socket.SOCK_DGRAM, None) as here:
        assert here.family == socket.AF_INET6


def test_the_holder_maps_the_caller_to_root_and_ends_with_close() -> None:
    made = Holder()
    pid = made.pid
    try:
        assert Path(f"/proc/{pid}/uid_map").read_text().split() == ["0", str(os.getuid()), "1"]
        assert Path(f"/proc/{pid}/setgroups").read_text().strip() == "deny"
    finally:
        made.close()
    assert not Path(f"/proc/{pid}").exists()


@pytest.mark.parametrize(("sysctls", "detail", "says"), [
    ({"kernel.unprivileged_userns_clone": "0"}, "unshare: EPERM",
     "kernel.unprivileged_userns_clone=0"),
    ({}, "unshare: ENOSPC", "user.max_user_namespaces"),
    ({"kernel.apparmor_restrict_unprivileged_userns": "1"}, "loopback up: EPERM", "AppArmor"),
    ({"kernel.apparmor_restrict_unprivileged_userns": "1"}, "id map: EPERM", "AppArmor"),
    ({}, "unshare: EPERM", "seccomp"),
    ({}, "unshare: EINVAL", "(unshare: EINVAL)"),
])
def test_each_refusal_is_one_line_naming_its_cause(
        monkeypatch: pytest.MonkeyPatch, sysctls: dict[str, str], detail: str,
        says: str) -> None:
    monkeypatch.setattr(holder, "_sysctl", sysctls.get)
    error = holder.unavailable(detail)
    assert says in str(error)
    assert "\n" not in str(error)
    assert error.exit_code == 2
    assert error.remedy is not None and "sudo" in error.remedy
