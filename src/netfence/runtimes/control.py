"""A running workload's control socket: how `netfence update` reaches the process that
holds the fence (the supervisor), which alone knows where everything was placed.

One Unix socket in the workload's 0700 state directory, so only the fence's owner (root,
or the user of a rootless fence) can connect; the peer's credentials are checked as well.
One JSON request per connection, one JSON reply; requests are handled one at a time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from netfence.errors import NetfenceError, PrivilegeError, UsageError

log = logging.getLogger("netfence")

SOCKET_NAME = "control.sock"
# A profile of 100,000 names is a few megabytes of JSON.
MAX_REQUEST = 64 * 1024 * 1024
# How long `netfence update` waits for the reply: the proxies reload within seconds.
REPLY_TIMEOUT = 60.0

Message = dict[str, Any]
Handler = Callable[[Message], Message]


def _read_all(conn: socket.socket, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := conn.recv(1 << 16):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise ValueError("request too large")
    return b"".join(chunks)


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


class ControlServer:
    """Answers requests on the workload's control socket from a thread of its own, until
    closed (closing waits for a request being handled)."""

    def __init__(self, state_dir: Path, handle: Handler) -> None:
        self.path = state_dir / SOCKET_NAME
        self.handle = handle
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.sock.bind(str(self.path))
        os.chmod(self.path, 0o600)
        self.sock.listen(4)
        self.thread = threading.Thread(target=self._serve, name="netfence-control",
                                       daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            with conn:
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        try:
            if _peer_uid(conn) not in (0, os.geteuid()):
                return
            conn.settimeout(10.0)  # for reading the request only
            request = json.loads(_read_all(conn, MAX_REQUEST))
            conn.settimeout(None)
            if not isinstance(request, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            log.warning("control socket: bad request (%s)", exc)
            return
        try:
            reply = self.handle(request)
        except NetfenceError as exc:
            reply = {"error": exc.message, "remedy": exc.remedy,
                     "usage": isinstance(exc, UsageError)}  # the asker's exit status
        except Exception as exc:  # the fence keeps running; the asker learns why
            log.exception("control request failed")
            reply = {"error": f"internal error: {exc}"}
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps(reply).encode())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def ask(state_dir: Path, name: str, request: Message) -> Message:
    """Send a request to a workload's supervisor and return its reply; one-line errors
    when there is nobody to ask."""
    path = state_dir / SOCKET_NAME
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(REPLY_TIMEOUT)
        try:
            sock.connect(str(path))
        except PermissionError:
            raise PrivilegeError(f"{name}'s fence is root's", remedy="run it with sudo") from None
        except (FileNotFoundError, ConnectionRefusedError):
            raise NetfenceError(f"{name} takes no requests (still starting, or stopping)",
                                remedy="try again once `netfence ps` lists it") from None
        sock.sendall(json.dumps(request).encode())
        sock.shutdown(socket.SHUT_WR)
        try:
            data = _read_all(sock, MAX_REQUEST)
        except TimeoutError:
            raise NetfenceError(f"{name}'s supervisor did not answer within "
                                f"{REPLY_TIMEOUT:.0f} s") from None
    try:
        reply = json.loads(data)
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        raise NetfenceError(f"{name}'s supervisor gave no answer")
    if "error" in reply:
        kind = UsageError if reply.get("usage") else NetfenceError
        raise kind(str(reply["error"]), remedy=reply.get("remedy"))
    return reply
