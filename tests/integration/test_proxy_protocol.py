"""The transparent listener behind a relay (rootless, issue 17): the real Envoy, started
from the generated bootstrap as a plain process, takes each connection's original
destination from the PROXY v2 header the relay writes first, and decides as it does with
SO_ORIGINAL_DST. The listener is on loopback; the names resolve at the simulated internet.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from netfence.backends.base import DecisionRecord, Endpoint, Placement, write_setup
from netfence.backends.envoy import EnvoyProxy
from tests.support.fakenet import FakeNet
from tests.support.policies import allowlist
from tests.support.processes import stop

pytestmark = pytest.mark.integration

LOOPBACK = "127.0.0.1"
# What the relay writes first: the v2 signature, version 2 + PROXY command, the family.
PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
PROXY_V2_COMMAND = 0x21
TCP4, TCP6 = 0x11, 0x21
# Envoy's listener filters give up on a silent connection after this (_transparent).
FILTERS_TIMEOUT = 3.0


def proxy_v2_header(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """The header a relay sends before the client's bytes: the workload's source and the
    destination it dialed (both IPv4 or both IPv6)."""
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    family = TCP4 if src.version == 4 else TCP6
    addresses = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    return (PROXY_V2_SIGNATURE + bytes((PROXY_V2_COMMAND, family))
            + struct.pack("!H", len(addresses)) + addresses)


def test_proxy_v2_header_layout() -> None:
    header = proxy_v2_header(("127.0.0.1", 40000), ("10.203.0.2", 80))
    assert header.hex() == ("0d0a0d0a000d0a515549540a" "21" "11" "000c"
                            "7f000001" "0acb0002" "9c40" "0050")
    header6 = proxy_v2_header(("::1", 40000), ("2001:db8::1", 443))
    assert header6[12:16] == b"\x21\x21\x00\x24" and len(header6) == 16 + 36


def free_ports(count: int) -> list[int]:
    """Ports free on loopback, all different (each held until all are picked)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((LOOPBACK, 0))
        return [int(sock.getsockname()[1]) for sock in socks]


