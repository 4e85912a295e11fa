"""A running Envoy takes a new policy from its files (`netfence update`): the real binary,
its listener and route files replaced while it runs and connections are open through it.

New connections follow the new policy at once; established ones to destinations it still
allows stay up (a CONNECT tunnel, HTTP keep-alive, transparent TLS by its SNI); a
transparent TLS connection to a dropped name ends when its chain's drain does (a short
--drain-time-s, so that a drained connection closes within the test). Everything on
loopback: a stub DNS answering 127.0.0.1, an echo server and an HTTP server; the
transparent listener is reached as a relay reaches it (a PROXY v2 header first).
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import socket
import socketserver
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from netfence.backends.base import Endpoint, ProxySetup, write_file, write_setup
from netfence.backends.envoy import EnvoyProxy
from netfence.policy import Policy
from netfence.profile import parse_host_pattern
from tests.integration.test_envoy_validate import (
    LOOPBACK,
    StubDns,
    _Upstream,
    free_port,
    make_placement,
    read_head,
    read_response,
)
from tests.integration.test_proxy_protocol import proxy_v2_header
from tests.support.processes import stop

pytestmark = pytest.mark.integration

DRAIN_S = 2
# Bounded waits: settling takes tens of milliseconds here.
SETTLE_S = 10.0


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with contextlib.suppress(OSError):
            while data := self.request.recv(65536):
                self.request.sendall(data)


class _Servers:
    """An echo server and an HTTP server on loopback, and a stub DNS (every name is
    127.0.0.1)."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self.dns = StubDns()
        stack.callback(self.dns.close)
        self.echo = self._serve(stack, socketserver.ThreadingTCPServer((LOOPBACK, 0), _Echo))
        self.http = self._serve(stack, http.server.ThreadingHTTPServer((LOOPBACK, 0), _Upstream))

    @staticmethod
    def _serve(stack: contextlib.ExitStack, server: socketserver.TCPServer) -> int:
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        stack.callback(thread.join, 2)
        stack.callback(server.server_close)
        stack.callback(server.shutdown)
        return int(server.server_address[1])


@pytest.fixture
def servers() -> Iterator[_Servers]:
    with contextlib.ExitStack() as stack:
        yield _Servers(stack)


def _policy(names: list[str], ports: tuple[int, ...]) -> Policy:
    names = [*names, LOOPBACK]  # an allowlisted literal: raw TCP passes to it
    # No denied ranges: loopback stands in for the internet (as test_envoy_validate does).
    return Policy(hosts=tuple(parse_host_pattern(n) for n in names), ports=ports, denied=())


def _echoes(sock: socket.socket, payload: bytes = b"ping") -> bool:
    """Whether the connection still carries bytes both ways (False once it is closed)."""
    try:
        sock.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = sock.recv(len(payload) - len(got))
            if not chunk:
                return False
            got += chunk
        return got == payload
    except OSError:
        return False


def _tunnel(port: int, authority: str) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, port), timeout=5)
    sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    status, _ = read_head(sock)
    assert status == 200, authority
    return sock


def _client_hello(name: str) -> bytes:
    """The first flight of a TLS client naming `name` (the echo server sends it back)."""
    context = ssl.create_default_context()
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname=name)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def _transparent_tls(port: int, name: str, dialed_port: int) -> socket.socket:
    """A TLS connection by SNI as a relay hands it over: the header names the dialed
    address, then the ClientHello; returned once it came back through the echo server."""
    sock = socket.create_connection((LOOPBACK, port), timeout=5)
    sock.sendall(proxy_v2_header(sock.getsockname(), ("192.0.2.80", dialed_port)))
    hello = _client_hello(name)
    assert _echoes(sock, hello), name
    return sock


def _transparent(port: int, dialed: tuple[str, int]) -> socket.socket:
    """A connection as a relay hands it over, its first bytes yet to send."""
    sock = socket.create_connection((LOOPBACK, port), timeout=5)
    sock.sendall(proxy_v2_header(sock.getsockname(), dialed))
    return sock


def _refused(make: Callable[[], socket.socket]) -> bool:
    try:
        make().close()
    except (OSError, AssertionError):
        return True
    return False


def _get(sock: socket.socket, host: str, *, absolute: bool = True) -> int:
    target = f"http://{host}/" if absolute else "/"
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    status, _ = read_response(sock)
    return status


def _update(old: ProxySetup, new: ProxySetup) -> list[str]:
    """What the runtime does: write the files whose content changed; their names."""
    before = {f.path: f.content for f in old.files}
    changed = [f for f in new.files if before.get(f.path) != f.content]
    for spec in changed:
        write_file(spec)
    return [f.path.name for f in changed]


