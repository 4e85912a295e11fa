"""A fence process that dies under a running workload is started again, a few times."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from pathlib import Path

import pytest

from netfence.backends import ProcessSpec
from netfence.backends.envoy import EnvoyProxy
from netfence.profile.loader import load_profile
from netfence.runtimes.base import WorkloadSpec
from netfence.runtimes.namespace import runtime
from netfence.runtimes.namespace.runtime import NamespaceFence
from netfence.runtimes.signals import StopSignals
from netfence.runtimes.state import WorkloadState


def _fence(tmp_path: Path) -> NamespaceFence:
    spec = WorkloadSpec(name="w", command=("true",), profile=load_profile("none"), proxy="envoy")
    record = WorkloadState(name="w", runtime="namespace", proxy="envoy", command=["true"],
                           supervisor_pid=os.getpid(), supervisor_start="", started_at=0.0,
                           state_dir=str(tmp_path))
    return NamespaceFence(spec, EnvoyProxy(), record, StopSignals())


def _dying(tmp_path: Path) -> ProcessSpec:
    return ProcessSpec("proxy", ("sh", "-c", "exit 3"), (), tmp_path / "out", tmp_path / "err")


def test_a_dead_process_is_started_again_and_recorded(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    fence = _fence(tmp_path)
    sleeper = ProcessSpec("proxy", ("sleep", "30"), (), tmp_path / "out", tmp_path / "err")
    dead = subprocess.Popen(["true"])
    dead.wait()
    fence.started.append((sleeper, dead))
    with caplog.at_level(logging.WARNING, "netfence"):
        fence._revive()
    _spec, proc = fence.started[0]
    try:
        assert proc is not dead and proc.poll() is None
        assert fence.record.processes[-1][0] == proc.pid  # killed with the fence
        assert "proxy exited (status 0); starting it again" in caplog.text
        caplog.clear()
        fence._revive()  # alive: left alone
        assert fence.started[0][1] is proc and not caplog.text
    finally:
        proc.kill()
        proc.wait()


def test_one_that_keeps_dying_is_given_up_and_said_once(tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    fence = _fence(tmp_path)
    first = subprocess.Popen(["true"])
    first.wait()
    fence.started.append((_dying(tmp_path), first))
    with caplog.at_level(logging.WARNING, "netfence"):
        for _ in range(runtime.MAX_REVIVALS_PER_MINUTE + 3):
            fence.started[0][1].wait(10)
            fence._revive()
            time.sleep(0.01)
    assert caplog.text.count("starting it again") == runtime.MAX_REVIVALS_PER_MINUTE
    assert caplog.text.count("keeps exiting; the fence stays closed") == 1


def test_an_update_in_progress_is_not_raced(tmp_path: Path) -> None:
    fence = _fence(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    fence.started.append((_dying(tmp_path), dead))
    with fence.changing:
        fence._revive()  # would replace a process the update is replacing
    assert fence.started[0][1] is dead


def test_a_proxy_that_exits_while_the_fence_settles_is_said_at_once(tmp_path: Path) -> None:
    from netfence.errors import NetfenceError

    fence = _fence(tmp_path)
    spec = _dying(tmp_path)
    spec.stderr.write_text("bad listener file\n")
    dead = subprocess.Popen(["sh", "-c", "exit 3"])
    dead.wait()
    fence.started.append((spec, dead))
    with pytest.raises(NetfenceError, match="proxy exited with status 3 while starting: "
                                            "bad listener file"):
        fence._alive()
