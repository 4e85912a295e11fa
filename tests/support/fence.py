"""Drive the real `netfence` command from tests, and check that nothing is left behind.

A test runs netfence as root, or rootless as the session's unprivileged test user
(tests/support/rootless.py) while `acting_as(user)` is in force (the `privilege`
fixture): then `netfence()` and `netfence_argv()` run it as that user, with the user's
own environment, and `state_root()` is the user's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from netfence.runtimes import state
from tests.support.rootless import RootlessUser

# Root's: /run/netfence, or NETFENCE_STATE_DIR (scripts/test gives its containers lane one
# of its own, so that the lanes' leftover checks do not see each other's workloads).
STATE_ROOT = state.STATE_ROOT
BACKENDS = ("envoy", "squid")  # every fence test runs for each (the `proxy` fixture)
NETNS_DIR = Path("/run/netns")
PRIVILEGES = ("root", "rootless")  # the `privilege` fixture's values

# The rootless test user while a test acts as it; every user the session made (their
# state and processes are leftovers too).
_acting: RootlessUser | None = None
_known: list[RootlessUser] = []


def register(user: RootlessUser) -> None:
    _known.append(user)


@contextmanager
def acting_as(user: RootlessUser) -> Iterator[RootlessUser]:
    global _acting
    _acting = user
    try:
        yield user
    finally:
        _acting = None


@contextmanager
def acting_as_root() -> Iterator[None]:
    """Root's netfence for a while, inside a rootless test."""
    global _acting
    user, _acting = _acting, None
    try:
        yield
    finally:
        _acting = user


# On a test, class or module that uses the `privilege` fixture: it runs as root, then
# again rootless as the test user, with the same assertions.
both_privileges = pytest.mark.parametrize("privilege", PRIVILEGES, indirect=True)


def root_only(reason: str) -> None:
    """Skip the rootless case of a test that cannot hold without root for a platform
    reason (`reason` says which, and where the rootless behaviour is tested instead)."""
    if _acting is not None:
        pytest.skip(f"root only: {reason}")


def acting() -> RootlessUser | None:
    """The rootless test user the current test acts as; None: root."""
    return _acting


def state_root() -> Path:
    """Where the netfence that netfence() runs keeps its workloads."""
    return _acting.state_root if _acting else STATE_ROOT


def netfence_argv(*args: str) -> list[str]:
    if _acting is not None:
        return _acting.netfence_argv(*args)
    return [sys.executable, "-m", "netfence", *args]


def netfence(*args: str, input: bytes | None = None, timeout: float = 60,
             check: bool = False) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(netfence_argv(*args), input=input, capture_output=True,
                          timeout=timeout, check=check)


def names_path(cmdline: str, path: Path) -> bool:
    """Whether a command line (its words joined by spaces) names `path` or a path under it;
    /run/netfence-x is not under /run/netfence."""
    return re.search(rf"{re.escape(str(path))}(?:/|\s|$)", cmdline) is not None


def leftovers() -> list[str]:
    """Namespaces, state dirs and fence processes that a finished run must have removed."""
    found: list[str] = []
    if NETNS_DIR.is_dir():
        # A workload's, or a gateway's namespace made ahead (gateway/spares.py).
        found += [f"netns {p.name}" for p in NETNS_DIR.iterdir()
                  if p.name.startswith(("netfence-", "netfence_spare-"))]
    if STATE_ROOT.is_dir():
        found += [f"state {p}" for p in STATE_ROOT.iterdir()]
    # Squid's shared memory, named after its service (squid.service_name: nf + role).
    found += [f"shm {p.name}" for p in Path("/dev/shm").glob("nf*-cf__*")]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        # A proxy's config path, or the sandbox's `--tmpfs /run/netfence`.
        if names_path(cmdline, STATE_ROOT) and int(proc.name) != os.getpid():
            found.append(f"process {proc.name}: {cmdline[:120]}")
    for user in _known:  # rootless: nothing of a fence outlives it, on disk or running
        if user.state_root.is_dir():
            found += [f"state {p}" for p in user.state_root.iterdir()]
        found += [f"process {pid} of {user.name}: {cmd[:120]}"
                  for pid, cmd in user.processes()]
    return found


@contextmanager
def nothing_new(found: Callable[[], Iterable[str]], grace: float = 10) -> Iterator[None]:
    """Fail if `found()` lists, after the block, what it did not list before it. Compared
    with before, so a developer's own fence is not blamed on a test; what is still being
    torn down gets `grace` seconds."""
    before = set(found())
    yield
    deadline = time.monotonic() + grace
    while (new := set(found()) - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert new == set(), f"left behind: {sorted(new)}"


def fence_process(name: str, program: str) -> int:
    """The PID of the fence's `program` (envoy, squid), as its supervisor recorded it."""
    record = json.loads((state_root() / name / "workload.json").read_text())
    for pid, _started in record["processes"]:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if Path(argv[0].decode()).name == program and b"relay" not in b" ".join(argv):
            return int(pid)
    raise AssertionError(f"no {program} among {record['processes']}")
