"""The namespace runtime's L4 relays, on the host's loopback (no namespace needed: a relay
end without a netns lives where the supervisor does)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from netfence.backends import Endpoint
from netfence.runtimes.namespace.relay import Relays

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


def test_tcp_relay_to_nothing_closes_the_client(relays: Relays) -> None:
    with socket.socket() as unused:
        unused.bind((LOOPBACK, 0))
        dead = unused.getsockname()[1]  # bound, never listening: connections are refused
        at = relays.tcp(Endpoint(LOOPBACK, 0), Endpoint(LOOPBACK, dead))
        relays.start()
        with socket.create_connection((LOOPBACK, at.port), timeout=10) as client:
            assert client.recv(1) == b""


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
