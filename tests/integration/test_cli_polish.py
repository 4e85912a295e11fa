"""The command line as a person meets it: progress on a terminal's stderr (never on
stdout), one-line errors naming the remedy, `ps` as a table."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.fakenet import FakeNet
from tests.support.fence import netfence, netfence_argv

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("nothing_left_behind")]


def _read_all(fd: int, proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: every writer of the terminal is gone
                break
            if not chunk:
                break
            data += chunk
        elif proc.poll() is not None:
            break
    return data


@pytest.mark.parametrize(("proxy", "process"), [("envoy", "envoy"), ("squid", "squid-egress")])
def test_progress_goes_to_a_terminal_stderr_only(fakenet: FakeNet, proxy: str,
                                                 process: str) -> None:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        netfence_argv("run", "--proxy", proxy, "--dns-upstream", fakenet.dns, "--",
                      "echo", "hello"),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    try:
        terminal = _read_all(master, proc, timeout=30)
        out, _ = proc.communicate(timeout=30)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, terminal
    assert out == b"hello\n"  # stdout is the workload's alone
    assert f"starting {process}".encode() in terminal, terminal
    assert terminal.endswith(b"\r\x1b[2K"), terminal  # the line is gone once it runs


def test_no_progress_when_stderr_is_not_a_terminal(fakenet: FakeNet) -> None:
    done = netfence("run", "--dns-upstream", fakenet.dns, "--", "echo", "hello")
    assert done.returncode == 0 and done.stdout == b"hello\n", done.stderr
    assert done.stderr == b""


def _one_line(stderr: bytes) -> str:
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr.decode(), stderr
    return lines[0]


def test_missing_command_is_one_line_before_anything_is_built(fakenet: FakeNet) -> None:
    done = netfence("run", "--dns-upstream", fakenet.dns, "--", "no-such-command-xyz")
    assert done.returncode == 2
    line = _one_line(done.stderr)
    assert "no-such-command-xyz: command not found" in line and "full path" in line


def test_program_the_workload_user_cannot_reach(fakenet: FakeNet) -> None:
    # As under root's home (a virtualenv in /root): a directory the user cannot enter.
    with tempfile.TemporaryDirectory(prefix="nf-closed-") as tmp:
        closed = Path(tmp)
        closed.chmod(0o700)
        program = closed / "server"
        program.write_text("#!/bin/sh\necho hi\n")
        program.chmod(0o755)
        done = netfence("run", "--dns-upstream", fakenet.dns, "--user", "nobody", "--",
                        str(program))
        assert done.returncode == 2
        line = _one_line(done.stderr)
        assert str(closed) in line and "nobody" in line and "--user" in line, line
        closed.chmod(0o755)  # reachable now: the same command runs
        done = netfence("run", "--dns-upstream", fakenet.dns, "--user", "nobody", "--",
                        str(program))
        assert (done.returncode, done.stdout) == (0, b"hi\n"), done.stderr


def test_ps_is_a_table(fakenet: FakeNet) -> None:
    name = "nf-ps-table"
    started = netfence("run", "--dns-upstream", fakenet.dns, "--name", name, "--detach",
                       "--", "sleep", "60")
    assert started.returncode == 0, started.stderr
    try:
        listed = netfence("ps")
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.decode().splitlines()
        assert lines[0].split()[:4] == ["NAME", "RUNTIME", "PROXY", "UPTIME"], lines
        row = next(line for line in lines if line.startswith(name))
        assert "namespace" in row and "envoy" in row and "sleep 60" in row, row
    finally:
        netfence("stop", name)
    after = netfence("ps")
    assert name.encode() not in after.stdout
