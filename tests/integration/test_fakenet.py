"""The simulated internet itself: its servers answer, its DNS logs, its range is fenced off."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import urllib.request

import pytest

from tests.support.fakenet import NETNS_PREFIX, TEST_RANGE, FakeNet, remove_stale
from tests.support.tinydns import query

pytestmark = pytest.mark.integration


def test_http_and_https_answer_from_the_host(fakenet: FakeNet) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{fakenet.dns}:8080/x", timeout=5) as resp:
        assert resp.read() == f"fakenet ok host={fakenet.dns}:8080 path=/x\n".encode()
    context = ssl.create_default_context(cafile=str(fakenet.ca_pem_path))
    with socket.create_connection((fakenet.dns, 443), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="www.allowed.test") as tls:
        tls.sendall(b"GET /tls HTTP/1.1\r\nHost: www.allowed.test\r\nConnection: close\r\n\r\n")
        reply = tls.makefile("rb").read()  # the server closes after the reply
    assert b"fakenet ok host=www.allowed.test path=/tls" in reply


def test_dns_answers_and_logs(fakenet: FakeNet) -> None:
    fakenet.clear_queries()
    assert query("allowed.test", fakenet.dns, 53) == ("NOERROR", ["10.203.0.2"])
    assert query("nowhere.test", fakenet.dns, 53)[0] == "NXDOMAIN"
    assert ("allowed.test", "A") in fakenet.queries()
    assert ("nowhere.test", "A") in fakenet.queries()


def test_rebinding_name_alternates(fakenet: FakeNet) -> None:
    answers = {tuple(query("rebind.test", fakenet.dns, 53)[1]) for _ in range(2)}
    assert answers == {("10.203.0.2",), ("127.0.0.1",)}


def test_the_test_range_is_unreachable_outside_the_veth(fakenet: FakeNet) -> None:
    routes = subprocess.run(["ip", "route", "show", TEST_RANGE], capture_output=True,
                            text=True, check=True).stdout
    assert routes.startswith("unreachable"), routes
    with pytest.raises(OSError):
        socket.create_connection(("10.203.9.9", 80), timeout=2)


def test_a_killed_runs_leftovers_are_removed_a_live_ones_kept(fakenet: FakeNet) -> None:
    """A simulated internet whose test process is gone is removed before a new one is
    built; one whose process runs makes the new one fail at once, saying why."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    made: list[str] = []
    try:
        for pid in (gone.pid, live.pid):
            netns = f"{NETNS_PREFIX}{pid}"
            subprocess.run(["ip", "netns", "add", netns], check=True, timeout=10)
            made.append(netns)
            subprocess.run(["ip", "link", "add", f"nfth{pid}", "type", "veth", "peer", "name",
                            f"nftn{pid}", "netns", netns], check=True, timeout=10)
        with pytest.raises(RuntimeError, match=f"test process {live.pid}"):
            remove_stale()
        subprocess.run(["ip", "netns", "del", made.pop()], check=True, timeout=10)
        remove_stale()
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                check=True, timeout=10).stdout
        assert f"{NETNS_PREFIX}{gone.pid}" not in listed
        assert fakenet.netns in listed  # this run's own stays
        links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True,
                               check=True, timeout=10).stdout
        assert f"nfth{gone.pid}" not in links
    finally:
        live.kill()
        live.wait(timeout=10)
        for netns in made:
            subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=10)
