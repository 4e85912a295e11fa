"""The supervisor both runtimes share, driven through a runtime whose fence records what
it is asked to do (the runtimes' own fences are exercised for real by the integration
tests)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from netfence.backends import NetworkProxy, ProxySetup
from netfence.errors import NetfenceError
from netfence.profile import Profile
from netfence.runtimes import base, state, supervisor
from netfence.runtimes.base import Fence, WorkloadSpec
from netfence.runtimes.signals import Interrupted, StopSignals


class RecordingFence(Fence):
    def __init__(self, runtime: FakeRuntime, state_dir: Path) -> None:
        self.runtime = runtime
        self.state_dir = state_dir
        self.signals = StopSignals()

    def start(self) -> None:
        self.runtime.calls.append("start")
        self.signals.check()  # as a real fence does between its steps
        log = self.state_dir / "access.log"
        log.write_text("")
        self.setup = ProxySetup(files=(), processes=(), decision_logs=(log,))
        self.url = "http://127.0.0.1:1/mcp"
        if self.runtime.fail_start is not None:
            raise self.runtime.fail_start
        # What the supervisor recorded by now, as `ps` would read it.
        self.runtime.seen = state.load(self.state_dir.name)

    def launch(self, detached: bool) -> None:
        self.runtime.calls.append(f"launch detached={detached}")
        self.runtime.after_start = state.load(self.state_dir.name)

    def wait(self) -> int:
        self.runtime.calls.append("wait")
        return self.runtime.exit_code

    def close(self) -> None:
        self.runtime.calls.append("close")
        if self.runtime.fail_close:
            raise NetfenceError("could not remove the network")


class FakeRuntime(supervisor.SupervisedRuntime):
    name = "fake"

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.exit_code = 7
        self.fail_start: BaseException | None = None
        self.fail_close = False
        self.found = False
        self.removed: list[str] = []
        self.seen: state.WorkloadState | None = None
        self.after_start: state.WorkloadState | None = None

    def prepare(self, spec: WorkloadSpec) -> WorkloadSpec:
        self.calls.append("prepare")
        return spec

    def fence(self, spec: WorkloadSpec, backend: NetworkProxy, record: state.WorkloadState,
              signals: StopSignals) -> Fence:
        fence = RecordingFence(self, Path(record.state_dir))
        fence.signals = signals
        return fence

    def remove(self, name: str, record: state.WorkloadState | None) -> bool:
        self.removed.append(name)
        return self.found or record is not None

    def list(self) -> list[state.WorkloadState]:
        return []


@pytest.fixture
def state_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "state"
    monkeypatch.setattr(state, "STATE_ROOT", root)
    yield root


def _spec(learn: Path | None = None) -> WorkloadSpec:
    return WorkloadSpec(name="sup-test", command=("true",), profile=Profile(), proxy="envoy",
                        learn=learn)


def test_a_run_goes_through_every_step_and_leaves_nothing(state_root: Path) -> None:
    runtime = FakeRuntime()
    assert runtime.run(_spec()) == 7
    assert runtime.calls == ["prepare", "start", "launch detached=False", "wait", "close"]
    assert runtime.seen is not None and runtime.seen.supervisor_pid == os.getpid()
    # The URL and decision logs are recorded before the workload starts.
    assert runtime.after_start is not None
    assert runtime.after_start.url == "http://127.0.0.1:1/mcp"
    assert runtime.after_start.decision_logs == [str(state_root / "sup-test" / "access.log")]
    assert list(state_root.iterdir()) == []


def test_a_failed_teardown_still_writes_the_learned_profile_and_keeps_the_record(
        state_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    runtime = FakeRuntime()
    runtime.fail_close = True
    learned = tmp_path / "learned.yaml"
    with caplog.at_level(logging.WARNING, logger="netfence"):
        assert runtime.run(_spec(learn=learned)) == 7
    assert learned.exists() and "network:" in learned.read_text()
    assert "teardown incomplete" in caplog.text and "netfence stop sup-test" in caplog.text
    # The record stays for `stop` to finish the job.
    kept = state.load("sup-test")
    assert kept is not None and kept.supervisor_pid == os.getpid()


def test_a_failed_start_is_raised_torn_down_and_learns_nothing(
        state_root: Path, tmp_path: Path) -> None:
    runtime = FakeRuntime()
    runtime.fail_start = NetfenceError("envoy exited while starting")
    learned = tmp_path / "learned.yaml"
    learned.write_text("kept\n")
    with pytest.raises(NetfenceError, match="envoy exited"):
        runtime.run(_spec(learn=learned))
    assert runtime.calls == ["prepare", "start", "close"]
    assert learned.read_text() == "kept\n"
    assert list(state_root.iterdir()) == []


def test_a_stop_signal_during_the_start_exits_as_a_shell_would(state_root: Path) -> None:
    runtime = FakeRuntime()
    runtime.fail_start = Interrupted(signal.SIGTERM)
    assert runtime.run(_spec()) == 128 + signal.SIGTERM
    assert runtime.calls[-1] == "close"


class Killed(Exception):
    """What SIGTERM's default action would be: the process gone, mid-step."""


