"""The dash forwarder (runtimes/namespace/forwarder.sh) around a real bwrap sandbox: stop
signals reach the workload's own handlers, a workload that ignores them is killed after the
grace or at a second signal, the status is the workload's, stdio is the caller's own, and
nothing of the sandbox outlives the forwarder, whenever a signal comes. Root: bwrap's PID
namespace."""

from __future__ import annotations

import os
import pwd
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from netfence.runtimes import netns
from netfence.runtimes.namespace.forwarder import SCRIPT, forwarder_argv

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="bwrap's PID namespace as root"),
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]

READY_TIMEOUT = 5.0
# A workload that answers each stop signal with a status of its own; its `sleep` runs in
# the background so that a trap runs at once.
TRAPS = """
trap 'echo got-TERM; exit 7' TERM
trap 'echo got-INT; exit 8' INT
trap 'echo got-HUP; exit 9' HUP
trap 'echo got-QUIT; exit 10' QUIT
echo ready
sleep 30 & wait
"""
STATUS = {signal.SIGTERM: 7, signal.SIGINT: 8, signal.SIGHUP: 9, signal.SIGQUIT: 10}


@dataclass
class Run:
    proc: subprocess.Popen[bytes]
    info: Path
    token: str
    out: bytearray = field(default_factory=bytearray)
    err: bytes = b""

    def line(self, expected: bytes, timeout: float = READY_TIMEOUT) -> None:
        """Read stdout until a line `expected` (a failure names what came instead)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while expected + b"\n" not in self.out:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(left, 0))
            chunk = os.read(self.proc.stdout.fileno(), 65536) if ready else b""
            assert chunk, f"no {expected!r} line; stdout so far: {bytes(self.out)!r}"
            self.out += chunk

    def finish(self, timeout: float = 15.0) -> int:
        """The forwarder's exit status, the rest of stdout read."""
        out, self.err = self.proc.communicate(timeout=timeout)
        self.out += out
        return self.proc.returncode

    def sandbox(self) -> list[tuple[int, int]]:
        """The sandbox's live processes (PID, start time): those but the forwarder whose
        argv holds the token (bwrap, its init, the workload's shell), their descendants."""
        parents = {pid: _parent(pid) for pid in _all_pids()}
        found = {pid for pid in parents
                 if pid != self.proc.pid and self.token in _cmdline(pid)}
        while more := {pid for pid, ppid in parents.items()
                       if ppid in found and pid not in found}:
            found |= more
        return [(pid, start) for pid in found if (start := _start_time(pid)) is not None]


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _start_time(pid: int) -> int | None:
    """A live process's start time (None: gone, or a zombie: it runs nothing)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in "ZX" else int(fields[19])


def _gone(procs: list[tuple[int, int]], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(_start_time(pid) != start for pid, start in procs):
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    """Forwarders started by a test: killed if still running, and nothing of their
    sandboxes may remain."""
    started: list[Run] = []
    yield started
    for run in started:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait(5)
    for run in started:
        assert _gone(run.sandbox()), f"left running: {run.sandbox()}"


def _start(runs: list[Run], tmp_path: Path, script: str, *, grace: float = 5.0,
           die_with_parent: bool = True, announce: bool = True,
           stdin: int | None = subprocess.DEVNULL, gate: int | None = None,
           **popen: object) -> Run:
    """A forwarder around `bwrap ... -- sh -c SCRIPT TOKEN`. `announce=False`: bwrap
    writes its info into another file than the forwarder reads (the init stays unknown).
    `gate`: a descriptor bwrap waits on before the workload runs (--block-fd)."""
    token = "nf-fwd-" + secrets.token_hex(4)
    info = tmp_path / f"{token}.info"
    written = info if announce else tmp_path / f"{token}.elsewhere"
    fd = os.open(written, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    info.touch(0o600)
    bwrap = shutil.which("bwrap")
    assert bwrap is not None
    argv = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
            "--unshare-pid", *(["--die-with-parent"] if die_with_parent else []),
            "--new-session", "--info-fd", str(fd),
            *(["--block-fd", str(gate)] if gate is not None else []),
            "--", "/bin/sh", "-c", script, token]
    try:
        proc = subprocess.Popen(forwarder_argv(argv, info, grace),
                                pass_fds=(fd, *([gate] if gate is not None else [])), env={},
                                stdin=stdin, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, **popen)  # type: ignore[call-overload]
    finally:
        os.close(fd)
    run = Run(proc, info, token)
    runs.append(run)
    return run


@pytest.mark.parametrize("signum", list(STATUS), ids=lambda s: signal.Signals(s).name)
def test_a_stop_signal_reaches_the_workloads_handler(
        runs: list[Run], tmp_path: Path, signum: signal.Signals) -> None:
    run = _start(runs, tmp_path, TRAPS)
    run.line(b"ready")
    run.proc.send_signal(signum)
    assert run.finish() == STATUS[signum]
    assert f"got-{signum.name.removeprefix('SIG')}\n".encode() in run.out


def test_a_signal_to_the_process_group_reaches_the_workload_through_it_only(
        runs: list[Run], tmp_path: Path) -> None:
    # As a terminal's Ctrl-C does: to every process of the foreground group. The sandbox
    # is not in it (bwrap would die of the INT, and the sandbox with it, its handler unrun).
    run = _start(runs, tmp_path, TRAPS, start_new_session=True)
    run.line(b"ready")
    os.killpg(run.proc.pid, signal.SIGINT)
    assert run.finish() == STATUS[signal.SIGINT] and run.out.count(b"got-INT") == 1


@pytest.mark.parametrize("die_with_parent", [True, False])
def test_a_workload_ignoring_the_signal_is_killed_after_the_grace(
        runs: list[Run], tmp_path: Path, die_with_parent: bool) -> None:
    # Without --die-with-parent (as while bwrap starts: not armed yet), killing bwrap
    # alone would leave the init and the workload running: the forwarder kills the init.
    run = _start(runs, tmp_path, "trap '' TERM; echo ready; sleep 30 & wait", grace=0.5,
                 die_with_parent=die_with_parent)
    run.line(b"ready")
    started = time.monotonic()
    run.proc.terminate()
    assert run.finish() == 128 + signal.SIGTERM  # killed on account of the TERM
    assert 0.5 <= time.monotonic() - started < 2.0
    assert run.err == b""  # stderr is the workload's: nothing of the forwarder's


def test_a_second_signal_kills_at_once(runs: list[Run], tmp_path: Path) -> None:
    # The first reached the workload (it says so, and goes on): the second is not for it.
    run = _start(runs, tmp_path,
                 "trap 'echo got-TERM' TERM; echo ready; while :; do sleep 0.05; done",
                 grace=30)
    run.line(b"ready")
    run.proc.terminate()
    run.line(b"got-TERM")
    started = time.monotonic()
    run.proc.terminate()
    assert run.finish() == 128 + signal.SIGTERM
    assert time.monotonic() - started < 1.5 and run.err == b""


@pytest.mark.parametrize(("script", "status"), [
    ("exit 42", 42), ("exit 0", 0), ("kill -s KILL $$", 128 + signal.SIGKILL),
    ("kill -s SEGV $$", 128 + signal.SIGSEGV)])
def test_the_status_is_the_workloads(runs: list[Run], tmp_path: Path, script: str,
                                     status: int) -> None:
    assert _start(runs, tmp_path, script).finish() == status


def test_stdin_and_stdout_pass_through_untouched(runs: list[Run], tmp_path: Path) -> None:
    # The workload holds the very pipes (no relay), and every byte of a binary stream.
    # (In a subshell: dash redirects a simple command's descriptors in itself, around a
    # vfork, and /proc/$$ would show stderr as its stdout.)
    data = os.urandom(300 * 1024) + bytes(range(256)) * 64
    run = _start(runs, tmp_path,
                 "(readlink /proc/$$/fd/0 /proc/$$/fd/1) >&2; exec cat",
                 stdin=subprocess.PIPE)
    assert run.proc.stdin is not None and run.proc.stdout is not None
    pipes = [f"pipe:[{os.fstat(f.fileno()).st_ino}]"
             for f in (run.proc.stdin, run.proc.stdout)]
    out, err = run.proc.communicate(data, timeout=10)
    assert run.proc.returncode == 0 and out == data
    assert err.decode().split() == pipes


def test_killing_the_forwarder_ends_the_sandbox(runs: list[Run], tmp_path: Path) -> None:
    run = _start(runs, tmp_path, "sleep 30 & echo ready; wait")
    run.line(b"ready")
    sandbox = run.sandbox()
    assert len(sandbox) == 4  # bwrap, its init, the workload's shell and its sleep
    run.proc.kill()
    run.proc.wait(5)
    assert _gone(sandbox)
    # And with it the last writer of the caller's stdout.
    assert run.proc.stdout is not None
    ready, _, _ = select.select([run.proc.stdout], [], [], 2.0)
    assert ready and os.read(run.proc.stdout.fileno(), 100) == b""


def test_a_sandbox_held_at_its_gate_runs_on_a_byte_and_usr1_ends_it_unrun(
        runs: list[Run], tmp_path: Path) -> None:
    # The gateway's warm start (gateway/client.py): bwrap holds the workload until the
    # fence is up; if it does not come up, SIGUSR1 ends the sandbox, status 1.
    for fence_up in (True, False):
        read, write = os.pipe()
        try:
            run = _start(runs, tmp_path, "echo ran", gate=read)
            os.close(read)
            deadline = time.monotonic() + 10
            while len(run.sandbox()) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)  # bwrap and its init, held
            time.sleep(0.2)
            assert run.proc.poll() is None
            if fence_up:
                os.write(write, b"\0")
                assert run.finish() == 0 and run.out == b"ran\n"
            else:
                sandbox = run.sandbox()
                run.proc.send_signal(signal.SIGUSR1)
                assert run.finish() == 1
                assert run.out == b"" and run.err == b""
                assert _gone(sandbox)
        finally:
            os.close(write)


def test_a_signal_before_the_init_is_known_kills_the_sandbox(
        runs: list[Run], tmp_path: Path) -> None:
    # Nothing tells it the init, and without --die-with-parent the init would outlive
    # bwrap: the forwarder itself must find and kill it.
    run = _start(runs, tmp_path, TRAPS, announce=False, die_with_parent=False)
    run.line(b"ready")
    sandbox = run.sandbox()
    run.proc.terminate()
    assert run.finish() == 128 + signal.SIGTERM
    assert b"got-TERM" not in run.out and run.err == b""
    assert _gone(sandbox)


def test_a_signal_while_it_starts_is_never_lost(runs: list[Run], tmp_path: Path) -> None:
    # Whichever step it lands in (the whole start takes about 8 ms here): before the traps
    # (the forwarder dies of it), before the sandbox (not started), before its init is
    # known (killed), or in the workload (its handler). A lost one: the workload runs on.
    for step in range(24):
        run = _start(runs, tmp_path, TRAPS)
        time.sleep(step * 0.0005)
        run.proc.terminate()
        # Longer than the grace: under load, a signal that lands before the workload's
        # traps ends it through the kill at the grace's end (128 + TERM), not at once.
        status = run.finish()
        assert status in (-signal.SIGTERM, 128 + signal.SIGTERM, STATUS[signal.SIGTERM])
        assert (status == STATUS[signal.SIGTERM]) == (b"got-TERM" in run.out)
        assert _gone(run.sandbox())


_EXEC_INTO = """
import os, signal, sys
from pathlib import Path
from netfence.runtimes.namespace.forwarder import exec_into

