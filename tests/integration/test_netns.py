"""runtimes/netns.py against the kernel: a namespace made with loopback up (an ioctl, not
`ip`) and removed as `ip netns delete` would (no file, no mount left); the host's
addresses read from netlink as `ip` lists them. Root only."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from netfence.errors import NetfenceError
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


def test_a_rename_keeps_the_namespace_under_the_new_name_only() -> None:
    new = f"{NAME}-b"
    for each in (NAME, new):
        netns.remove(each)
    path = netns.create(NAME)
    try:
        before = path.stat().st_ino  # the namespace's own inode (nsfs), not the file's
        moved = netns.rename(NAME, new)
        assert moved == netns.netns_path(new) and moved.stat().st_ino == before
        assert not path.exists() and not _mounted(path) and _mounted(moved)
        # A name that is taken is not taken over.
        netns.create(NAME)
        with pytest.raises(NetfenceError, match=f"cannot name a network namespace {new}"):
            netns.rename(NAME, new)
        assert moved.stat().st_ino == before and path.exists()
    finally:
        for each in (NAME, new):
            netns.remove(each)
    assert not path.exists() and not netns.netns_path(new).exists()


def _ip_locals(*netns: str) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    links = json.loads(subprocess.run(["ip", *netns, "-json", "address", "show"],
                                      capture_output=True, text=True, check=True).stdout)
    return {ipaddress.ip_address(info["local"].split("%")[0])
            for link in links for info in link.get("addr_info", ()) if info.get("local")}


def test_host_addresses_are_what_ip_lists_as_local() -> None:
    # Secondary and point-to-point addresses (whose IFA_ADDRESS is the peer), both
    # families, on a veth pair with both ends in a namespace of the test's own: no traffic.
    netns.remove(NAME)
    path = netns.create(NAME)
    try:
        for line in ("link add d0 type veth peer name d1", "link set d0 up",
                     "address add 192.0.2.5/24 dev d0", "address add 192.0.2.6/24 dev d0",
                     "address add 198.51.100.1 peer 198.51.100.2 dev d0",
                     "address add 2001:db8::5/64 dev d0 nodad",
                     "address add 2001:db8:1::1 peer 2001:db8:1::2 dev d0 nodad"):
            subprocess.run(["ip", "-n", NAME, *line.split()], check=True)
        with netns.entered(path):
            found = netns.host_addresses()
        expected = _ip_locals("-n", NAME)
        assert set(found) == expected and len(found) == len(expected)
        assert ipaddress.ip_address("198.51.100.1") in expected
        assert ipaddress.ip_address("198.51.100.2") not in expected  # the peer
    finally:
        netns.remove(NAME)
    assert set(netns.host_addresses()) == _ip_locals()  # the host's own
