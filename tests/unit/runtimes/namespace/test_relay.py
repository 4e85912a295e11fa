"""The namespace runtime's L4 relays, on the host's loopback (no namespace needed: a relay
end without a netns lives where the supervisor does)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from netfence.backends import Endpoint
from netfence.runtimes.namespace import relay
from netfence.runtimes.namespace.relay import Relays, proxy_v2_header

LOOPBACK = "127.0.0.1"


@pytest.fixture
def relays() -> Iterator[Relays]:
    r = Relays()
    yield r
    r.close()


def _echo_server(replies: int = 1) -> tuple[socket.socket, threading.Thread]:
    """A TCP server that reads to EOF, then sends back what it read, upper-cased."""
    server = socket.create_server((LOOPBACK, 0))
    server.settimeout(10)

    def serve() -> None:
        for _ in range(replies):
            conn, _ = server.accept()
            with conn:
                conn.settimeout(10)
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
                conn.sendall(data.upper())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


def test_tcp_relay_carries_both_ways_and_passes_the_half_close(relays: Relays) -> None:
    server, thread = _echo_server()
    with server:
        at = relays.tcp(Endpoint(LOOPBACK, 0), Endpoint(LOOPBACK, server.getsockname()[1]))
        relays.start()
        payload = b"hello " * 50_000  # several reads and writes each way
        with socket.create_connection((LOOPBACK, at.port), timeout=10) as client:
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)  # the server answers only after EOF
            got = b""
            while chunk := client.recv(65536):
                got += chunk
        thread.join(10)
    assert got == payload.upper()


def test_tcp_relay_to_nothing_closes_the_client(relays: Relays,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(relay, "REFUSED_RETRY", 0.2)
    with socket.socket() as unused:
        unused.bind((LOOPBACK, 0))
        dead = unused.getsockname()[1]  # bound, never listening: connections are refused
        at = relays.tcp(Endpoint(LOOPBACK, 0), Endpoint(LOOPBACK, dead))
        relays.start()
        with socket.create_connection((LOOPBACK, at.port), timeout=10) as client:
            assert client.recv(1) == b""


def test_a_refused_connection_is_tried_again_while_the_proxy_comes_back(
        relays: Relays) -> None:
    # Squid closes its port while it takes a new policy; a proxy that died is restarted.
    with socket.socket() as held:
        held.bind((LOOPBACK, 0))
        port = held.getsockname()[1]  # bound, not yet listening: refused
        at = relays.tcp(Endpoint(LOOPBACK, 0), Endpoint(LOOPBACK, port))
        relays.start()
        with socket.create_connection((LOOPBACK, at.port), timeout=10) as client:
            time.sleep(0.3)  # refused meanwhile, a few times
            held.listen(1)
            held.settimeout(10)
            conn, _ = held.accept()
            with conn:
                client.sendall(b"ping")
                assert conn.recv(4) == b"ping"


def test_close_releases_the_listening_ports() -> None:
    relays = Relays()
    at = relays.tcp(Endpoint(LOOPBACK, 0), Endpoint(LOOPBACK, 9))
    relays.start()
    relays.close()
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind((LOOPBACK, at.port))  # free again
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((LOOPBACK, at.port), timeout=5)


def test_close_twice_is_harmless() -> None:
    # The teardown closes the relays before stopping the proxies, and again on its way out.
    relays = Relays()
    relays.tcp(Endpoint(LOOPBACK, 0), Endpoint(LOOPBACK, 9))
    relays.start()
    relays.close()
    relays.close()


def test_udp_relay_carries_a_datagram_and_its_answer(relays: Relays) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind((LOOPBACK, 0))
        server.settimeout(10)
        at = relays.udp(Endpoint(LOOPBACK, 0), Endpoint(LOOPBACK, server.getsockname()[1]))
        relays.start()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(10)
            client.sendto(b"question", (LOOPBACK, at.port))
            data, sender = server.recvfrom(512)
            server.sendto(data.upper(), sender)
            assert client.recvfrom(512) == (b"QUESTION", (LOOPBACK, at.port))


def test_proxy_v2_header_layout() -> None:
    four = proxy_v2_header(("127.0.0.1", 40000), ("10.1.2.3", 443))
    assert four == (b"\r\n\r\n\x00\r\nQUIT\n" + b"\x21\x11" + b"\x00\x0c"
                    + bytes([127, 0, 0, 1, 10, 1, 2, 3]) + (40000).to_bytes(2, "big")
                    + (443).to_bytes(2, "big"))
    six = proxy_v2_header(("::1", 1), ("2001:db8::5", 80))
    assert six[12:16] == b"\x21\x21\x00\x24"  # TCP over IPv6, 36 bytes of addresses
    assert six[16:32] == socket.inet_pton(socket.AF_INET6, "::1")
    assert six[32:48] == socket.inet_pton(socket.AF_INET6, "2001:db8::5")
    assert six[48:] == b"\x00\x01\x00\x50"


@pytest.mark.parametrize("redirected", [True, False])
def test_a_relay_stating_destinations_states_only_a_redirected_one(
        relays: Relays, monkeypatch: pytest.MonkeyPatch, redirected: bool) -> None:
    """A redirected connection reaches the target after a PROXY v2 header naming where
    its client meant to go; one nothing redirected (its original destination is the
    relay's own address) is closed, nothing dialed: the proxy behind must never take the
    relay's address for a destination. (SO_ORIGINAL_DST itself needs nftables: the
    rootless integration tests.)"""
    meant = ("10.1.2.3", 443)

    def original(sock: socket.socket) -> tuple[str, int]:
        return meant if redirected else sock.getsockname()[:2]

    monkeypatch.setattr(relay, "original_destination", original)
    # A bare listener, no thread accepting beside the test: a dial would be seen here.
    with socket.create_server((LOOPBACK, 0)) as server:
        server.settimeout(10 if redirected else 0.5)
        at = relays.tcp(Endpoint(LOOPBACK, 0), Endpoint(LOOPBACK, server.getsockname()[1]),
                        state_destination=True)
        relays.start()
        with socket.create_connection((LOOPBACK, at.port), timeout=10) as client:
            if not redirected:
                assert client.recv(1) == b""
                with pytest.raises(TimeoutError):
                    server.accept()
                return
            source = ("127.0.0.1", client.getsockname()[1])
            client.sendall(b"hello")
            conn, _ = server.accept()
            with conn:
                conn.settimeout(10)
                got = b""
                while len(got) < 28 + 5 and (chunk := conn.recv(100)):
                    got += chunk
    assert got == proxy_v2_header(source, meant) + b"hello"


def test_connections_beyond_the_budget_are_closed_and_said_once(
        relays: Relays, caplog: pytest.LogCaptureFixture) -> None:
    # A workload opening connections without end must not run the supervisor out of
    # descriptors: past the budget each is closed at once, and the log says so once.
    server = socket.create_server((LOOPBACK, 0))
    held: list[socket.socket] = []
    with server:
        relays._limit = 2
        at = relays.tcp(Endpoint(LOOPBACK, 0), Endpoint(LOOPBACK, server.getsockname()[1]))
        relays.start()
        server.settimeout(10)
        for _ in range(2):
            held.append(socket.create_connection((LOOPBACK, at.port), timeout=10))
            held.append(server.accept()[0])  # carried: dialed through
        extra = [socket.create_connection((LOOPBACK, at.port), timeout=10) for _ in range(3)]
        for refused in extra:
            refused.settimeout(10)
            assert refused.recv(1) == b""  # closed, never dialed
            refused.close()
        held.pop(0).close()  # one carried connection ends (both ways): room for another
        held.pop(0).close()
        deadline = time.monotonic() + 10
        while relays._active > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        again = socket.create_connection((LOOPBACK, at.port), timeout=10)
        held += [again, server.accept()[0]]
    for sock in held:
        sock.close()
    complaints = [r for r in caplog.records if "relayed connections at once" in r.message]
    assert len(complaints) == 1
