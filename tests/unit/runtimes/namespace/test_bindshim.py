"""The bind shim (bindshim.c, bindshim.py) in real processes on loopback: a process handed
a listening socket takes it at its bind() of the address given for it, also after closing
it and binding again, and nothing else of its binds changes."""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

import pytest

from netfence.backends import Endpoint, ProcessSpec
from netfence.runtimes.namespace import bindshim, processes

# Binds the given address twice (serving one connection each time, as Squid's reconfigure
# closes its port and binds again), then UDP on the same address, then prints what it saw.
CHILD = r"""
import ctypes, json, socket, sys
at = ("127.0.0.1", int(sys.argv[1]))
seen = {}
for turn in ("first", "again"):
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(at)
    server.listen(8)
    seen[turn] = server.getsockname()[1]
    conn, _ = server.accept()
    conn.sendall(turn.encode())
    conn.close()
    server.close()
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(at)
seen["udp"] = udp.getsockname()[1]
# The C library's environment, which the children of a C program get (Python's os.environ
# is a copy taken at its start).
getenv = ctypes.CDLL(None).getenv
getenv.restype = ctypes.c_char_p
seen["variable"] = getenv(b"NETFENCE_BIND_FDS")
print(json.dumps(seen), flush=True)
"""


@pytest.fixture
def shim() -> Path:
    found = bindshim.library()
    # scripts/install builds it (pip install -e builds the extension in place).
    assert found is not None, "the bind shim was not built: run scripts/install"
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _read(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        return conn.recv(16)


def test_a_handed_socket_is_taken_at_the_bind_of_its_address(shim: Path, tmp_path: Path
                                                             ) -> None:
    handed = bindshim.listen(Endpoint("127.0.0.1", 0))
    port = handed.getsockname()[1]
    marker = Endpoint("127.0.0.1", free_port())
    spec = ProcessSpec("child", (sys.executable, "-c", CHILD, str(marker.port)), (marker,),
                       tmp_path / "out", tmp_path / "err")
    proc = processes.start(spec, {marker: handed})
    try:
        processes.wait_ready(spec, proc, timeout=10, handed={marker})
        deadline = time.monotonic() + 10
        while not bindshim.taken(proc.pid, [handed]) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert bindshim.taken(proc.pid, [handed])
        with pytest.raises(ConnectionRefusedError):  # nothing listens where it bound
            socket.create_connection(("127.0.0.1", marker.port), timeout=10).close()
        assert _read(port) == b"first"
        assert _read(port) == b"again"  # bound again after closing: the same socket
        assert proc.wait(10) == 0, (tmp_path / "err").read_text()
    finally:
        proc.kill()
        proc.wait()
        handed.close()
    seen = json.loads((tmp_path / "out").read_text())
    assert seen == {"first": port, "again": port, "udp": marker.port, "variable": None}


def test_a_process_not_listening_on_the_address_is_not_handed_the_socket(tmp_path: Path
                                                                        ) -> None:
    handed = bindshim.listen(Endpoint("127.0.0.1", 0))
    sleeper = ProcessSpec("other", ("sleep", "30"), (Endpoint("127.0.0.1", free_port()),),
                          tmp_path / "out", tmp_path / "err")
    proc = processes.start(sleeper, {Endpoint("127.0.0.1", free_port()): handed})
    try:
        fds = list(Path(f"/proc/{proc.pid}/fd").iterdir())
        assert not [fd for fd in fds if fd.stat().st_ino == bindshim.inode(handed)]
        assert "NETFENCE_BIND_FDS" not in Path(f"/proc/{proc.pid}/environ").read_text()
    finally:
        proc.kill()
        proc.wait()
        handed.close()


def test_a_held_handed_socket_does_not_keep_a_process_from_being_idle(
        shim: Path, tmp_path: Path) -> None:
    # At a stop, a proxy with no connection left is killed without waiting for its grace
    # (processes.stop_all); the handed socket it keeps to the end must not count.
    handed = bindshim.listen(Endpoint("127.0.0.1", 0))
    marker = Endpoint("127.0.0.1", free_port())
    code = ("import socket, sys, time\ns = socket.socket()\n"
            "s.bind(('127.0.0.1', int(sys.argv[1])))\ns.listen(8)\ntime.sleep(30)\n")
    spec = ProcessSpec("child", (sys.executable, "-c", code, str(marker.port)), (marker,),
                       tmp_path / "out", tmp_path / "err")
    proc = processes.start(spec, {marker: handed})
    try:
        deadline = time.monotonic() + 10
        while not bindshim.taken(proc.pid, [handed]) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert bindshim.taken(proc.pid, [handed])
        time.sleep(0.05)  # asleep in time.sleep
        assert not processes._idle(proc.pid)
        assert processes._idle(proc.pid, frozenset({bindshim.inode(handed)}))
    finally:
        proc.kill()
        proc.wait()
        handed.close()


BIND_AND_SLEEP = ("import socket, sys, time\ns = socket.socket()\n"
                  "s.bind(('127.0.0.1', int(sys.argv[1])))\ns.listen(8)\ntime.sleep(30)\n")


@pytest.mark.parametrize("preloaded", [True, False])
def test_a_fence_whose_proxy_did_not_take_its_socket_does_not_start(
        shim: Path, tmp_path: Path, preloaded: bool) -> None:
    # Without the shim the proxy listens on the host's loopback, where the workload cannot
    # reach it: the fence must say so rather than start a workload whose connections wait.
    from netfence.errors import NetfenceError
    from tests.unit.runtimes.namespace.test_revive import _fence

    fence = _fence(tmp_path)
    handed = bindshim.listen(Endpoint("127.0.0.1", 0))
    marker = Endpoint("127.0.0.1", free_port())
    spec = ProcessSpec("squid-egress", (sys.executable, "-c", BIND_AND_SLEEP, str(marker.port)),
                       (marker,), tmp_path / "out", tmp_path / "err")
    fence.handed[marker] = handed
    proc = processes.start(spec, fence.handed) if preloaded else processes.start(spec)
    fence.started.append((spec, proc))
    try:
        if preloaded:
            deadline = time.monotonic() + 10
            while not bindshim.taken(proc.pid, [handed]) and time.monotonic() < deadline:
                time.sleep(0.01)
            fence._check_handed()
        else:
            processes.wait_ready(spec, proc, timeout=10)  # it listens on the host's
            with pytest.raises(NetfenceError, match="squid-egress did not take the listening "
                                                    "socket made for it"):
                fence._check_handed()
    finally:
        proc.kill()
        proc.wait()
        handed.close()
