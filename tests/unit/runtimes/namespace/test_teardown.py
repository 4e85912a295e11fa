"""The end of an own fence (runtime._stop_fence), with real processes."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from netfence.backends import ProcessSpec
from netfence.runtimes.namespace import processes, runtime

# Says, on its stop signal, whether its watched directory is still there.
REPORTS = """
import os, signal, sys, time
def stopped(*_):
    print("there" if os.path.exists(sys.argv[1]) else "gone", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stopped)
print("up", flush=True)
time.sleep(60)
"""


def test_watched_directories_go_before_the_stop_signal(tmp_path: Path) -> None:
    watched = tmp_path / "xds"
    watched.mkdir()
    (watched / "listeners.json").write_text("{}")
    out = tmp_path / "out"
    spec = ProcessSpec("proxy", (sys.executable, "-c", REPORTS, str(watched)), (), out,
                       tmp_path / "err", role="egress", watches=(watched,))
    proc = processes.start(spec)
    try:
        for _ in range(1000):  # its handler is set: at most 10 s
            if out.read_text():
                break
            time.sleep(0.01)
        runtime._stop_fence(None, [(spec, proc)], frozenset())
    finally:
        processes.stop_all([(spec, proc)])
    assert out.read_text().split() == ["up", "gone"]
    assert proc.returncode == 0  # stopped by its signal, not killed
