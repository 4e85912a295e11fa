"""netfence.__main__.leave: exit codes, output and atexit handlers as a normal exit has
them, without the interpreter's teardown."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _run(body: str) -> subprocess.CompletedProcess[str]:
    code = "import atexit, sys, threading, time\nfrom netfence.__main__ import leave\n" + body
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30)


@pytest.mark.parametrize(("code", "status"), [("None", 0), ("0", 0), ("7", 7), ("True", 1)])
def test_the_status_is_the_code_s(code: str, status: int) -> None:
    assert _run(f"leave({code})").returncode == status


def test_a_message_is_printed_with_status_1() -> None:
    done = _run("leave('netfence: bad')")
    assert done.returncode == 1 and done.stderr.strip() == "netfence: bad"


def test_buffered_output_and_atexit_handlers_are_not_lost() -> None:
    # stdout is a pipe here: block-buffered, written only by the flush.
    done = _run("atexit.register(lambda: print('handler', file=sys.stderr))\n"
                "print('out', end='')\nsys.stderr.write('err')\nleave(3)")
    assert (done.returncode, done.stdout, done.stderr) == (3, "out", "errhandler\n")


def test_a_running_thread_is_waited_for_as_by_a_normal_exit() -> None:
    done = _run("def late():\n    time.sleep(0.3)\n    print('thread done', flush=True)\n"
                "threading.Thread(target=late).start()\nleave(4)")
    assert (done.returncode, done.stdout) == (4, "thread done\n")


def test_the_cli_leaves_through_it() -> None:
    done = subprocess.run([sys.executable, "-m", "netfence", "check", "--allow-host",
                           "a.example", "b.example"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1 and "b.example" in done.stdout
