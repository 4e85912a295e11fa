"""What netfence itself prints: the progress line, durations."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from netfence.cli import output


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


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (42.9, "42s"), (185, "3m05s"), (7620, "2h07m"), (3 * 86400 + 4 * 3600, "3d04h"),
    (-5, "0s"),
])
def test_duration(seconds: float, text: str) -> None:
    assert output.duration(seconds) == text
