"""Per-workload state directories: one 0700 directory each, with a small JSON record."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import select
import shutil
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path

from netfence.backends.base import STATE_DIR_MODE
from netfence.errors import PrivilegeError, UsageError


def _user_roots() -> list[Path]:
    """Where an ordinary user's workloads (rootless fences) are kept, in order: their own
    runtime directory, else their state directory; never a path another user could
    create first."""
    roots: list[Path] = []
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    with contextlib.suppress(OSError):
        info = os.stat(runtime)
        if runtime.startswith("/") and info.st_uid == os.getuid() and not info.st_mode & 0o077:
            roots.append(Path(runtime, "netfence"))
    state = os.environ.get("XDG_STATE_HOME", "")
    roots.append(Path(state if state.startswith("/") else Path.home() / ".local/state",
                      "netfence"))
    return roots


def _default_root() -> Path:
    if "NETFENCE_STATE_DIR" in os.environ:
        return Path(os.environ["NETFENCE_STATE_DIR"])
    if os.geteuid() == 0:
        return Path("/run/netfence")
    return _user_roots()[0]


def private_roots() -> tuple[Path, ...]:
    """Every state root a fence of this caller's might use (a run from a session without
    XDG_RUNTIME_DIR picks another): each is hidden from every workload, so that no
    fence's configs, logs or Envoy admin socket are within another workload's reach."""
    extra = _user_roots() if os.geteuid() != 0 else []
    return tuple(dict.fromkeys([STATE_ROOT, *extra]))


STATE_ROOT = _default_root()
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,23}$")
RECORD = "workload.json"
CLAIMANT = "claimant"  # pid and start time of the run that claimed the name


def new_name() -> str:
    return "nf-" + os.urandom(3).hex()  # as secrets.token_hex, without importing it (5 ms)


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise UsageError(
            f"invalid workload name {name!r}: use 1-24 lower-case letters, digits and '-'"
        )
    return name


@dataclass
class WorkloadState:
    """What `ps`, `stop` and `logs` need to know about a running workload."""

    name: str
    runtime: str
    proxy: str
    command: list[str]
    supervisor_pid: int
    supervisor_start: str
    started_at: float
    state_dir: str
    url: str | None = None
    decision_logs: list[str] = field(default_factory=list)
    workload_log: str | None = None
    # Where the policy in force came from (`netfence run`'s, then each `netfence update`'s).
    policy: str = ""
    # [pid, start time] of every process the supervisor started (proxies, dnsmasq, the
    # sandbox's init), recorded as each starts: if the supervisor is killed outright, the
    # next netfence command stops them. Not all die with it: dnsmasq drops its privileges,
    # which clears the parent-death signal.
    processes: list[list[int | str]] = field(default_factory=list)
    # What those processes leave behind when killed (ProcessSpec.leaves): removed with them.
    leftovers: list[str] = field(default_factory=list)
    # Fenced by the shared gateway: its daemon, not a supervisor, removes the fence once
    # the process above (the workload's signal forwarder) has exited.
    gateway: bool = False
    # Its network namespace's name when it is not the runtime's usual one (the gateway's
    # are one per run).
    netns: str = ""

    @property
    def alive(self) -> bool:
        return is_running(self.supervisor_pid, self.supervisor_start)

    def own(self, pid: int) -> None:
        """Record a process the supervisor started (the caller saves the record)."""
        self.processes.append([pid, process_start_time(pid) or ""])

    def kill_orphans(self) -> None:
        """SIGKILL the recorded processes that still run (same PID and start time), and
        remove what they leave behind."""
        for pid, started in self.processes:
            if isinstance(pid, int) and isinstance(started, str):
                kill(pid, started)
        remove_leftovers(self.leftovers)


def remove_leftovers(patterns: list[str]) -> None:
    """Remove the files matching these patterns (a fence process's, once it is stopped)."""
    import glob

    for pattern in patterns:
        for path in glob.glob(pattern):
            with contextlib.suppress(OSError):
                os.unlink(path)


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat from field 3 (the state) on."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def process_start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat: with the PID, it identifies one process (no PID reuse)."""
    fields = _stat(pid)
    return fields[19] if fields else None


def parent_of(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields else None


def is_running(pid: int, started: str) -> bool:
    """Whether that very process runs: a zombie has finished (only its parent's wait is
    missing), so `stop` need not wait for a reaper."""
    fields = _stat(pid)
    return bool(started) and fields is not None and fields[19] == started and fields[0] != "Z"


def kill(pid: int, started: str, signum: int = signal.SIGKILL) -> None:
    """Signal that very process, if it still runs: through a pidfd opened before its
    identity is checked, so a PID reused in between is never hit."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        if is_running(pid, started):
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signum)
    finally:
        os.close(fd)


def wait_gone(pid: int, started: str, timeout: float) -> bool:
    """Whether that very process has exited (a zombie has) within `timeout` seconds: woken
    by its pidfd the moment it exits, not by polling."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return True
    try:
        if not is_running(pid, started):
            return True
        exited, _, _ = select.select([fd], [], [], timeout)
        return bool(exited) or not is_running(pid, started)
    finally:
        os.close(fd)


def state_dir(name: str) -> Path:
    return STATE_ROOT / name


def claim(name: str, pid: int | None = None) -> Path:
    """Create the workload's state dir for the run of process `pid` (default: this one); a
    live workload of that name is an error, also one still starting (its supervisor has
    not saved a record yet). One line when the state root is not the caller's to write."""
    try:
        return _claim(name, os.getpid() if pid is None else pid)
    except PermissionError:
        raise PrivilegeError(
            f"cannot create the workload's state directory under {STATE_ROOT}",
            remedy="run with sudo, or set NETFENCE_STATE_DIR to a directory of yours"
        ) from None


def _claim(name: str, pid: int) -> Path:
    STATE_ROOT.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
    path = state_dir(name)
    # One claim at a time: two runs of one name must not both find the place free.
    fd = os.open(STATE_ROOT, os.O_RDONLY | os.O_DIRECTORY)  # flock works on a directory
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        existing = load(name)
        if (existing is not None and existing.alive) or claimant_alive(path):
            raise UsageError(f"a workload named {name!r} is already running",
                             remedy=f"netfence stop {name}, or choose another --name")
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(mode=STATE_DIR_MODE)
        # Until the supervisor saves its record, this says the name is taken.
        (path / CLAIMANT).write_text(f"{pid} {process_start_time(pid) or ''}")
    finally:
        os.close(fd)  # closing releases the lock
    return path


def claimant_alive(path: Path) -> bool:
    """Whether the run that claimed this state dir still runs."""
    try:
        pid, _, started = (path / CLAIMANT).read_text().partition(" ")
    except OSError:
        return False
    return pid.isdigit() and bool(started) and process_start_time(int(pid)) == started


def save(state: WorkloadState) -> None:
    path = Path(state.state_dir) / RECORD
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(asdict(state), fh)
    tmp.replace(path)


def _unreadable() -> PrivilegeError:
    return PrivilegeError(f"the workloads' state in {STATE_ROOT} is root's",
                          remedy="run it with sudo")


def load(name: str) -> WorkloadState | None:
    try:
        data = json.loads((state_dir(name) / RECORD).read_text())
        record = WorkloadState(**data)
    except PermissionError:
        raise _unreadable() from None
    except (OSError, ValueError, TypeError):
        return None
    # A record names its own directory, or it is not one: its state_dir is what a stale
    # record's reaping removes.
    if record.name != name or Path(record.state_dir) != state_dir(name):
        return None
    return record


def all_states() -> list[WorkloadState]:
    try:
        if not STATE_ROOT.is_dir():
            return []
        entries = sorted(p for p in STATE_ROOT.iterdir() if p.is_dir())
    except PermissionError:
        raise _unreadable() from None
    states = (load(p.name) for p in entries)
    return [s for s in states if s is not None]
