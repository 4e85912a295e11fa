"""A running workload's control socket: how `netfence update` reaches the process that
holds the fence (the supervisor), which alone knows where everything was placed.

One Unix socket in the workload's 0700 state directory, so only the fence's owner (root,
or the user of a rootless fence) can connect; the peer's credentials are checked as well.
One JSON request per connection, one JSON reply; requests are handled one at a time. A
handler may say something before its reply (PROGRESS): each such message is a line of
its own ahead of the reply.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
import threading
import time
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


# Set by the server in every request it hands on: the asking process, from the socket's
# credentials (SO_PEERCRED), whatever the request said; and a function that sends the
# asker a message ahead of the reply (`ask`'s `progress` gets it).
PEER_PID = "peer_pid"
PROGRESS = "progress"


def _peer(conn: socket.socket) -> tuple[int, int]:
    """The connected process's (pid, uid)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    return int(pid), int(uid)


class ControlServer:
    """Answers requests on the workload's control socket from a thread of its own, until
    closed (closing waits for a request being handled). `concurrent`: each request in a
    thread of its own (the gateway's, whose workloads start side by side)."""

    def __init__(self, state_dir: Path, handle: Handler, *, name: str = SOCKET_NAME,
                 concurrent: bool = False) -> None:
        self.path = state_dir / name
        self.handle = handle
        self.concurrent = concurrent
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.sock.bind(str(self.path))
        os.chmod(self.path, 0o600)
        # Many workloads may start at once (a Unix socket's full backlog refuses).
        self.sock.listen(128 if concurrent else 4)
        self.thread = threading.Thread(target=self._serve, name="netfence-control",
                                       daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            if self.concurrent:
                threading.Thread(target=self._answer_closing, args=(conn,),
                                 name="netfence-request", daemon=True).start()
            else:
                self._answer_closing(conn)

    def _answer_closing(self, conn: socket.socket) -> None:
        with conn:
            self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        try:
            pid, uid = _peer(conn)
            if uid not in (0, os.geteuid()):
                return
            conn.settimeout(10.0)  # for reading the request only
            data = _read_all(conn, MAX_REQUEST)
            if not data:
                return  # a probe: whether anybody answers here
            request = json.loads(data)
            conn.settimeout(None)
            if not isinstance(request, dict):
                raise ValueError("not a JSON object")
            request[PEER_PID] = pid
            request[PROGRESS] = lambda message: conn.sendall(
                json.dumps(message).encode() + b"\n")
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


def _read_reply(sock: socket.socket, progress: Callable[[Message], None]) -> bytes:
    """The reply's bytes, each line ahead of it given to `progress` (a JSON object: a
    message said ahead of the reply; json.dumps writes no line break)."""
    pending = bytearray()
    while chunk := sock.recv(1 << 16):
        pending += chunk
        if len(pending) > MAX_REQUEST:
            break  # not a reply: "gave no answer"
        while (end := pending.find(b"\n")) >= 0:
            try:
                said = json.loads(pending[:end])
            except ValueError:
                said = None
            del pending[:end + 1]
            if isinstance(said, dict):
                progress(said)
    return bytes(pending)


def _connect(sock: socket.socket, path: Path, attempts: int = 100) -> None:
    """Connect, again while the listener's backlog is full (EAGAIN on a Unix socket)."""
    for _ in range(attempts - 1):
        try:
            sock.connect(str(path))
            return
        except BlockingIOError:
            time.sleep(0.02)
    sock.connect(str(path))


def ask(state_dir: Path, name: str, request: Message, *, socket_name: str = SOCKET_NAME,
        timeout: float = REPLY_TIMEOUT,
        progress: Callable[[Message], None] | None = None) -> Message:
    """Send a request to a workload's supervisor and return its reply; one-line errors
    when there is nobody to ask. `progress` gets each message said ahead of the reply, as
    it comes (what it raises ends the asking)."""
    path = state_dir / socket_name
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            _connect(sock, path)
        except PermissionError:
            raise PrivilegeError(f"{name}'s fence is root's", remedy="run it with sudo") from None
        except (FileNotFoundError, ConnectionRefusedError):
            raise NetfenceError(f"{name} takes no requests (still starting, or stopping)",
                                remedy="try again once `netfence ps` lists it") from None
        sock.sendall(json.dumps(request).encode())
        sock.shutdown(socket.SHUT_WR)
        try:
            data = _read_reply(sock, progress or (lambda _message: None))
        except TimeoutError:
            raise NetfenceError(f"{name}'s supervisor did not answer within "
                                f"{timeout:.0f} s") from None
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