def test_a_stop_signal_while_the_name_is_claimed_leaves_no_claim(
        state_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def killed(_signum: int, _frame: object) -> None:
        raise Killed

    real_claim = state.claim

    def claim_then_sigterm(name: str) -> Path:
        path = real_claim(name)
        os.kill(os.getpid(), signal.SIGTERM)  # lands before the record is saved
        return path

    monkeypatch.setattr(state, "claim", claim_then_sigterm)
    previous = signal.signal(signal.SIGTERM, killed)
    try:
        runtime = FakeRuntime()
        assert runtime.run(_spec()) == 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert runtime.calls == ["prepare", "start", "close"]
    assert list(state_root.iterdir()) == []


def test_stop_of_a_dead_supervisor_removes_what_it_left(state_root: Path) -> None:
    runtime = FakeRuntime()
    runtime.fail_close = True
    runtime.run(_spec())
    record = state.load("sup-test")
    assert record is not None
    record.supervisor_start = "0"  # as if this supervisor had died: no process has it
    state.save(record)
    runtime.stop("sup-test")
    assert runtime.removed == ["sup-test"]
    assert not (state_root / "sup-test").exists()


def test_stop_of_an_unknown_workload_says_so(state_root: Path) -> None:
    runtime = FakeRuntime()
    with pytest.raises(NetfenceError, match="no fake workload named 'nothing-here'"):
        runtime.stop("nothing-here")
    runtime.found = True  # the runtime still found something of it (containers by label)
    runtime.stop("nothing-here")
    assert runtime.removed == ["nothing-here", "nothing-here"]


def test_stop_kills_a_supervisor_that_ignores_sigterm(
        state_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "WORKLOAD_STOP_GRACE", 0.2)
    runtime = FakeRuntime()
    runtime.teardown_time = 0.3
    stubborn = subprocess.Popen(
        [sys.executable, "-c", "import signal, sys, time\n"
         "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
         "print('ready', flush=True)\ntime.sleep(60)"], stdout=subprocess.PIPE)
    try:
        assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"
        state_dir = state.claim("sup-test")
        state.save(state.WorkloadState(
            name="sup-test", runtime="fake", proxy="envoy", command=["true"],
            supervisor_pid=stubborn.pid,
            supervisor_start=state.process_start_time(stubborn.pid) or "",
            started_at=0.0, state_dir=str(state_dir)))
        runtime.stop("sup-test")
        # Killed, and already a zombie (not alive) before its parent reaped it.
        assert stubborn.wait(5) == -signal.SIGKILL
        assert runtime.removed == ["sup-test"]
    finally:
        if stubborn.poll() is None:
            stubborn.kill()
            stubborn.wait()


def test_the_fence_contract_is_declared_once() -> None:
    # Both runtimes' fences implement the one interface the supervisor drives.
    from netfence.runtimes.docker.runtime import DockerFence
    from netfence.runtimes.namespace.runtime import NamespaceFence

    for fence in (DockerFence, NamespaceFence):
        assert issubclass(fence, base.Fence)
        assert not fence.__abstractmethods__
