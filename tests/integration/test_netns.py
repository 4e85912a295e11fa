"""runtimes/netns.py against the kernel: a namespace made with loopback up (an ioctl, not
`ip`) and removed as `ip netns delete` would (no file, no mount left). Root only."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from netfence.runtimes import netns

NAME = "netfence-nf-netns-test"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


def _mounted(path: Path) -> bool:
    return any(line.split()[4] == str(path)
               for line in Path("/proc/self/mountinfo").read_text().splitlines())


def test_a_namespace_has_only_loopback_up_and_is_removed_whole() -> None:
    netns.remove(NAME)  # a previous run's, killed
    path = netns.create(NAME)
    try:
        assert path == netns.netns_path(NAME) and _mounted(path)
        shown = subprocess.run(["ip", "-n", NAME, "-o", "link", "show"], capture_output=True,
                               text=True, check=True).stdout.splitlines()
        assert len(shown) == 1 and ": lo: <LOOPBACK,UP,LOWER_UP>" in shown[0], shown
        # Loopback carries traffic there, for both families the host has.
        families = [("127.0.0.1", socket.AF_INET)]
        if netns.HAS_IPV6:
            families.append(("::1", socket.AF_INET6))
        for host, _family in families:
            server = netns.open_socket(host, socket.SOCK_STREAM, path)
            with server:
                server.bind((host, 0))
                server.listen()
                assert netns.accepts(netns.Endpoint(host, server.getsockname()[1]), path)
    finally:
        netns.remove(NAME)
    assert not path.exists() and not _mounted(path)
    assert NAME not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                      check=True).stdout
    netns.remove(NAME)  # nothing left: a no-op
