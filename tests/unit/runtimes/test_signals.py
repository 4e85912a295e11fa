"""Stop signals are recorded, never raised from the handler, and handed over in order."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from netfence.runtimes.signals import STOP_SIGNALS, Interrupted, StopSignals


def test_a_signal_is_recorded_then_checked_then_taken() -> None:
    with StopSignals() as signals:
        signals.check()  # nothing yet
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGHUP)
        with pytest.raises(Interrupted) as caught:
            signals.check()
        assert caught.value.signum == signal.SIGTERM and caught.value.exit_code == 143
        assert signals.take() == [signal.SIGTERM, signal.SIGHUP]
        assert signals.take() == []
        signals.check()


def test_previous_handlers_come_back() -> None:
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    with StopSignals():
        assert all(signal.getsignal(s) != before[s] for s in STOP_SIGNALS)
    assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before


_DURING_FORK = """
import os, signal, subprocess, sys
from netfence.runtimes.signals import StopSignals
with StopSignals() as signals:
    os.register_at_fork(after_in_parent=lambda: os.kill(os.getpid(), signal.SIGINT))
    # A preexec_fn, as the fence's own processes have, makes the start run the callbacks.
    subprocess.run([sys.executable, "-c", "pass"], check=True, timeout=30,
                   preexec_fn=lambda: None)
    print(signals.take())
"""


def test_a_signal_during_a_subprocess_start_is_not_lost() -> None:
    # The reason the handler only records: CPython ignores an exception raised in an
    # at-fork callback, so a raising handler that ran there lost the signal. A child
    # interpreter (an at-fork callback cannot be removed) gets one from such a callback.
    done = subprocess.run([sys.executable, "-c", _DURING_FORK], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"[{int(signal.SIGINT)}]", done.stdout
