"""Drive the real `netfence` command from tests, and check that nothing is left behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

STATE_ROOT = Path("/run/netfence")
BACKENDS = ("envoy", "squid")  # every fence test runs for each (the `proxy` fixture)
NETNS_DIR = Path("/run/netns")


def netfence_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "netfence", *args]


def netfence(*args: str, input: bytes | None = None, timeout: float = 60,
             check: bool = False) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(netfence_argv(*args), input=input, capture_output=True,
                          timeout=timeout, check=check)


def leftovers() -> list[str]:
    """Namespaces, state dirs and fence processes that a finished run must have removed."""
    found: list[str] = []
    if NETNS_DIR.is_dir():
        found += [f"netns {p.name}" for p in NETNS_DIR.iterdir() if p.name.startswith("netfence-")]
    if STATE_ROOT.is_dir():
        found += [f"state {p}" for p in STATE_ROOT.iterdir()]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        # A proxy's config path, or the sandbox's `--tmpfs /run/netfence`.
        if str(STATE_ROOT) in cmdline and int(proc.name) != os.getpid():
            found.append(f"process {proc.name}: {cmdline[:120]}")
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
