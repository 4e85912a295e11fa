"""Small pieces of the command line's polish: the progress line, durations, doctor."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from rich.console import Console

from netfence.cli import output
from netfence.runtimes.base import Runtime


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=terminal, no_color=True), buffer


def test_progress_rewrites_one_line_and_erases_it(monkeypatch: pytest.MonkeyPatch) -> None:
    console, buffer = _console(terminal=True)
    monkeypatch.setattr(output, "err", console)
    progress = output.Progress()
    progress("starting envoy")
    progress("waiting for envoy")
    assert buffer.getvalue() == ("\r\x1b[2Knetfence: starting envoy..."
                                 "\r\x1b[2Knetfence: waiting for envoy...")
    progress(None)
    assert buffer.getvalue().endswith("\r\x1b[2K")
    progress(None)  # erasing twice writes nothing more
    assert buffer.getvalue().count("\r\x1b[2K") == 3


def test_no_progress_when_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    console, buffer = _console(terminal=False)
    monkeypatch.setattr(output, "err", console)
    progress = output.Progress()
    progress("starting envoy")
    progress(None)
    assert buffer.getvalue() == ""


def test_runtime_reports_only_when_hooked() -> None:
    seen: list[str | None] = []

    class Fake(Runtime):
        name = "fake"
        run = list = stop = decisions = None  # type: ignore[assignment]

    runtime = Fake()
    runtime.report("ignored")
    runtime.progress = seen.append
    runtime.report("step")
    runtime.report(None)
    assert seen == ["step", None]


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (42.9, "42s"), (185, "3m05s"), (7620, "2h07m"), (3 * 86400 + 4 * 3600, "3d04h"),
    (-5, "0s"),
])
def test_duration(seconds: float, text: str) -> None:
    assert output.duration(seconds) == text


def test_doctor_names_what_is_missing_and_the_fix() -> None:
    # A PATH without the system binaries: squid, dnsmasq, bwrap are "missing".
    done = subprocess.run([sys.executable, "-m", "netfence", "doctor"], capture_output=True,
                          timeout=60, env={**os.environ, "PATH": "/nonexistent"})
    assert done.returncode == 1
    err = done.stderr.decode()
    assert "MISSING squid" in err and "fix: apt-get install squid" in err, err
    assert "fix: apt-get install bubblewrap" in err
    assert err.strip().splitlines()[-1].startswith("netfence: some checks failed")
    assert done.stdout == b""