bwrap, info, script, token, pending = sys.argv[1:]
fd = os.open(info, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
stray = os.open(os.devnull, os.O_RDONLY)
os.dup2(stray, 40)  # inheritable, as one from the caller's own parent can be
if pending == "yes":  # a stop signal arrives, blocked, just before the exec
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    os.kill(os.getpid(), signal.SIGTERM)
argv = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-pid",
        "--die-with-parent", "--new-session", "--info-fd", str(fd), "--",
        "/bin/sh", "-c", script, token]
exec_into(argv, Path(info), [fd])
"""


def _exec_into(runs: list[Run], tmp_path: Path, script: str, pending: bool) -> Run:
    token = "nf-fwd-" + secrets.token_hex(4)
    info = tmp_path / f"{token}.info"
    bwrap = shutil.which("bwrap")
    assert bwrap is not None
    proc = subprocess.Popen(
        [sys.executable, "-c", _EXEC_INTO, bwrap, str(info), script, token,
         "yes" if pending else "no"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    run = Run(proc, info, token)
    runs.append(run)
    return run


def test_exec_into_becomes_the_forwarder_with_only_the_kept_descriptors(
        runs: list[Run], tmp_path: Path) -> None:
    run = _exec_into(runs, tmp_path, f"ls /proc/self/fd; {TRAPS}", pending=False)
    run.line(b"ready")
    assert _cmdline(run.proc.pid).split("\0")[0].endswith("/dash")  # the same PID
    # Beside stdio, the forwarder holds the info file (kept), its script and, while it
    # waits with stderr to /dev/null, stderr itself (dash's own, close-on-exec).
    assert run.proc.stderr is not None
    stderr = f"pipe:[{os.fstat(run.proc.stderr.fileno()).st_ino}]"
    fds = {int(fd): os.readlink(f"/proc/{run.proc.pid}/fd/{fd}")
           for fd in os.listdir(f"/proc/{run.proc.pid}/fd")}
    held = {link for fd, link in fds.items() if fd > 2}
    assert 40 not in fds and {str(run.info), str(SCRIPT)} <= held
    assert held <= {str(run.info), str(SCRIPT), stderr}
    assert b"\n40\n" not in run.out  # nor has the workload the stray descriptor
    assert run.info.read_text().count('"child-pid"') == 1
    run.proc.terminate()
    assert run.finish() == STATUS[signal.SIGTERM]


_EXEC_INTO_RUNTIME = """
import os, sys
from pathlib import Path
from netfence.runtimes import netns
from netfence.runtimes.namespace import sandbox
from netfence.runtimes.namespace.forwarder import exec_into

