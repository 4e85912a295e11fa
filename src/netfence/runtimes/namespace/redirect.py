"""The workload's only ways out, set in its network namespace before it starts: every TCP
connection to an address outside loopback lands at the fence's transparent listener (or
is reset when the backend has none), DNS to any address lands at the fence's DNS, and
any other UDP is refused at once.

Loopback is the namespace's only interface; a default route through it (with a source
address: without one an IPv4 connect() to a routed address finds none and hangs) gives
every address a route, and nftables' NAT on the output hook turns each connection into
one to 127.0.0.1 or ::1, where the kernel keeps the original destination for
SO_ORIGINAL_DST. The namespace belongs to the host's user namespace: the workload, with
no capability there, cannot change the routes or the rules.
"""

from __future__ import annotations

import subprocess

from netfence.errors import NetfenceError
from netfence.runtimes.netns import HAS_IPV6

# A nat chain of the inet family on the output hook: nft 1.0.6 (Debian 12) refuses the
# symbolic `dstnat` priority there.
_NAT_PRIORITY = -100


def ruleset(dns_port: int, transparent_port: int | None) -> str:
    """The namespace's nftables rules (nft -f syntax)."""
    tcp = (f"meta l4proto tcp redirect to :{transparent_port}" if transparent_port is not None
           else "meta l4proto tcp reject with tcp reset")
    return f"""\
table inet netfence {{
  chain nat_out {{
    type nat hook output priority {_NAT_PRIORITY}; policy accept;
    meta l4proto {{ tcp, udp }} th dport {dns_port} redirect to :{dns_port}
    ip daddr 127.0.0.0/8 return
    ip6 daddr ::1 return
    {tcp}
  }}
  chain filter_out {{
    type filter hook output priority 0; policy accept;
    ip daddr 127.0.0.0/8 accept
    ip6 daddr ::1 accept
    meta l4proto tcp reject with tcp reset
    reject
  }}
}}
"""


def _run(argv: list[str], stdin: str) -> None:
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=10)
    except FileNotFoundError:
        raise NetfenceError(f"{argv[0]} is not installed", remedy=_REMEDIES[argv[0]]) from None
    if done.returncode != 0:
        if "No such file" in done.stderr and argv[-3] == "nft":
            raise NetfenceError("nft (nftables) is not installed",
                                remedy=_REMEDIES["nft"])
        raise NetfenceError(f"{' '.join(argv)} (in the workload's namespace): "
                            f"{done.stderr.strip() or done.returncode}")


_REMEDIES = {"ip": "apt-get install iproute2", "nft": "apt-get install nftables"}


def install(netns: str, dns_port: int, transparent_port: int | None) -> None:
    """Routes and rules into the named network namespace (root only): two processes."""
    routes = "route add default dev lo src 127.0.0.1\n"
    if HAS_IPV6:
        routes += "route add ::/0 dev lo\n"
    _run(["ip", "-n", netns, "-batch", "-"], routes)
    _run(["ip", "netns", "exec", netns, "nft", "-f", "-"], ruleset(dns_port, transparent_port))
