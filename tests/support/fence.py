"""Drive the real `netfence` command from tests, and check that nothing is left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

STATE_ROOT = Path("/run/netfence")
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
        if str(STATE_ROOT) + "/" in cmdline and int(proc.name) != os.getpid():
            found.append(f"process {proc.name}: {cmdline[:120]}")
    return found
