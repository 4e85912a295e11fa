"""The ingress relay: from the host's loopback into the workload's namespace, where its
server listens and no Envoy cluster can dial (the fence's other relays are Envoy
listeners, backends/relay.py).

The relays run on one asyncio loop in one thread of the supervisor. Each listening socket
is created up front, in its namespace; upstream sockets are created per connection in the
namespace of the target.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any

from netfence.backends import Endpoint
from netfence.runtimes.netns import open_socket

_CHUNK = 65536


class Relays:
    """TCP forwarders: sockets bound at once, served by one thread from start()."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
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

    def _listen(self, at: Endpoint) -> socket.socket:
        sock = open_socket(at.host, socket.SOCK_STREAM, at.netns)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((at.host, at.port))
        sock.listen(128)
        sock.setblocking(False)
        self._sockets.append(sock)
        return sock

    def tcp(self, listen: Endpoint, target: Endpoint) -> Endpoint:
        """Forward TCP from `listen` to `target`; returns the bound address."""
        sock = self._listen(listen)
        self._servers.append(self._serve_tcp(sock, target))
        return Endpoint(listen.host, sock.getsockname()[1], listen.netns)

    async def _serve_tcp(self, sock: socket.socket, target: Endpoint) -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up = open_socket(target.host, socket.SOCK_STREAM, target.netns)
            up.setblocking(False)
            try:
                await asyncio.wait_for(
                    self._loop.sock_connect(up, (target.host, target.port)), 10
                )
            except (OSError, TimeoutError):
                up.close()
                writer.close()
                return
            up_reader, up_writer = await asyncio.open_connection(sock=up)
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()
                writer.close()

        server = await asyncio.start_server(handle, sock=sock)
        async with server:
            await server.serve_forever()

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
