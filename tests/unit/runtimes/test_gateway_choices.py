"""What the gateway serves and how it reads a start request: pure decisions, no daemon."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from netfence.errors import NetfenceError
from netfence.profile.model import Profile
from netfence.runtimes.base import WorkloadSpec
from netfence.runtimes.gateway import client, daemon
from netfence.runtimes.gateway.member import Ingress


def _spec(**changes: object) -> WorkloadSpec:
    base = dict(name="w", command=("true",), profile=Profile(), proxy="envoy")
    return WorkloadSpec(**{**base, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(("changes", "euid", "why"), [
    ({}, 0, None),
    ({"transport": "streamable-http", "target_port": 8000}, 0, None),
    ({}, 1000, "needs root"),
    ({"proxy": "squid"}, 0, "serves Envoy fences only (not --proxy squid)"),
    ({"learn": Path("/tmp/p.yaml")}, 0, "has no learn mode"),
])
def test_what_the_gateway_serves(monkeypatch: pytest.MonkeyPatch, changes: dict[str, object],
                                 euid: int, why: str | None) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    assert client.unsupported(_spec(**changes)) == why


def test_an_http_workload_gets_an_ingress_and_its_url() -> None:
    asked = {"transport": "sse", "target_port": 8000, "port": 9000}
    assert daemon._ingress(asked) == Ingress(8000, 9000)
    assert daemon._url("sse", 9000) == "http://127.0.0.1:9000/sse"
    assert daemon._url("streamable-http", 9000) == "http://127.0.0.1:9000/mcp"
    assert daemon._ingress({"transport": "stdio", "target_port": 8000}) is None
    chosen = daemon._ingress({"transport": "sse", "target_port": 8000})
    assert chosen is not None and chosen.port > 0  # a free one when none is asked for


def test_a_workload_past_the_hosts_inotify_instances_is_refused(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    limit = tmp_path / "max_user_instances"
    monkeypatch.setattr(daemon, "INOTIFY_SYSCTL", limit)
    gateway = daemon.Gateway(tmp_path, idle_exit=None)
    limit.write_text("1024\n")
    gateway._check_room()  # room for many
    limit.write_text("40\n")
    with pytest.raises(NetfenceError, match=r"fs\.inotify\.max_user_instances"):
        gateway._check_room()
    limit.unlink()  # unreadable: the kernel's default, 128
    assert daemon._inotify_limit() == 128


def test_descriptors_for_the_sandbox_move_above_nine() -> None:
    read_fd, write_fd = os.pipe()
    try:
        moved = client._high(read_fd)
        assert moved >= 10
        os.write(write_fd, b"x")
        assert os.read(moved, 1) == b"x"  # the same pipe
        with pytest.raises(OSError):
            os.fstat(read_fd)  # the low one is closed
    finally:
        os.close(write_fd)
        os.close(moved)


def _daemon_says(monkeypatch: pytest.MonkeyPatch, *answers: object) -> list[str]:
    """client.ask against a daemon that gives `answers` in turn (a reply, or an error to
    raise); the calls it made, in order."""
    calls: list[str] = []
    pending = list(answers)

    def ask(*_args: object, **_kwargs: object) -> dict[str, object]:
        calls.append("ask")
        answer = pending.pop(0)
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, dict)
        return answer

    monkeypatch.setattr(client.control, "ask", ask)
    monkeypatch.setattr(client, "ensure_daemon", lambda _directory: calls.append("start"))
    return calls


def test_a_running_daemon_is_asked_at_once_and_one_that_is_not_is_started(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _daemon_says(monkeypatch, {"netns": "n"})
    assert client.ask({"op": "add"}) == {"netns": "n"}
    assert calls == ["ask"]  # warm: one connection
    none = NetfenceError("the netfence gateway takes no requests (still starting)")
    calls = _daemon_says(monkeypatch, none, {"retry": True}, {"netns": "n"})
    assert client.ask({"op": "add"}) == {"netns": "n"}
    assert calls == ["ask", "start", "ask", "start", "ask"]
    calls = _daemon_says(monkeypatch, none, none, {"retry": True}, {"retry": True})
    with pytest.raises(NetfenceError, match="keeps exiting"):
        client.ask({"op": "add"})
    assert calls.count("ask") == 4


def test_an_error_of_the_daemon_is_not_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _daemon_says(monkeypatch, NetfenceError("w: its namespace is gone"))
    with pytest.raises(NetfenceError, match="namespace is gone"):
        client.ask({"op": "add"})
    assert calls == ["ask"]
