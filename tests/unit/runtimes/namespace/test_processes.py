"""Starting, waiting for and stopping fence processes, with real processes on loopback."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netfence.backends import Endpoint, ProcessSpec
from netfence.errors import NetfenceError
from netfence.runtimes.namespace import processes


def free_port() -> int:
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
    port = free_port()
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
                           "sys.exit(4)", free_port(), name="envoy")
    proc = processes.start(spec)
    with pytest.raises(NetfenceError, match=r"envoy exited with status 4 while starting: "
                                            r"bad config line 3"):
        processes.wait_ready(spec, proc, timeout=10)


def test_a_process_that_never_listens_times_out_naming_the_endpoint(tmp_path: Path) -> None:
    port = free_port()
    spec = _spec(tmp_path, "import time; time.sleep(30)", port, name="squid")
    proc = processes.start(spec)
    try:
        with pytest.raises(NetfenceError,
                           match=rf"squid did not start listening on 127.0.0.1:{port} within"):
            processes.wait_ready(spec, proc, timeout=0.3)
    finally:
        processes.stop_all([(spec, proc)])


def test_wait_ready_gives_up_when_check_raises(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "import time; time.sleep(30)", free_port())
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
    spec = _spec(tmp_path, code, free_port())
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


PDEATHSIG = ("import ctypes, signal\n"
             "got = ctypes.c_int()\n"
             "ctypes.CDLL(None).prctl(2, ctypes.byref(got))\n"  # PR_GET_PDEATHSIG
             "print(got.value)")


@pytest.mark.parametrize("drops_root", [False, True])
def test_a_process_dies_with_its_starter_unless_it_drops_root_as_root(
        tmp_path: Path, drops_root: bool) -> None:
    spec = dataclasses.replace(_spec(tmp_path, PDEATHSIG, 0), ready=(), drops_root=drops_root)
    proc = processes.start(spec)
    assert proc.wait(10) == 0
    armed = int(spec.stdout.read_text())
    # As root, a process that gives root up would lose the signal anyway: its start is a
    # vfork then (the gateway daemon's dnsmasq: about 10 ms).
    skipped = drops_root and os.geteuid() == 0
    assert armed == (0 if skipped else signal.SIGKILL)


SLOW_EXIT = ("import signal, sys, time\n"
             "signal.signal(signal.SIGTERM, lambda *a: (time.sleep(1), sys.exit(0)))\n"
             "print('ready', flush=True)\ntime.sleep(60)")


def _stopped_once_ready(spec: ProcessSpec) -> int:
    """Start it, wait until it says it is ready, stop it: its exit status."""
    proc = processes.start(spec)
    deadline = time.monotonic() + 10
    while b"ready" not in spec.stdout.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.02)
    processes.stop_all([(spec, proc)])
    return proc.returncode


@pytest.mark.parametrize(("stop_grace", "code"), [(None, 0), (0.2, -signal.SIGKILL)])
def test_a_process_may_declare_when_it_can_be_killed(tmp_path: Path, stop_grace: float | None,
                                                     code: int) -> None:
    # Exits cleanly a second after SIGTERM: waited for, unless it declared that nothing it
    # does after 0.2 s matters.
    spec = dataclasses.replace(_spec(tmp_path, SLOW_EXIT, free_port()), stop_grace=stop_grace)
    assert _stopped_once_ready(spec) == code


MAPS_A_FILE = """
import mmap, sys, time
with open(sys.argv[1], "rb") as f:
    m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
