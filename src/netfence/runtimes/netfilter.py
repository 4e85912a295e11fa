"""Routes and nftables rules set in a network namespace from the host: how both runtimes
leave a workload no way out but its fence. The programs are the host's; as root, or as the
user who owns the namespace through a user namespace of theirs (`enter`)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence

from netfence.errors import NetfenceError

# A nat chain of the inet family: nft 1.0.6 (Debian 12) refuses the symbolic `dstnat`
# priority for one on the output hook; a number works everywhere.
NAT_PRIORITY = -100
# The host's own programs, sbin included: an ordinary user's PATH often lacks it.
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def program_path() -> str:
    """Where the fence's programs are looked for: the caller's PATH, then the system's
    (dnsmasq and Squid live in sbin, which an ordinary user's PATH lacks)."""
    return os.pathsep.join(p for p in (os.environ.get("PATH"), SYSTEM_PATH) if p)

_REMEDIES = {"nsenter": "apt-get install util-linux", "ip": "apt-get install iproute2",
             "nft": "apt-get install nftables"}


def run_in(netns: str, argv: Sequence[str], stdin: str, where: str,
           pass_fds: Sequence[int] = (), enter: Sequence[str] = ()) -> str:
    """`argv` run in the network namespace at path `netns` (or in the namespaces nsenter's
    arguments `enter` name), fed `stdin`; its output. A failure is one line naming the
    program and `where` (whose namespace it was)."""
    try:
        done = subprocess.run(["nsenter", *(enter or [f"--net={netns}"]), *argv], input=stdin,
                              capture_output=True, text=True, timeout=10, pass_fds=pass_fds,
                              env={"PATH": SYSTEM_PATH})
    except FileNotFoundError:
        raise NetfenceError("nsenter is not installed", remedy=_REMEDIES["nsenter"]) from None
    if done.returncode != 0:
        program = argv[0]
        if "No such file" in done.stderr and program in _REMEDIES:
            raise NetfenceError(f"{program} is not installed", remedy=_REMEDIES[program])
        raise NetfenceError(f"{program} in {where} network namespace: "
                            f"{done.stderr.strip() or done.returncode}")
    return done.stdout
