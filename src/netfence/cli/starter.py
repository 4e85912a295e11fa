"""The gateway's starter (`netfence gateway-starter`, hidden): the gateway daemon starts it
beside its Envoy; it imports what a `netfence run --gateway` needs once, then forks a
worker for each warm run (handoff.py has the run's side).

A worker is that run, done by a netfence already imported: the run's command line,
environment, working directory, umask, stdout and stderr are taken over, stdin is
/dev/null (the workload's input is not the worker's to read), and the CLI runs as it
would in the run's process. The run's PID is the workload's, so the claim, the record
and the daemon's pidfd name that process (handoff.worker); the worker ends by sending
the forwarder's argv and descriptors, the exit status, or a fallback (a run it cannot
finish: a fence of its own, --detach) before it has printed anything.

Single-threaded, so that forking it is safe; the kernel reaps the workers. Only root
reaches its socket (the gateway's directory is root's, 0700) and it serves root only.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import struct
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from netfence import handoff

BACKLOG = 64


def serve(directory: Path, cli_main: Callable[[str], None],
          warm_up: Callable[[], object]) -> NoReturn:
    """Serve warm runs: each worker calls `cli_main(prog_name)` with the run's sys.argv;
    `warm_up` first does what every run does (imports, a profile read), once."""
    warm_up()
    path = directory / handoff.STARTER_SOCKET
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    previous = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(previous)
    listener.listen(BACKLOG)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the workers
    print(f"starter: serving on {path}", file=sys.stderr, flush=True)
    while True:
        conn, _ = listener.accept()
        try:
            child = os.fork()
        except OSError as exc:  # the run, which has heard nothing yet, runs itself
            print(f"starter: cannot fork a worker: {exc}", file=sys.stderr, flush=True)
            conn.close()
            continue
        if child == 0:
            listener.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            _work(conn, cli_main)
        conn.close()


def _work(conn: socket.socket, cli_main: Callable[[str], None]) -> NoReturn:
    """One run, in a forked worker: never returns."""
    answer: dict[str, Any] | None
    try:
        answer = {"exit": _run(conn, cli_main)}
    except handoff.HandedOver:
        answer = None
    except handoff.Fallback:
        answer = {"fallback": True}
    except BaseException:
        traceback.print_exc()
        answer = {"exit": 1}
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    if answer is not None:
        with contextlib.suppress(OSError):  # the run's process is gone
            handoff.send(conn, answer)
    atexit._run_exitfuncs()  # as a run's exit does (__main__.leave): logging, coverage
    os._exit(0)


def _run(conn: socket.socket, cli_main: Callable[[str], None]) -> int:
    try:
        pid, request, fds = _request(conn)
        _take_over(fds, request)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # Nothing done yet: the run's process runs it (and says what is wrong, if anything).
        print(f"starter: {exc!r}", file=sys.stderr, flush=True)
        raise handoff.Fallback from None
    handoff.send(conn, {"worker": os.getpid()})
    handoff.become_worker(handoff.Worker(conn, pid))
    sys.argv = ["netfence", *request["argv"]]
    try:
        cli_main("netfence")
    except SystemExit as exc:
        return _exit_status(exc.code)
    return 0


def _request(conn: socket.socket) -> tuple[int, dict[str, Any], list[int]]:
    """The run's PID, its request and its stdout and stderr."""
    got = handoff.receive(conn)
    if got is None:
        raise ValueError("no request")
    request, fds = got
    pid, uid, _gid = struct.unpack("3i", conn.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    if uid != 0 or len(fds) != 2:
        raise ValueError(f"a request from uid {uid} with {len(fds)} descriptors")
    from netfence.runtimes import state

    if request["root"] != str(state.STATE_ROOT):
        raise ValueError(f"a run for the state root {request['root']}")
    return pid, request, fds


def _take_over(fds: list[int], request: dict[str, Any]) -> None:
    """The run's working directory, stdout and stderr, umask, environment and stop
    signals' defaults."""
    os.chdir(request["cwd"])
    devnull = os.open(os.devnull, os.O_RDONLY)
    for fd, number in zip((devnull, *fds), (0, 1, 2), strict=True):
        os.dup2(fd, number)
        os.close(fd)
    os.umask(int(request["umask"]))
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in request["env"].items()})
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_DFL)


def _exit_status(code: object) -> int:
    """As the interpreter turns SystemExit(code) into a status."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1
