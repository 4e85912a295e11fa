"""The simulated internet itself: its servers answer, its DNS logs, its range is fenced off."""

from __future__ import annotations

import socket
import ssl
import subprocess
import urllib.request

import pytest

from tests.support.fakenet import TEST_RANGE, FakeNet
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
