"""A warm `netfence run --gateway`: handed to the gateway's starter, done by one of its
workers, ended here.

While a gateway runs, its starter (cli/starter.py: a netfence with every module a run
needs imported) forks a worker per run. The `netfence run` process, the one an MCP client
starts and the one that becomes the workload, then imports nothing of netfence but this
module (stdlib only, and that only when the command line asks for the gateway): it sends
its arguments, environment, working directory and stdout/stderr, and ends as the worker
says: exit with the run's status, run the command itself (the worker cannot serve it: a
fence of its own, --detach), or exec the workload's forwarder with the descriptors the
worker opened for it. A stop signal meanwhile goes to the worker, which acts on it as a
run does. Where no starter answers, nothing happens here: the run goes on as usual.

Spared per start: the Python start-up and netfence's imports (about 0.1 s).
"""

from __future__ import annotations

import os
import sys

# Nothing but os and sys at the top, and C modules where a stdlib module is only a wrapper
# (_socket, _signal): a warm run's process imports this module, and every import is part
# of its start (typing, which pulls re and more in, was a third of it).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import _socket
    from collections.abc import Iterable, Mapping, Sequence
    from typing import Any, NoReturn

# Where the starter listens: in the gateway's directory of the root's state root
# (runtimes/gateway: DIR_NAME; runtimes/state: the root).
ROOT_STATE_DIR = "/run/netfence"
GATEWAY_DIR_NAME = ".gateway"
STARTER_SOCKET = "starter.sock"
STARTER_LOG = "starter.log"
# A request carries the whole environment: far below the socket's buffer.
MAX_MESSAGE = 1 << 20
MAX_FDS = 64
_STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")


class Fallback(BaseException):
    """Raised in a worker: this run is not the starter's to do (its process runs it)."""


class HandedOver(BaseException):
    """Raised in a worker once the run's process has what it needs to exec."""


def starter_socket(state_root: str) -> str:
    return os.path.join(state_root, GATEWAY_DIR_NAME, STARTER_SOCKET)


def state_root() -> str:
    """The root's state root, as runtimes/state decides it."""
    return os.environ.get("NETFENCE_STATE_DIR") or ROOT_STATE_DIR


# -- the wire: one message per packet, descriptors beside it ------------------------------
#
# A warm run's process imports nothing it can do without: the C modules _socket and
# marshal (builtin) rather than socket.py (selectors, array) and json (re): together about
# 6 ms of its start. marshal's format 4 holds what a message is (dicts, lists, strings,
# integers, booleans) alike from Python 3.4 on, whichever Python the starter runs; only
# root reaches either end (the socket is in the gateway's 0700 directory, the starter
# checks its peer), and a message that does not decode is an error, never code.

_FORMAT = 4
_INT = 4  # a descriptor's size in SCM_RIGHTS (a C int)


def send(sock: _socket.socket, message: Mapping[str, Any], fds: Sequence[int] = ()) -> None:
    import _socket
    import marshal

    rights = b"".join(fd.to_bytes(_INT, sys.byteorder, signed=True) for fd in fds)
    sock.sendmsg([marshal.dumps(dict(message), _FORMAT)],
                 [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)] if fds else [])


def receive(sock: _socket.socket) -> tuple[dict[str, Any], list[int]] | None:
    """The next message and the descriptors that came with it (now this process's), or
    None once the other side has closed."""
    import _socket
    import marshal

    data, ancillary, flags, _address = sock.recvmsg(MAX_MESSAGE,
                                                    _socket.CMSG_SPACE(MAX_FDS * _INT))
    fds = [int.from_bytes(payload[i:i + _INT], sys.byteorder, signed=True)
           for level, kind, payload in ancillary
           if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS
           for i in range(0, len(payload) - len(payload) % _INT, _INT)]
    try:
        if flags & (_socket.MSG_TRUNC | _socket.MSG_CTRUNC):
            raise ValueError("a starter message was cut short")
        if not data:
            for fd in fds:
                os.close(fd)
            return None
        try:
            message = marshal.loads(data)
        except (EOFError, ValueError, TypeError):
            message = None
        if not isinstance(message, dict):
            raise ValueError("a starter message is not an object")
    except ValueError:
        for fd in fds:
            os.close(fd)
        raise
    return message, fds


# -- the run's side -----------------------------------------------------------------------


def wanted(argv: Sequence[str]) -> bool:
    """Whether to ask a starter at all: root, `run`, the gateway asked for, no --detach.
    A rough look (the worker parses the command line and may still hand it back)."""
    if os.geteuid() != 0 or not argv or argv[0] != "run":
        return False
    options = argv[1:argv.index("--")] if "--" in argv else argv[1:]
    if "--detach" in options:
        return False
    return "--gateway" in options or os.environ.get("NETFENCE_GATEWAY") == "1"


def run_warm(argv: list[str]) -> None:
    """Have a starter's worker do `netfence ARGV`; returns only when this process is to
    run it itself (no starter answers, or it hands the run back)."""
    if wanted(argv):
        ask_starter(argv, state_root())


