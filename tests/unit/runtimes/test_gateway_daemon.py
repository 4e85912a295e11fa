"""The gateway daemon's publication: requests that arrive while one runs are served by one
publication after it; a failure reaches every request it served."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from netfence.backends import ProcessSpec
from netfence.errors import NetfenceError, UsageError
from netfence.runtimes.control import PEER_PID
from netfence.runtimes.gateway import daemon
from netfence.runtimes.gateway.daemon import Gateway


class Counting(Gateway):
    """The daemon with its publication replaced by a count (what Envoy would be told is
    tested with the real Envoy in tests/integration/test_gateway*.py)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, idle_exit=None)
        self.runs = 0
        self.gate = threading.Event()
        self.fail = False

    def _publish_now(self) -> None:
        self.runs += 1
        self.gate.wait(10)
        if self.fail:
            raise NetfenceError("envoy refused it")


def _in_threads(gateway: Counting, count: int) -> tuple[list[threading.Thread], list[object]]:
    results: list[object] = []

    def one() -> None:
        try:
            gateway.publish()
            results.append("ok")
        except NetfenceError as exc:
            results.append(exc.message)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads, results


def test_requests_made_during_a_publication_share_the_next_one(tmp_path: Path) -> None:
    gateway = Counting(tmp_path)
    first, results = _in_threads(gateway, 1)
    while gateway.runs == 0:  # the first publication is under way
        threading.Event().wait(0.01)
    others, more = _in_threads(gateway, 9)
    gateway.gate.set()
    for thread in first + others:
        thread.join(10)
    assert results + more == ["ok"] * 10
    # The first, then one for the nine that came while it ran (not nine more).
    assert gateway.runs == 2


def test_a_failed_publication_fails_every_request_it_served(tmp_path: Path) -> None:
    gateway = Counting(tmp_path)
    gateway.fail = True
    gateway.gate.set()
    threads, results = _in_threads(gateway, 3)
    for thread in threads:
        thread.join(10)
    assert results == ["envoy refused it"] * 3
    gateway.fail = False
    gateway.publish()  # the next one is made afresh
    assert gateway.runs >= 2


def test_a_gateway_without_members_is_idle_after_its_time(tmp_path: Path) -> None:
    gateway = Gateway(tmp_path, idle_exit=0.0)
    assert gateway._idle_out()
    assert gateway.closing  # adds from now on are told to start another daemon
    busy = Gateway(tmp_path, idle_exit=0.0)
    busy.pending = 1
    assert not busy._idle_out()
    assert not Gateway(tmp_path, idle_exit=None)._idle_out()


def test_an_add_for_another_process_is_taken_only_from_the_starters_workers(
        tmp_path: Path) -> None:
    gateway = Gateway(tmp_path, idle_exit=None)
    # A process that is not the starter's child speaks for another: refused at once.
    with pytest.raises(UsageError, match="speaks for another"):
        gateway._add({"name": "nf-x", "pid": os.getpid() + 1, PEER_PID: os.getpid()})
    log = tmp_path / "starter.log"
    starter = subprocess.Popen(["sh", "-c", "sleep 30 & echo $! ; wait"], stdout=subprocess.PIPE,
                               text=True)
    assert starter.stdout is not None
    worker = int(starter.stdout.readline())
    try:
        gateway.starter = (ProcessSpec("starter", ("sh",), (), log, log), starter)
        assert gateway._from_starter(worker)
        assert not gateway._from_starter(os.getpid())
        # Its worker is believed, and the workload's record is then checked (none here).
        with pytest.raises(UsageError, match="did not start this workload"):
            gateway._add({"name": "nf-x", "pid": os.getpid() + 1, PEER_PID: worker})
    finally:
        os.kill(worker, signal.SIGKILL)  # the sleep this test's sh started
        starter.kill()
        starter.wait()
        starter.stdout.close()
    assert not gateway._from_starter(worker)  # a starter that exited has no workers


def test_a_starter_that_died_is_started_again_a_few_times_a_minute(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gateway = Gateway(tmp_path, idle_exit=None)
    started: list[int] = []
    log = tmp_path / "starter.log"

    def start() -> None:
        done = subprocess.Popen(["true"])
        done.wait()
        started.append(done.pid)
        gateway.starter = (ProcessSpec("starter", ("true",), (), log, log), done)

    monkeypatch.setattr(gateway, "_start_starter", start)
    start()  # the first, which exits at once
    now = [1000.0]
    monkeypatch.setattr(daemon.time, "monotonic", lambda: now[0])
    for _ in range(10):
        gateway._watch_starter()
    assert len(started) == 1 + daemon.MAX_RESTARTS_PER_MINUTE
    now[0] += 61
    gateway._watch_starter()
    assert len(started) == 2 + daemon.MAX_RESTARTS_PER_MINUTE