total = sum(m[i] for i in range(0, len(m), 4096))  # every page resident
print("ready", flush=True)
time.sleep(60)
"""


def _rss_file_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    raise AssertionError("no RssFile")


@pytest.mark.skipif(os.geteuid() != 0, reason="process_madvise on another process: root")
def test_page_out_gives_back_the_clean_pages_of_a_files_mapping(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with data.open("wb") as f:
        f.write(b"\1" * (16 << 20))
        os.fsync(f.fileno())  # clean pages: a dirty one would wait for its writeback
    proc = subprocess.Popen([sys.executable, "-c", MAPS_A_FILE, str(data)],
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        before = _rss_file_kib(proc.pid)
        processes.page_out(proc.pid)
        after = _rss_file_kib(proc.pid)
        assert before - after >= 15 << 10, (before, after)  # the file's 16 MiB, nearly all
        assert proc.poll() is None  # clean pages only: nothing the process needs is lost
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]


def test_page_out_of_a_process_gone_does_nothing() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    processes.page_out(proc.pid)  # no error: best effort


def test_idle_watch_acts_once_when_the_processes_are_idle(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processes.IdleWatch, "IDLE_SECONDS", 0.3)
    paged: list[int] = []
    monkeypatch.setattr(processes, "page_out", paged.append)
    idle = subprocess.Popen(["sleep", "30"])
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        calls: list[str] = []
        watch_busy = processes.IdleWatch([busy], then=lambda: calls.append("busy"))
        watch_idle = processes.IdleWatch([idle], then=lambda: calls.append("idle"))
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            watch_busy.tick()
            watch_idle.tick()
            time.sleep(0.05)
        assert calls == ["idle"] and paged == [idle.pid]
    finally:
        for proc in (idle, busy):
            proc.kill()
            proc.wait()


def test_fence_ports_come_from_below_the_ephemeral_range() -> None:
    """A port the kernel may hand out as a source port meanwhile is never chosen."""
    from pathlib import Path

    from netfence.runtimes.namespace import launch

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(20):
        port = launch.free_port()
        assert max(1024, low // 2) <= port < low
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            with socket.socket(socket.AF_INET, kind) as s:
                s.bind(("127.0.0.1", port))  # free for both, as dnsmasq needs


SUPERVISOR = """
import sys, time
from pathlib import Path
from netfence.backends import ProcessSpec
from netfence.runtimes.namespace import processes
tmp = Path(sys.argv[1])
proc = processes.start(ProcessSpec("sleeper", ("sleep", "60"), (), tmp / "o", tmp / "e"))
print(proc.pid, flush=True)
time.sleep(60)
"""


def test_a_fence_process_dies_with_its_supervisor_even_at_once(tmp_path: Path) -> None:
    # Killed outright, the supervisor tears nothing down: the parent-death signal does,
    # armed by the time start() returns (the supervisor is killed right after it).
    supervisor = subprocess.Popen([sys.executable, "-c", SUPERVISOR, str(tmp_path)],
                                  stdout=subprocess.PIPE, text=True)
    assert supervisor.stdout is not None
    child = int(supervisor.stdout.readline())
    started = Path(f"/proc/{child}/stat").read_text().split()[21]
    supervisor.kill()
    supervisor.wait()
    supervisor.stdout.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            fields = Path(f"/proc/{child}/stat").read_text().split()
        except FileNotFoundError:
            break
        if fields[21] != started or fields[2] == "Z":
            break
        time.sleep(0.02)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the fence process outlived its supervisor")


# Ends a second after SIGTERM; meanwhile it holds a TCP connection (its own), or nothing.
HOLDS = ("import signal, socket, sys, time\n"
         "held = []\n"
         "if sys.argv[1] == 'tcp':\n"
         "    server = socket.create_server(('127.0.0.1', 0))\n"
         "    held = [socket.create_connection(server.getsockname()), server.accept()[0]]\n"
         "    server.close()\n"
         "signal.signal(signal.SIGTERM, lambda *a: (time.sleep(1), sys.exit(0)))\n"
         "print('ready', flush=True)\ntime.sleep(60)")


@pytest.mark.parametrize(("holding", "code"), [("tcp", 0), ("nothing", -signal.SIGKILL)])
def test_one_that_may_be_killed_is_killed_once_it_holds_no_connection(
        tmp_path: Path, holding: str, code: int) -> None:
    # A grace long enough to exit by itself: only one idle (asleep, no TCP socket) is
    # killed before that.
    spec = dataclasses.replace(_spec(tmp_path, HOLDS, free_port()), stop_grace=5.0)
    spec = dataclasses.replace(spec, argv=(*spec.argv, holding))
    assert _stopped_once_ready(spec) == code