def ask_starter(argv: list[str], root: str) -> None:
    """run_warm, with the starter of the state root `root`."""
    # (signal.py would import enum; _signal has no type stub)
    import _signal as signal  # type: ignore[import-not-found]
    import _socket

    try:  # else the socket itself could take the number of a closed one
        os.fstat(1)
        os.fstat(2)
    except OSError:
        return
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
    try:
        sock.connect(starter_socket(root))
    except OSError:
        sock.close()
        return
    stops: list[int] = [getattr(signal, name) for name in _STOP_SIGNALS]
    caught: list[int] = []
    worker: list[int] = []  # the worker's pidfd, once it said who it is

    def to_worker(signum: int) -> None:
        for pidfd in worker:
            try:  # noqa: SIM105 (contextlib: imports this process does without)
                signal.pidfd_send_signal(pidfd, signum)
            except ProcessLookupError:  # it has answered and gone
                pass

    def forward(signum: int, _frame: object) -> None:
        caught.append(signum)
        to_worker(signum)

    previous = {s: signal.signal(s, forward) for s in stops}
    umask = os.umask(0o077)
    os.umask(umask)
    try:
        send(sock, {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ),
                    "umask": umask, "root": root}, (1, 2))
        sent = True
    except OSError:  # the working directory is gone, say: the run says what follows
        sent = False
    if sent:  # what an exec needs, imported while the worker works (ctypes: a few ms)
        import fcntl  # noqa: F401
        import signal as _  # noqa: F401

        import netfence.keyring  # noqa: F401
    came = False
    while True:
        got = receive(sock) if sent else None
        if got is None and came:
            _leave(128 + caught[0] if caught else _lost(root))
        message, fds = got or ({"fallback": True}, [])  # no worker came: nothing was done
        if "worker" in message:
            came = True
            try:  # noqa: SIM105 (as above)
                worker.append(os.pidfd_open(int(message["worker"])))
            except ProcessLookupError:  # gone already: its answer is sent
                pass
            for signum in caught:
                to_worker(signum)
        elif "exit" in message:
            _leave(int(message["exit"]))
        elif "exec" in message:
            _exec(message, fds, caught, stops)
        else:  # fallback: as if no starter had answered (a signal that came meanwhile too)
            sock.close()
            for fd in (*fds, *worker):
                os.close(fd)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            for signum in caught:
                os.kill(os.getpid(), signum)
            return


def _lost(root: str) -> int:
    log = os.path.join(root, GATEWAY_DIR_NAME, STARTER_LOG)
    print(f"netfence: error: the gateway's starter ended this run without an answer "
          f"(see {log}; `netfence run` without --gateway does not use it)", file=sys.stderr)
    return 1


def _leave(code: int) -> NoReturn:
    _flush()
    os._exit(code)


def _exec(message: Mapping[str, Any], fds: list[int], caught: list[int],
          stops: Iterable[int]) -> NoReturn:
    """Become the workload's forwarder, as forwarder.exec_into does in a worker-less run:
    the worker's descriptors at the numbers its argv names, only those inherited."""
    import fcntl
    import signal

    from netfence.errors import NetfenceError
    from netfence.keyring import leave_session_keyring

    targets = [int(fd) for fd in message["keep"]]
    argv = [str(a) for a in message["exec"]]
    try:
        if not targets or len(targets) != len(fds):
            raise ValueError("the starter sent other descriptors than it named")
        # Above every number in play first: a received one may sit on another's target.
        above = max([*targets, *fds]) + 1
        moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, above) for fd in fds]
        for fd in fds:
            os.close(fd)
        for fd, target in zip(moved, targets, strict=True):
            os.dup2(fd, target)
            os.close(fd)
        inherit_only(targets)
        signal.pthread_sigmask(signal.SIG_BLOCK, stops)
        if caught:  # the workload's fence is up: its daemon removes it once this has exited
            _leave(128 + caught[0])
        leave_session_keyring()
        _flush()
        os.execve(argv[0], argv, {str(k): str(v) for k, v in message["env"].items()})
    except (OSError, ValueError, NetfenceError) as exc:
        # Its fence goes once this process has exited, as after any failed start.
        print(f"netfence: error: cannot start the workload's forwarder ({argv[0]}): {exc}",
              file=sys.stderr)
        _leave(1)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105 (as above)
            stream.flush()
        except (OSError, ValueError):
            pass


def inherit_only(keep: Iterable[int]) -> list[tuple[int, bool]]:
    """Make exactly `keep` (and 0-2) inheritable across an exec, every other descriptor
    close-on-exec (none is closed): what was changed, (fd, was inheritable), to undo."""
    keep = set(keep)
    changed: list[tuple[int, bool]] = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd <= 2:
            continue
        try:  # the listing's own descriptor, now closed
            inheritable = os.get_inheritable(fd)
            if inheritable != (fd in keep):
                os.set_inheritable(fd, fd in keep)
                changed.append((fd, inheritable))
        except OSError:
            pass
    return changed


# -- the worker's side --------------------------------------------------------------------


class Worker:
    """In a starter's worker: the run's process (`pid`), reached over `sock`."""

    def __init__(self, sock: _socket.socket, pid: int) -> None:
        self.sock = sock
        self.pid = pid

    def hand_over(self, argv: Sequence[str], env: Mapping[str, str],
                  keep: Sequence[int]) -> NoReturn:
        """The run's process execs `argv` with `env`, inheriting these descriptors (at
        these numbers) and its stdin/stdout/stderr; this worker's run ends."""
        self.send_exec(argv, env, keep)
        raise HandedOver

    def send_exec(self, argv: Sequence[str], env: Mapping[str, str],
                  keep: Sequence[int]) -> None:
        """As hand_over, with this worker going on (it has more to do for the run: raise
        HandedOver when done)."""
        _flush()
        send(self.sock, {"exec": list(argv), "env": dict(env), "keep": list(keep)}, keep)


_current: Worker | None = None


def worker() -> Worker | None:
    """This process's run, when it is a starter's worker."""
    return _current


def become_worker(handle: Worker) -> None:
    global _current
    _current = handle
