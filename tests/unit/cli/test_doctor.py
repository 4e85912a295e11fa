"""`netfence doctor`."""

from __future__ import annotations

import os
import subprocess
import sys


def test_doctor_names_what_is_missing_and_the_fix() -> None:
    # A PATH without the system binaries: squid, dnsmasq, bwrap are "missing".
    done = subprocess.run([sys.executable, "-m", "netfence", "doctor"], capture_output=True,
                          timeout=60, env={**os.environ, "PATH": "/nonexistent"})
    assert done.returncode == 1
    err = done.stderr.decode()
    assert "MISSING squid" in err and "fix: apt-get install squid" in err, err
    assert "fix: apt-get install bubblewrap" in err
    assert "MISSING nftables" in err and "fix: apt-get install nftables" in err, err
    assert err.strip().splitlines()[-1].startswith("netfence: some checks failed")
    assert done.stdout == b""
