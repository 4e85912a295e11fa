"""netfilter.run_all_in and begin_all_in: independent commands in a namespace at the same
time (here the caller's own: the commands are shell lines, nothing is changed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from netfence.errors import NetfenceError
from netfence.runtimes.netfilter import begin_all_in, run_all_in, run_in

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="nsenter needs root")
OWN = "/proc/self/ns/net"


def test_each_gets_its_input_and_the_outputs_come_back_in_order() -> None:
    outs = run_all_in(OWN, [(["sh", "-c", "cat; echo one"], "a\n"),
                            (["sh", "-c", "cat; echo two"], "b" * 200_000)], "a test's")
    assert outs == ["a\none\n", "b" * 200_000 + "two\n"]
    assert run_in(OWN, ["cat"], "solo", "a test's") == "solo"


def test_they_run_at_the_same_time(tmp_path: Path) -> None:
    # The first waits (bounded) for a file only the second makes.
    flag = tmp_path / "flag"
    wait = (f"i=0; while [ ! -e {flag} ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); "
            f"done; [ -e {flag} ] && echo seen")
    outs = run_all_in(OWN, [(["sh", "-c", wait], ""), (["sh", "-c", f"touch {flag}"], "")],
                      "a test's")
    assert outs[0] == "seen\n"


def test_the_first_failure_in_order_is_the_error_and_all_have_ended(tmp_path: Path) -> None:
    last = tmp_path / "last"
    with pytest.raises(NetfenceError, match=r"sh in a test's network namespace: first bad"):
        run_all_in(OWN, [(["sh", "-c", "echo first bad >&2; exit 3"], ""),
                         (["sh", "-c", f"sleep 0.2; echo second bad >&2; touch {last}; "
                                       "exit 4"], "")], "a test's")
    assert last.exists()  # waited for, not left running


def test_begun_they_run_while_the_caller_works_and_result_waits_for_them(tmp_path: Path) -> None:
    # The command waits (bounded) for a file the caller makes after begin_all_in returned.
    flag, done = tmp_path / "flag", tmp_path / "done"
    wait = (f"i=0; while [ ! -e {flag} ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); "
            f"done; sleep 0.1; touch {done}; [ -e {flag} ] && echo seen")
    running = begin_all_in(OWN, [(["sh", "-c", wait], "")], "a test's")
    flag.touch()
    assert running.result() == ["seen\n"]
    assert done.exists()  # ended when result returned
    running.close()  # nothing left: a no-op


def test_begun_and_closed_they_are_killed_and_waited_for(tmp_path: Path) -> None:
    late = tmp_path / "late"
    running = begin_all_in(OWN, [(["sh", "-c", f"sleep 5; touch {late}"], "")], "a test's")
    running.close()
    assert all(proc.returncode is not None for proc in running.procs)
    assert not late.exists()