@dataclass
class Fence:
    port: int
    proxy: EnvoyProxy
    log: Path

    def send(self, data: bytes) -> bytes:
        """Connect to the transparent listener, send `data`, and read until the fence
        closes (or 5 s pass)."""
        with socket.create_connection((LOOPBACK, self.port), timeout=5) as sock:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(data)
            got = b""
            with contextlib.suppress(ConnectionResetError, TimeoutError):
                while chunk := sock.recv(65536):
                    got += chunk
            return got

    def records(self, at_least: int) -> list[DecisionRecord]:
        deadline = time.monotonic() + 5
        while True:
            lines = self.log.read_text().splitlines() if self.log.exists() else []
            found = [r for r in map(self.proxy.parse_decision, lines) if r is not None]
            if len(found) >= at_least or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    def lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def fence(fakenet: FakeNet, tmp_path: Path) -> Iterator[Fence]:
    port, egress_port = free_ports(2)
    state = tmp_path / "state"
    placement = Placement(
        state_dir=state,
        egress_listen=Endpoint(LOOPBACK, egress_port),
        workload_proxy=f"{LOOPBACK}:3128",
        # No dnsmasq: the simulated internet's DNS also stands in for the fence's, which
        # Envoy's dial view asks.
        dns_listen=Endpoint(fakenet.dns, 53),
        upstream_resolver=Endpoint(fakenet.dns, 53),
        transparent_listen=(Endpoint(LOOPBACK, port),),
        transparent_proxy_protocol=True,
        unprivileged=True,
    )
    proxy = EnvoyProxy()
    setup = proxy.setup(allowlist(".allowed.test", cidrs=(fakenet.cidr,)), placement)
    write_setup(setup, state)
    (spec,) = setup.processes
    with spec.stdout.open("wb") as out, spec.stderr.open("wb") as err:
        proc = subprocess.Popen(spec.argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    try:
        # Ready when the egress accepts (all listeners start together); a probe of the
        # transparent listener would itself be a connection without a header.
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, spec.stderr.read_text()[-2000:]
            try:
                socket.create_connection((LOOPBACK, placement.egress_listen.port), 0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "envoy did not start"
                time.sleep(0.05)
        yield Fence(port, proxy, setup.decision_logs[0])
    finally:
        stop(proc)


def request(host: str) -> bytes:
    return f"GET /p HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()


WORKLOAD = ("127.0.0.1", 41000)  # the workload's source in its namespace, as the relay saw it


def test_the_header_states_the_destination(fence: Fence, fakenet: FakeNet) -> None:
    to_dns_80 = proxy_v2_header(WORKLOAD, (fakenet.dns, 80))
    got = fence.send(to_dns_80 + request("allowed.test"))
    assert got.startswith(b"HTTP/1.1 200"), got
    assert b"x-fakenet-server: 10.203.0.2:80" in got.lower(), got
    assert b"fakenet ok host=allowed.test" in got, got

    got = fence.send(to_dns_80 + request("other.test"))
    assert got.startswith(b"HTTP/1.1 403"), got
    assert b"not_allowlisted" in got and b"--allow-host other.test" in got, got

    # The port the header states decides: one the policy does not allow.
    got = fence.send(proxy_v2_header(WORKLOAD, (fakenet.dns, 8080)) + request("allowed.test"))
    assert got.startswith(b"HTTP/1.1 403") and b"port_not_allowed" in got, got

    records = fence.records(at_least=3)
    assert sorted((r.host, r.port, r.reason, r.transparent) for r in records) == [
        ("allowed.test", 80, "allowed", True),
        ("allowed.test", 8080, "port_not_allowed", True),
        ("other.test", 80, "not_allowlisted", True),
    ], records
    dialed = {str(line.get("original_dst")) for line in fence.lines()}
    assert {f"{fakenet.dns}:80", f"{fakenet.dns}:8080"} <= dialed, dialed


def test_tls_by_its_sni_through_the_header(fence: Fence, fakenet: FakeNet) -> None:
    context = ssl.create_default_context(cafile=str(fakenet.ca_pem_path))
    with socket.create_connection((LOOPBACK, fence.port), timeout=5) as raw:
        raw.sendall(proxy_v2_header(WORKLOAD, (fakenet.dns, 443)))
        with context.wrap_socket(raw, server_hostname="www.allowed.test") as tls:
            tls.sendall(request("www.allowed.test"))
            got = b""
            while chunk := tls.recv(65536):
                got += chunk
    assert got.startswith(b"HTTP/1.1 200"), got
    assert b"x-fakenet-server: 10.203.0.2:443" in got.lower(), got


def decided_since(fence: Fence, fakenet: FakeNet) -> list[tuple[str, int | None, str]]:
    """The decisions logged so far, once a request sent now is: the log is in time order."""
    fence.send(proxy_v2_header(WORKLOAD, (fakenet.dns, 80)) + request("www.allowed.test"))
    records = fence.records(at_least=1)
    if records and records[-1].host != "www.allowed.test":
        records = fence.records(at_least=len(records) + 1)
    return [(r.host, r.port, r.reason) for r in records]


ALLOWED_NOW = ("www.allowed.test", 80, "allowed")


@pytest.mark.parametrize("first", [
    pytest.param(b"", id="no-header"),
    pytest.param(b"PROXY TCP4 127.0.0.1 10.203.0.2 41000 80\r\n", id="v1-header"),
    pytest.param(b"\x00" * 16, id="garbage"),
])
def test_a_connection_without_a_valid_header_is_closed_at_once(
        fence: Fence, fakenet: FakeNet, first: bytes) -> None:
    started = time.monotonic()
    got = fence.send(first + request("allowed.test"))
    assert got == b"" and time.monotonic() - started < FILTERS_TIMEOUT, got
    # Nothing decided: the header check closed it before any chain.
    assert decided_since(fence, fakenet) == [ALLOWED_NOW]


@pytest.mark.parametrize("first", [
    pytest.param(b"", id="silent"),
    # A header cut short (a relay never sends half of one).
    pytest.param(PROXY_V2_SIGNATURE + b"\x21\x11\x00\x0c\x7f\x00", id="truncated"),
])
def test_a_connection_that_never_completes_a_header_gets_nothing(
        fence: Fence, fakenet: FakeNet, first: bytes) -> None:
    # At the listener filters' timeout the connection goes on uninspected (server-first
    # protocols need that), with the listener's own address as its destination: a
    # loopback address no chain lets through. Refused, and logged so.
    with socket.create_connection((LOOPBACK, fence.port), timeout=10) as sock:
        sock.sendall(first)
        time.sleep(FILTERS_TIMEOUT + 0.5)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request("allowed.test"))
            assert sock.recv(65536) == b""
    assert decided_since(fence, fakenet) == [
        (LOOPBACK, fence.port, "not_allowlisted"), ALLOWED_NOW]