netns_name, info, script, token = sys.argv[1:]
user = sandbox.resolve_user("nobody")
resolv_r, resolv_w = os.pipe()
os.write(resolv_w, b"nameserver 127.0.0.1\\n")
os.close(resolv_w)
fd = os.open(info, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
argv = sandbox.sandbox_argv(netns.netns_path(netns_name), user, ("/bin/sh", "-c", script, token),
                            {"PATH": "/usr/bin:/bin"}, resolv_r, fd, hidden=())
exec_into(argv, Path(info), [resolv_r, fd])
"""


def test_exec_into_the_namespace_runtimes_own_sandbox(runs: list[Run], tmp_path: Path) -> None:
    # As launch() builds it: nsenter into the network namespace as the workload's user,
    # then bwrap (bwrap's init is still the child of the forwarder's child: nsenter execs).
    token = "nf-fwd-" + secrets.token_hex(4)
    name = f"netfence-{token}"
    netns.create(name)
    try:
        info = tmp_path / "info"
        proc = subprocess.Popen(
            [sys.executable, "-c", _EXEC_INTO_RUNTIME, name, str(info),
             f"cat /etc/resolv.conf; id -u; {TRAPS}", token],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        run = Run(proc, info, token)
        runs.append(run)
        run.line(b"ready")
        assert run.out.startswith(f"nameserver 127.0.0.1\n{pwd.getpwnam('nobody').pw_uid}\n"
                                  .encode())
        run.proc.terminate()
        assert run.finish() == STATUS[signal.SIGTERM] and b"got-TERM" in run.out
    finally:
        netns.remove(name)


def test_a_signal_pending_at_the_exec_ends_it_before_the_sandbox(
        runs: list[Run], tmp_path: Path) -> None:
    run = _exec_into(runs, tmp_path, "echo started", pending=True)
    assert run.finish() == -signal.SIGTERM
    assert run.out == b"" and run.info.read_text() == ""
