"""Starting, waiting for and stopping fence processes, with real processes on loopback."""

from __future__ import annotations

import dataclasses
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from netfence.backends import Endpoint, ProcessSpec
from netfence.errors import NetfenceError
from netfence.runtimes.namespace import processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _spec(tmp_path: Path, code: str, port: int, name: str = "proc") -> ProcessSpec:
    return ProcessSpec(name, (sys.executable, "-c", code), (Endpoint("127.0.0.1", port),),
                       tmp_path / f"{name}.out", tmp_path / f"{name}.err")


LISTEN = """
import signal, socket, sys, time
s = socket.create_server(("127.0.0.1", int(sys.argv[1])))
time.sleep(60)
"""


def test_wait_ready_returns_once_the_process_listens(tmp_path: Path) -> None:
    port = _free_port()
    spec = ProcessSpec("listener", (sys.executable, "-c", LISTEN, str(port)),
                       (Endpoint("127.0.0.1", port),), tmp_path / "o", tmp_path / "e")
    proc = processes.start(spec)
    try:
        processes.wait_ready(spec, proc, timeout=10)
        assert proc.poll() is None
    finally:
        processes.stop_all([(spec, proc)])
    assert proc.returncode is not None


def test_a_process_that_dies_while_starting_is_reported_with_its_output(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "import sys; print('bad config line 3', file=sys.stderr); "
                           "sys.exit(4)", _free_port(), name="envoy")
    proc = processes.start(spec)
    with pytest.raises(NetfenceError, match=r"envoy exited with status 4 while starting: "
                                            r"bad config line 3"):
        processes.wait_ready(spec, proc, timeout=10)


def test_a_process_that_never_listens_times_out_naming_the_endpoint(tmp_path: Path) -> None:
    port = _free_port()
    spec = _spec(tmp_path, "import time; time.sleep(30)", port, name="squid")
    proc = processes.start(spec)
    try:
        with pytest.raises(NetfenceError,
                           match=rf"squid did not start listening on 127.0.0.1:{port} within"):
            processes.wait_ready(spec, proc, timeout=0.3)
    finally:
        processes.stop_all([(spec, proc)])


def test_wait_ready_gives_up_when_check_raises(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "import time; time.sleep(30)", _free_port())
    proc = processes.start(spec)

    class Stop(Exception):
        pass

    def check() -> None:
        raise Stop

    try:
        with pytest.raises(Stop):
            processes.wait_ready(spec, proc, check, timeout=10)
    finally:
        processes.stop_all([(spec, proc)])


def test_stop_all_kills_what_ignores_its_stop_signal(tmp_path: Path) -> None:
    code = ("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ready', flush=True)\ntime.sleep(60)")
    spec = _spec(tmp_path, code, _free_port())
    proc = processes.start(spec)
    deadline = time.monotonic() + 10
    while b"ready" not in spec.stdout.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.02)
    processes.stop_all([(spec, proc)], grace=0.3)
    assert proc.returncode == -signal.SIGKILL


def test_a_missing_program_is_one_line(tmp_path: Path) -> None:
    spec = ProcessSpec("dnsmasq", ("/nonexistent/dnsmasq",), (), tmp_path / "o", tmp_path / "e")
    with pytest.raises(NetfenceError, match="dnsmasq: /nonexistent/dnsmasq is not installed"):
        processes.start(spec)


SLOW_EXIT = ("import signal, sys, time\n"
             "signal.signal(signal.SIGTERM, lambda *a: (time.sleep(1), sys.exit(0)))\n"
             "print('ready', flush=True)\ntime.sleep(60)")


@pytest.mark.parametrize(("stop_grace", "code"), [(None, 0), (0.2, -signal.SIGKILL)])
def test_a_process_may_declare_when_it_can_be_killed(tmp_path: Path, stop_grace: float | None,
                                                     code: int) -> None:
    # Exits cleanly a second after SIGTERM: waited for, unless it declared that nothing it
    # does after 0.2 s matters.
    spec = dataclasses.replace(_spec(tmp_path, SLOW_EXIT, _free_port()), stop_grace=stop_grace)
    proc = processes.start(spec)
    deadline = time.monotonic() + 10
    while b"ready" not in spec.stdout.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.02)
    processes.stop_all([(spec, proc)])
    assert proc.returncode == code