def _wait(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.fixture
def envoy(tmp_path: Path) -> Iterator[Callable[[ProxySetup], None]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(setup: ProxySetup) -> None:
        write_setup(setup, tmp_path / "state")
        (spec,) = setup.processes
        with spec.stdout.open("wb") as out, spec.stderr.open("wb") as err:
            procs.append(subprocess.Popen(spec.argv, stdout=out, stderr=err,
                                          stdin=subprocess.DEVNULL))

    try:
        yield start
    finally:
        stop(*procs)


def test_a_new_policy_applies_while_envoy_runs(
    envoy: Callable[[ProxySetup], None], servers: _Servers, tmp_path: Path
) -> None:
    proxy = EnvoyProxy(drain_time_s=DRAIN_S)
    egress, transparent = free_port(), free_port()
    placement = make_placement(
        tmp_path / "state", egress_port=egress, resolver_port=servers.dns.port,
        transparent=(Endpoint(LOOPBACK, transparent),))
    placement = dataclasses.replace(placement, transparent_proxy_protocol=True)
    ports = (servers.echo, servers.http)
    first = proxy.setup(_policy(["a.test", "b.test"], ports), placement)
    envoy(first)
    assert _wait(lambda: proxy.settled(first), SETTLE_S), "Envoy never applied its files"

    # Open before the update: tunnels to a name kept and to one dropped, transparent TLS
    # to both, HTTP keep-alive connections through the proxy and transparent, and raw TCP
    # to an allowlisted literal (neither TLS nor HTTP: passed to the address dialed).
    kept_tunnel = _tunnel(egress, f"a.test:{servers.echo}")
    dropped_tunnel = _tunnel(egress, f"b.test:{servers.echo}")
    kept_tls = _transparent_tls(transparent, "a.test", servers.echo)
    dropped_tls = _transparent_tls(transparent, "b.test", servers.echo)
    keep_alive = socket.create_connection((LOOPBACK, egress), timeout=5)
    assert _get(keep_alive, f"a.test:{servers.http}") == 200
    assert _get(keep_alive, f"b.test:{servers.http}") == 200
    plain = _transparent(transparent, ("192.0.2.80", servers.http))
    assert _get(plain, f"a.test:{servers.http}", absolute=False) == 200
    raw = _transparent(transparent, (LOOPBACK, servers.echo))
    assert _echoes(raw, b"\x00\x01raw bytes\n")
    assert _refused(lambda: _transparent_tls(transparent, "c.test", servers.echo))

    second = proxy.setup(_policy(["a.test", "c.test"], ports), placement)
    assert not proxy.settled(second)  # not yet written: Envoy reports the old versions
    changed = _update(first, second)
    # The bootstrap stays: no restart; the routes and the listeners change.
    assert "envoy.json" not in changed and "listeners.json" in changed
    assert _wait(lambda: proxy.settled(second), SETTLE_S)

    # New connections: the new policy at once.
    with socket.create_connection((LOOPBACK, egress), timeout=5) as fresh:
        assert _get(fresh, f"c.test:{servers.http}") == 200
    with socket.create_connection((LOOPBACK, egress), timeout=5) as fresh:
        assert _get(fresh, f"b.test:{servers.http}") == 403
    _transparent_tls(transparent, "c.test", servers.echo).close()
    assert _refused(lambda: _transparent_tls(transparent, "b.test", servers.echo))
    # Keep-alive: each request decided anew on the same connection.
    assert _get(keep_alive, f"a.test:{servers.http}") == 200
    assert _get(keep_alive, f"b.test:{servers.http}") == 403
    assert _get(plain, f"b.test:{servers.http}", absolute=False) == 403

    # After the drain: what is still allowed is still up; TLS to the dropped name ended.
    time.sleep(DRAIN_S + 1.5)
    assert _echoes(kept_tunnel) and _echoes(kept_tls) and _echoes(raw)
    assert _get(keep_alive, f"a.test:{servers.http}") == 200
    assert _get(plain, f"a.test:{servers.http}", absolute=False) == 200
    assert not _echoes(dropped_tls)
    # A tunnel is decided once, when it opens (its bytes are not requests): it stays.
    assert _echoes(dropped_tunnel)
    for sock in (kept_tunnel, dropped_tunnel, kept_tls, dropped_tls, keep_alive, plain, raw):
        sock.close()


def test_a_rejected_file_never_settles(
    envoy: Callable[[ProxySetup], None], servers: _Servers, tmp_path: Path
) -> None:
    proxy = EnvoyProxy(drain_time_s=DRAIN_S)
    placement = make_placement(tmp_path / "state", egress_port=free_port(),
                               resolver_port=servers.dns.port)
    first = proxy.setup(_policy(["a.test"], (servers.http,)), placement)
    envoy(first)
    assert _wait(lambda: proxy.settled(first), SETTLE_S)
    second = proxy.setup(_policy(["a.test", "c.test"], (servers.http,)), placement)
    (routes,) = [f for f in second.files if f.path.name == "routes-egress.json"]
    # Envoy refuses a route file whose configuration has another name: it keeps the old.
    write_file(dataclasses.replace(
        routes, content=routes.content.replace('"name":"egress"', '"name":"x"')))
    assert not _wait(lambda: proxy.settled(second), 1.0)
    with socket.create_connection((LOOPBACK, placement.egress_listen.port), timeout=5) as sock:
        assert _get(sock, f"a.test:{servers.http}") == 200
        assert _get(sock, f"c.test:{servers.http}") == 403
    write_file(routes)
    assert _wait(lambda: proxy.settled(second), SETTLE_S)
    with socket.create_connection((LOOPBACK, placement.egress_listen.port), timeout=5) as sock:
        assert _get(sock, f"c.test:{servers.http}") == 200
