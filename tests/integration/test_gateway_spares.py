"""runtimes/gateway/spares.py against the kernel: a namespace made ahead (loopback up, the
redirect in), only when due; taken under a workload's name; removed at the end, and a
dead daemon's spare removed by the next. Root only."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netfence.runtimes import netns, state
from netfence.runtimes.gateway import spares

TAKEN = "netfence-nf-spare-test-1"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


def _ours() -> list[Path]:
    return sorted(netns.NETNS_DIR.glob(f"{spares.PREFIX}{os.getpid()}-*"))


@pytest.fixture
def made() -> Iterator[spares.Spares]:
    made = spares.Spares()
    try:
        yield made
    finally:
        made.close()
        netns.remove(TAKEN)
        for path in _ours():
            netns.remove(path.name)


def _until_due(made: spares.Spares) -> None:
    deadline = time.monotonic() + 5
    while (made.due_in() or 0) > 0 and time.monotonic() < deadline:
        time.sleep(0.02)


def test_a_spare_is_made_when_due_and_quiet_then_taken_under_a_workloads_name(
        made: spares.Spares) -> None:
    assert not made.take(TAKEN)  # none yet: the caller makes its own
    assert (made.due_in() or 0) > 0
    made.refill(quiet=True)  # not due yet: a start has just come
    _until_due(made)
    made.refill(quiet=False)  # due, but a start is in progress
    assert _ours() == []
    made.refill(quiet=True)
    (spare,) = _ours()
    assert made.due_in() is None  # one is enough
    # Made whole: loopback up and the redirect in.
    shown = subprocess.run(["ip", "-n", spare.name, "-o", "link", "show"], capture_output=True,
                           text=True, check=True).stdout
    assert "lo: <LOOPBACK,UP,LOWER_UP>" in shown, shown
    rules = subprocess.run(["nsenter", f"--net={spare}", "nft", "list", "table", "inet",
                            "netfence"], capture_output=True, text=True)
    assert rules.returncode == 0 and "redirect to :" in rules.stdout, rules.stderr
    namespace = spare.stat().st_ino
    assert made.take(TAKEN)
    assert netns.netns_path(TAKEN).stat().st_ino == namespace and not spare.exists()
    assert not made.take(f"{TAKEN}-x")  # taken: none until the next is made


def test_the_spare_goes_at_close_and_a_dead_daemons_at_the_next_start(
        made: spares.Spares) -> None:
    _until_due(made)
    made.refill(quiet=True)
    (spare,) = _ours()
    made.close()
    assert not spare.exists()
    made.refill(quiet=True)  # closed: no more
    assert _ours() == []
    # A daemon that was killed left its spare: a process that has exited stands for it,
    # and one whose PID a later process got (this one's, with another start time).
    dead = subprocess.Popen(["true"])
    dead.wait()
    me = os.getpid()
    started = state.process_start_time(me)
    assert started
    left = spares.make(f"{spares.PREFIX}{dead.pid}-{started}-1")
    recycled = spares.make(f"{spares.PREFIX}{me}-{int(started) - 1}-1")
    mine = spares.make(f"{spares.PREFIX}{me}-{started}-9")
    try:
        spares.remove_stale()
        assert not left.exists() and not recycled.exists()
        assert mine.exists()  # a live daemon's stays
    finally:
        for each in (left, recycled, mine):
            netns.remove(each.name)
