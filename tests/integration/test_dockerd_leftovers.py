"""The test session's Docker Engine after a killed session: what that session's dockerd
changed on the host is put back from its record before a new one starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from netfence.runtimes.state import process_start_time
from tests.support.dockerd import (
    OUTSIDE_DIRS,
    TABLES,
    _chains,
    _links,
    forward_policy,
    remove_stale,
)

# In scripts/test's containers lane, beside the session's dockerd: what remove_stale puts
# back (iptables rules, bridges, containerd's directories) is where that daemon has its own.
pytestmark = [pytest.mark.integration, pytest.mark.containers]

STALE_CHAIN = "DOCKER-NFTEST-STALE"


def test_a_killed_sessions_daemon_chains_and_policy_are_put_back(tmp_path: Path) -> None:
    daemon = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    work = tmp_path / "work"
    work.mkdir()
    marker = tmp_path / "marker.json"
    policy = forward_policy()
    marker.write_text(json.dumps({
        "pid": daemon.pid, "started": process_start_time(daemon.pid), "work": str(work),
        "chains": {t: sorted(_chains(t)) for t in TABLES}, "links": sorted(_links()),
        "policy": policy, "sysctls": {},
        # What exists now is not the killed daemon's (the session's dockerd may use it).
        "outside": [str(p) for p in OUTSIDE_DIRS if p.exists()]}))
    subprocess.run(["iptables", "-w", "10", "-N", STALE_CHAIN], check=True, timeout=30)
    subprocess.run(["iptables", "-w", "10", "-A", "FORWARD", "-j", STALE_CHAIN], check=True,
                   timeout=30)
    try:
        remove_stale(marker)
        # The recorded daemon (this very process) was stopped; its chain, the rule
        # jumping to it, its directory and the record are gone; the policy is as it was.
        assert daemon.wait(timeout=10) == -9
        assert STALE_CHAIN not in _chains("filter")
        rules = subprocess.run(["iptables", "-w", "10", "-S", "FORWARD"], capture_output=True,
                               text=True, check=True, timeout=30).stdout
        assert STALE_CHAIN not in rules
        assert forward_policy() == policy
        assert not work.exists() and not marker.exists()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        subprocess.run(["iptables", "-w", "10", "-D", "FORWARD", "-j", STALE_CHAIN],
                       capture_output=True, timeout=30)
        subprocess.run(["iptables", "-w", "10", "-X", STALE_CHAIN], capture_output=True,
                       timeout=30)
