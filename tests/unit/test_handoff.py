"""The run's side of a warm start (netfence/handoff.py): what it hands a starter and how it
ends as the starter's worker says. The starter here is a thread of the test speaking the
protocol; the run is a real Python process (it exits or execs)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from netfence import handoff

RUN_TIMEOUT = 20


@pytest.mark.parametrize(("argv", "env", "want"), [
    (["run", "--gateway", "--", "true"], {}, True),
    (["run", "--name", "x", "--", "true"], {"NETFENCE_GATEWAY": "1"}, True),
    (["run", "--name", "x", "--", "true"], {}, False),
    (["run", "--gateway", "--detach", "--", "true"], {}, False),
    # After `--`, the workload's own arguments: not netfence's.
    (["run", "--", "prog", "--gateway"], {}, False),
    (["run", "--gateway", "--", "prog", "--detach"], {}, True),
    (["ps", "--gateway"], {}, False),
    ([], {"NETFENCE_GATEWAY": "1"}, False),
])
def test_only_a_root_run_that_asks_for_the_gateway_is_handed_over(
        monkeypatch: pytest.MonkeyPatch, argv: list[str], env: dict[str, str],
        want: bool) -> None:
    monkeypatch.delenv("NETFENCE_GATEWAY", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert handoff.wanted(argv) is want
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert handoff.wanted(argv) is False


def test_messages_carry_descriptors_and_the_end_is_none(tmp_path: Path) -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with left, right:
        file = tmp_path / "f"
        file.write_text("passed")
        fd = os.open(file, os.O_RDONLY)
        handoff.send(left, {"a": [1, "x"]}, [fd])
        os.close(fd)
        got = handoff.receive(right)
        assert got is not None
        message, fds = got
        assert message == {"a": [1, "x"]}
        assert len(fds) == 1 and os.read(fds[0], 100) == b"passed"
        os.close(fds[0])
        left.close()
        assert handoff.receive(right) is None


def test_a_message_keeps_what_the_environment_may_hold() -> None:
    # Undecodable bytes in a variable (os.environ holds them as lone surrogates) and
    # every kind of value a message has come back as they went.
    message = {"env": {"A": "caf\udce9", "B": ""}, "argv": ["run", "--", "\u00e9"],
               "umask": 0o22, "fallback": True, "keep": [10, 11]}
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with left, right:
        handoff.send(left, message)
        assert handoff.receive(right) == (message, [])


def test_a_message_that_is_not_an_object_is_refused() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with left, right:
        left.send(b"[1, 2]")
        with pytest.raises(ValueError, match="not an object"):
            handoff.receive(right)


def test_inherit_only_marks_exactly_the_kept_descriptors() -> None:
    a, b = os.pipe()  # both close-on-exec (PEP 446)
    c = os.dup(a)
    os.set_inheritable(c, True)
    try:
        changed = handoff.inherit_only([b])
        assert os.get_inheritable(b) and not os.get_inheritable(c)
        assert not os.get_inheritable(a)
        assert (b, False) in changed and (c, True) in changed
    finally:
        for fd in (a, b, c):
            os.close(fd)


def test_without_a_starter_the_run_goes_on_here(tmp_path: Path) -> None:
    # Nothing listens at the socket: ask_starter returns, and the run goes on (prints).
    done = _run_warm(tmp_path, "print('went on')")
    assert done.returncode == 0 and done.stdout == "went on\n"


# -- with a starter: a thread of the test --------------------------------------------------


Answer = Callable[[socket.socket, dict[str, Any], list[int]], None]


@pytest.fixture
def starter(tmp_path: Path) -> Iterator[Callable[[Answer], list[dict[str, Any]]]]:
    """Serves one run at the state root tmp_path with `answer`; the requests it got."""
    directory = tmp_path / handoff.GATEWAY_DIR_NAME
    directory.mkdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(str(directory / handoff.STARTER_SOCKET))
    listener.listen(1)
    listener.settimeout(RUN_TIMEOUT)
    requests: list[dict[str, Any]] = []
    threads: list[threading.Thread] = []

    def serve(answer: Answer) -> list[dict[str, Any]]:
        def one() -> None:
            conn, _ = listener.accept()
            with conn:
                got = handoff.receive(conn)
                if got is None:
                    requests.append({})
                    return
                request, fds = got
                requests.append({**request, "fds": len(fds)})
                answer(conn, request, fds)
                for fd in fds:
                    os.close(fd)

        thread = threading.Thread(target=one, daemon=True)
        thread.start()
        threads.append(thread)
        return requests

    yield serve
    for thread in threads:
        if thread.is_alive():  # no run came: a connection that says nothing ends it
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as nobody:
                nobody.connect(str(directory / handoff.STARTER_SOCKET))
    for thread in threads:
        thread.join(RUN_TIMEOUT)
    listener.close()


def _run_warm(root: Path, after: str = "", argv: tuple[str, ...] = ("run", "--", "x"),
              **kwargs: Any) -> subprocess.CompletedProcess[str]:
    script = (f"from netfence.handoff import ask_starter\n"
              f"ask_starter({list(argv)!r}, {str(root)!r})\n{after}")
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT, **kwargs)


def test_the_run_sends_its_arguments_environment_and_streams_and_exits_as_told(
        tmp_path: Path, starter: Callable[[Answer], list[dict[str, Any]]]) -> None:
    def answer(conn: socket.socket, _request: dict[str, Any], fds: list[int]) -> None:
        os.write(fds[1], b"from the worker\n")  # the run's stderr
        handoff.send(conn, {"worker": os.getpid()})
        handoff.send(conn, {"exit": 7})

    requests = starter(answer)
    done = _run_warm(tmp_path, "print('not reached')", env={**os.environ, "MARK": "m1"},
                     cwd=tmp_path)
    assert done.returncode == 7, done.stderr
    assert done.stdout == "" and done.stderr == "from the worker\n"
    (request,) = requests
    assert request["argv"] == ["run", "--", "x"] and request["env"]["MARK"] == "m1"
    assert request["cwd"] == str(tmp_path) and request["root"] == str(tmp_path)
    assert request["fds"] == 2  # stdout and stderr, never stdin


def test_a_fallback_lets_the_run_go_on_here(
        tmp_path: Path, starter: Callable[[Answer], list[dict[str, Any]]]) -> None:
    starter(lambda conn, _r, _f: handoff.send(conn, {"fallback": True}))
    done = _run_warm(tmp_path, "print('went on')")
    assert done.returncode == 0 and done.stdout == "went on\n"


def test_a_starter_that_closes_before_a_worker_came_lets_the_run_go_on(
        tmp_path: Path, starter: Callable[[Answer], list[dict[str, Any]]]) -> None:
    starter(lambda _c, _r, _f: None)
    done = _run_warm(tmp_path, "print('went on')")
    assert done.returncode == 0 and done.stdout == "went on\n"


def test_a_worker_that_ends_without_an_answer_is_one_line_and_status_1(
        tmp_path: Path, starter: Callable[[Answer], list[dict[str, Any]]]) -> None:
    starter(lambda conn, _r, _f: handoff.send(conn, {"worker": os.getpid()}))
    done = _run_warm(tmp_path, "print('not reached')")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "without an answer" in done.stderr


def test_the_run_execs_with_the_workers_descriptors_at_their_numbers_and_no_other(
        tmp_path: Path, starter: Callable[[Answer], list[dict[str, Any]]]) -> None:
    files = []
    for index in range(2):
        path = tmp_path / f"given{index}"
        path.write_text(f"content {index}\n")
        files.append(path)
    # Numbers the run's own descriptors may hold: the run moves them out of the way.
    keep = [4, 3]
    script = "cat <&4; cat <&3; ls /proc/self/fd"

    def answer(conn: socket.socket, _request: dict[str, Any], _fds: list[int]) -> None:
        handoff.send(conn, {"worker": os.getpid()})
        fds = [os.open(p, os.O_RDONLY) for p in files]
        handoff.send(conn, {"exec": ["/bin/sh", "-c", script], "env": {"PATH": "/usr/bin:/bin"},
                            "keep": keep}, fds)
        for fd in fds:
            os.close(fd)

    starter(answer)
    stray = os.open(files[0], os.O_RDONLY)  # an inheritable descriptor of the run's parent
    try:
        done = _run_warm(tmp_path, "print('not reached')", pass_fds=(stray,))
    finally:
        os.close(stray)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["content 0", "content 1"]
    # 0-2, the two kept, and ls's own listing descriptor: the stray one is not inherited.
    assert sorted(int(n) for n in lines[2:]) == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("before_the_worker", [False, True])
def test_a_stop_signal_goes_to_the_worker_which_decides_the_end(
        tmp_path: Path, starter: Callable[[Answer], list[dict[str, Any]]],
        before_the_worker: bool) -> None:
    worker = subprocess.Popen(["sleep", "30"])  # stands for the worker: the signal's target
    signalled = threading.Event()

    def answer(conn: socket.socket, _request: dict[str, Any], _fds: list[int]) -> None:
        if before_the_worker:  # the run holds the signal until it knows the worker
            signalled.wait(RUN_TIMEOUT)
        handoff.send(conn, {"worker": worker.pid})
        worker.wait(RUN_TIMEOUT)
        handoff.send(conn, {"exit": 99})

    try:
        requests = starter(answer)
        run = subprocess.Popen([sys.executable, "-c", "from netfence.handoff import *\n"
                                f"ask_starter(['run'], {str(tmp_path)!r})"])
        deadline = time.monotonic() + RUN_TIMEOUT
        while not requests and time.monotonic() < deadline:  # its handlers are set by then
            time.sleep(0.01)
        run.send_signal(signal.SIGTERM)
        signalled.set()
        assert run.wait(RUN_TIMEOUT) == 99
        assert worker.wait(RUN_TIMEOUT) == -signal.SIGTERM
    finally:
        worker.kill()
        worker.wait()


@pytest.mark.parametrize("broken", ["os.close(1)", "os.chdir(d); os.rmdir(d)"])
def test_a_run_that_cannot_be_handed_over_goes_on_here(
        tmp_path: Path, starter: Callable[[Answer], list[dict[str, Any]]], broken: str) -> None:
    requests = starter(lambda conn, _r, _f: handoff.send(conn, {"exit": 3}))
    gone = tmp_path / "gone"
    gone.mkdir()
    script = (f"import os, sys\nd = {str(gone)!r}\n{broken}\n"
              f"from netfence.handoff import ask_starter\n"
              f"ask_starter(['run'], {str(tmp_path)!r})\nsys.stderr.write('went on')")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT)
    assert done.returncode == 0 and done.stderr == "went on", done.stderr
    # A closed stdout: it does not even connect; a lost working directory: it sends nothing.
    assert requests in ([], [{}])


def test_a_forwarder_that_cannot_be_executed_is_one_line_and_status_1(
        tmp_path: Path, starter: Callable[[Answer], list[dict[str, Any]]]) -> None:
    given = tmp_path / "given"
    given.write_text("x")

    def answer(conn: socket.socket, _request: dict[str, Any], _fds: list[int]) -> None:
        handoff.send(conn, {"worker": os.getpid()})
        fd = os.open(given, os.O_RDONLY)
        handoff.send(conn, {"exec": [str(tmp_path / "missing")], "env": {}, "keep": [10]}, [fd])
        os.close(fd)

    starter(answer)
    done = _run_warm(tmp_path, "print('not reached')")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert "cannot start the workload's forwarder" in done.stderr, done.stderr


# A worker's whole run up to its hand-over, after the starter's warm-up, in a process of
# its own: the daemon answers as it would, the exec prints what the run imported.
WORKER_RUN = """
import os, sys
from netfence.cli import main as cli
cli._warm_up()
before = set(sys.modules)
from netfence.runtimes.gateway import client
from netfence.runtimes.namespace import forwarder
client.unsupported = lambda spec: None  # root or not: the gateway's path
client.ask = lambda request, placed=None: {"env": {}, "netns": "/run/netns/nf-none", "url": None}

def exec_into(argv, info, keep):
    print(" ".join(sorted(set(sys.modules) - before)))
    sys.stdout.flush()
    os._exit(0)

forwarder.exec_into = exec_into
sys.argv = ["netfence", "run", "--gateway", "--name", "nf-warm-up", "--", "true"]
cli.main("netfence")
"""


def test_a_warm_run_imports_nothing_the_starter_did_not(tmp_path: Path) -> None:
    state = tmp_path / "state"
    done = subprocess.run([sys.executable, "-c", WORKER_RUN], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "NETFENCE_STATE_DIR": str(state)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [], "imported at each warm start: " + done.stdout
