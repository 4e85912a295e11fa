"""Relays of Python's, for what no Envoy listener can carry: the ingress (from the host's
loopback into the workload's namespace, where its server listens and no Envoy cluster can
dial) and, in a rootless fence, every listener in the workload's namespace (no proxy can
create a socket there: holder.py), the transparent one stating each connection's original
destination in a PROXY protocol v2 header. As root, the fence's other relays are Envoy
listeners (backends/relay.py).

The relays run on one asyncio loop in one thread of the supervisor. Each listening socket
is created up front, in its namespace; upstream sockets are created per connection in the
namespace of the target. `open_socket` says how a socket is made in a namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from netfence.backends import Endpoint
from netfence.runtimes import netns

log = logging.getLogger("netfence")
_CHUNK = 65536
DNS_TIMEOUT = 5.0
# At most this many relayed connections and DNS queries at once, whatever the limits.
MAX_CONNECTIONS = 4096
_RESERVED_FDS = 128  # the supervisor's own files, pipes and pidfds
RECEIVE_BACKOFF = 0.1  # after a failed receive (descriptors out)
COMPLAINT_INTERVAL = 10.0
# How long a refused connection to a fence process on the host is tried again: longer
# than Squid's reconfigure with 100,000 names (1.8 s), and a dead proxy's restart.
REFUSED_RETRY = 3.0
REFUSED_INTERVAL = 0.02
# getsockopt(SO_ORIGINAL_DST) on an IPv4 (SOL_IP) or IPv6 (IPPROTO_IPV6) socket that
# nftables redirected: a sockaddr_in (16 bytes) or sockaddr_in6 (28).
SO_ORIGINAL_DST = 80
# PROXY protocol version 2: signature, then version 2 with command PROXY, then TCP over
# IPv4 (0x11) or IPv6 (0x21) (haproxy's proxy-protocol.txt, section 2.2).
PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_PROXY_V2_COMMAND = 0x21

SocketOpener = Callable[[str, socket.SocketKind, Path | None], socket.socket]


def proxy_v2_header(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """The PROXY v2 header of a TCP connection from `source` to `destination`."""
    six = ":" in destination[0]
    family = socket.AF_INET6 if six else socket.AF_INET
    body = (socket.inet_pton(family, source[0]) + socket.inet_pton(family, destination[0])
            + struct.pack("!HH", source[1], destination[1]))
    return PROXY_V2_SIGNATURE + bytes((_PROXY_V2_COMMAND, 0x21 if six else 0x11)) + \
        struct.pack("!H", len(body)) + body


def original_destination(sock: socket.socket) -> tuple[str, int]:
    """Where the client of a redirected connection meant to connect."""
    if sock.family == socket.AF_INET6:
        raw = sock.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), struct.unpack("!H", raw[2:4])[0]
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    return socket.inet_ntoa(raw[4:8]), struct.unpack("!H", raw[2:4])[0]


def connection_budget() -> int:
    """How many connections (two descriptors each) the relays may carry at once: the
    soft descriptor limit raised to the hard one, less a reserve for the supervisor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return max(16, min(MAX_CONNECTIONS, (soft - _RESERVED_FDS) // 2))


class Relays:
    """TCP and UDP forwarders: sockets bound at once, served by one thread from start()."""

    def __init__(self, open_socket: SocketOpener = netns.open_socket) -> None:
        self._open = open_socket
        self._active = 0
        self._limit = connection_budget()
        self._complained = -COMPLAINT_INTERVAL
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(self._loop_error)
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="netfence-relays")
        self._sockets: list[socket.socket] = []
        self._servers: list[Coroutine[Any, Any, None]] = []
        self._running: list[Future[None]] = []

    def start(self) -> None:
        self._thread.start()
        for coro in self._servers:
            self._running.append(asyncio.run_coroutine_threadsafe(coro, self._loop))
        self._servers.clear()

    def _listen(self, at: Endpoint, kind: socket.SocketKind) -> socket.socket:
        sock = self._open(at.host, kind, at.netns)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((at.host, at.port))
        if kind == socket.SOCK_STREAM:
            sock.listen(128)
        sock.setblocking(False)
        self._sockets.append(sock)
        return sock

    def tcp(self, listen: Endpoint, target: Endpoint, state_destination: bool = False
            ) -> Endpoint:
        """Forward TCP from `listen` to `target`; returns the bound address. With
        `state_destination`, each connection starts with a PROXY v2 header naming the
        address its client dialed (a connection nftables redirected to `listen`)."""
        sock = self._listen(listen, socket.SOCK_STREAM)
        self._servers.append(self._serve_tcp(sock, target, state_destination))
        return Endpoint(listen.host, sock.getsockname()[1], listen.netns)

    def udp(self, listen: Endpoint, target: Endpoint) -> Endpoint:
        """Forward each datagram to `target` and its answer back (DNS: one answer)."""
        sock = self._listen(listen, socket.SOCK_DGRAM)
        self._servers.append(self._serve_udp(sock, target))
        return Endpoint(listen.host, sock.getsockname()[1], listen.netns)

    def _admit(self) -> bool:
        """One more relayed connection or query, unless the fence's budget is spent:
        the workload must not run the supervisor out of descriptors (its own egress and
        DNS would stop, and every failed accept would be logged)."""
        if self._active >= self._limit:
            self._complain(f"{self._limit} relayed connections at once; refusing more")
            return False
        self._active += 1
        return True

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """asyncio's own complaints (a failed accept when descriptors run out, retried
        many times a second), at most one per COMPLAINT_INTERVAL."""
        self._complain(str(context.get("exception") or context.get("message")))

    def _complain(self, what: str) -> None:
        """A warning at most every COMPLAINT_INTERVAL: a flood must not flood the log."""
        now = time.monotonic()
        if now - self._complained >= COMPLAINT_INTERVAL:
            self._complained = now
            log.warning("relay: %s", what)

    async def _serve_tcp(self, sock: socket.socket, target: Endpoint,
                         state_destination: bool) -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if not self._admit():
                writer.close()
                return
            try:
                await self._carry(reader, writer, target, state_destination)
            finally:
                self._active -= 1

        server = await asyncio.start_server(handle, sock=sock)
        async with server:
            await server.serve_forever()

    async def _carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     target: Endpoint, state_destination: bool) -> None:
        header = b""
        if state_destination:
            client = writer.get_extra_info("socket")
            try:
                destination: tuple[str, int] | None = original_destination(client)
            except OSError:
                destination = None
            # Not redirected (the relay dialed itself): no destination to state.
            if destination is None or destination == client.getsockname()[:2]:
                writer.close()
                return
            header = proxy_v2_header(client.getpeername()[:2], destination)
        up = await self._dial(target)
        if up is None:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(sock=up)
        up_writer.write(header)
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            up_writer.close()
            writer.close()

    async def _dial(self, target: Endpoint) -> socket.socket | None:
        """A connection to the target, or None. A fence process on the host that refuses
        is asked again for a moment: it may be taking a new policy (Squid closes its port
        while it reconfigures) or be started again after it died."""
        deadline = self._loop.time() + (REFUSED_RETRY if target.netns is None else 0)
        while True:
            try:
                up = self._open(target.host, socket.SOCK_STREAM, target.netns)
            except OSError:
                return None
            up.setblocking(False)
            try:
                await asyncio.wait_for(self._loop.sock_connect(up, (target.host, target.port)),
                                       10)
                return up
            except ConnectionRefusedError:
                up.close()
                if self._loop.time() >= deadline:
                    return None
                await asyncio.sleep(REFUSED_INTERVAL)
            except (OSError, TimeoutError):
                up.close()
                return None

    async def _serve_udp(self, sock: socket.socket, target: Endpoint) -> None:
        loop = self._loop

        async def answer(data: bytes, client: Any) -> None:
            try:
                up = self._open(target.host, socket.SOCK_DGRAM, target.netns)
            except OSError:
                self._active -= 1
                return
            up.setblocking(False)
            try:
                await loop.sock_connect(up, (target.host, target.port))
                await loop.sock_sendall(up, data)
                reply = await asyncio.wait_for(loop.sock_recv(up, _CHUNK), DNS_TIMEOUT)
                await loop.sock_sendto(sock, reply, client)
            except (OSError, TimeoutError):
                pass
            finally:
                up.close()
                self._active -= 1

        pending: set[asyncio.Task[None]] = set()  # the loop keeps only weak references
        while True:
            try:
                data, client = await loop.sock_recvfrom(sock, _CHUNK)
            except OSError as exc:
                self._complain(f"receiving: {exc.strerror or exc}")
                await asyncio.sleep(RECEIVE_BACKOFF)
                continue
            if self._admit():  # a query beyond the budget is dropped: the client retries
                task = loop.create_task(answer(data, client))
                pending.add(task)
                task.add_done_callback(pending.discard)

    async def _cancel_all(self) -> None:
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def close(self) -> None:
        for coro in self._servers:
            coro.close()
        if self._thread.is_alive():
            with contextlib.suppress(TimeoutError, RuntimeError):
                asyncio.run_coroutine_threadsafe(self._cancel_all(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        for sock in self._sockets:
            sock.close()
        if not self._thread.is_alive():
            self._loop.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one direction; pass on a half-close so request/response protocols finish."""
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.close()
