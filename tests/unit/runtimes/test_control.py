"""The control socket between `netfence update` and a workload's supervisor."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from netfence.errors import NetfenceError, UsageError
from netfence.runtimes import control
from netfence.runtimes.control import ControlServer, Message


def test_a_request_gets_its_reply(tmp_path: Path) -> None:
    seen: list[Message] = []

    def handle(request: Message) -> Message:
        seen.append(request)
        return {"added": ["host a.test"]}

    server = ControlServer(tmp_path, handle)
    try:
        assert stat.S_IMODE(os.stat(tmp_path / control.SOCKET_NAME).st_mode) == 0o600
        assert control.ask(tmp_path, "w", {"op": "update", "n": 1}) == {"added": ["host a.test"]}
        assert control.ask(tmp_path, "w", {"op": "update", "n": 2})
    finally:
        server.close()
    assert [r["n"] for r in seen] == [1, 2]
    assert not (tmp_path / control.SOCKET_NAME).exists()  # closing removes it


def test_the_handlers_error_reaches_the_asker_as_one_line(tmp_path: Path) -> None:
    def handle(request: Message) -> Message:
        raise UsageError("bad profile", remedy="fix it")

    server = ControlServer(tmp_path, handle)
    try:
        with pytest.raises(UsageError) as caught:  # the kind too: the exit status
            control.ask(tmp_path, "w", {"op": "update"})
        assert (caught.value.message, caught.value.remedy) == ("bad profile", "fix it")
        # An unexpected failure is reported too, and the server keeps answering.
        def broken(_request: Message) -> Message:
            raise KeyError("missing")

        server.handle = broken
        with pytest.raises(NetfenceError, match="internal error"):
            control.ask(tmp_path, "w", {"op": "update"})
        server.handle = lambda _r: {"ok": True}
        assert control.ask(tmp_path, "w", {}) == {"ok": True}
    finally:
        server.close()


def test_nobody_listening_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(NetfenceError, match="takes no requests"):
        control.ask(tmp_path, "w", {"op": "update"})


def test_a_request_that_is_not_an_object_gets_no_reply(tmp_path: Path) -> None:
    import socket

    server = ControlServer(tmp_path, lambda _r: {"ok": True})
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(tmp_path / control.SOCKET_NAME))
            sock.sendall(b"[1, 2]")
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(100) == b""
        assert control.ask(tmp_path, "w", {}) == {"ok": True}  # and it still serves
    finally:
        server.close()


def test_the_server_names_the_asking_process_whatever_the_request_says(tmp_path: Path) -> None:
    seen: list[Message] = []
    server = ControlServer(tmp_path, lambda r: seen.append(r) or {"ok": True})
    try:
        control.ask(tmp_path, "w", {"op": "add", control.PEER_PID: 1})
    finally:
        server.close()
    assert seen[0][control.PEER_PID] == os.getpid()


def test_a_concurrent_server_answers_a_request_while_another_waits(tmp_path: Path) -> None:
    import threading

    release = threading.Event()

    def handle(request: Message) -> Message:
        if request.get("slow"):
            release.wait(10)
        return {"n": request.get("n")}

    server = ControlServer(tmp_path, handle, name="other.sock", concurrent=True)
    slow: list[Message] = []
    waiter = threading.Thread(target=lambda: slow.append(control.ask(
        tmp_path, "w", {"slow": True, "n": 1}, socket_name="other.sock")))
    try:
        waiter.start()
        # Answered while the first is still held: one request does not block another.
        assert control.ask(tmp_path, "w", {"n": 2}, socket_name="other.sock",
                           timeout=5) == {"n": 2}
        assert slow == []
    finally:
        release.set()
        waiter.join(10)
        server.close()
    assert slow == [{"n": 1}]


def test_what_the_handler_says_ahead_reaches_the_asker_before_the_reply(
        tmp_path: Path) -> None:
    import threading

    heard = threading.Event()
    said: list[Message] = []

    def handle(request: Message) -> Message:
        request[control.PROGRESS]({"step": 1})
        request[control.PROGRESS]({"step": 2})
        heard.wait(10)  # the reply only once the asker has what was said
        return {"done": True}

    def progress(message: Message) -> None:
        said.append(message)
        if len(said) == 2:
            heard.set()

    server = ControlServer(tmp_path, handle)
    try:
        assert control.ask(tmp_path, "w", {}, progress=progress, timeout=5) == {"done": True}
        assert said == [{"step": 1}, {"step": 2}]
        # An asker that listens to none of it gets the reply alike.
        heard.clear()
        threading.Timer(0.1, heard.set).start()
        assert control.ask(tmp_path, "w", {}, timeout=5) == {"done": True}
    finally:
        server.close()
