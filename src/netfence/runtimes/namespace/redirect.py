"""The workload's only ways out, set in its network namespace before it starts: every TCP
connection to an address outside loopback lands at the fence's transparent listener (or
is reset when the backend has none), DNS to any address lands at the fence's DNS, and
any other UDP is refused at once.

Loopback is the namespace's only interface; a default route through it (with a source
address: without one an IPv4 connect() to a routed address finds none and hangs) gives
every address a route, and nftables' NAT on the output hook turns each connection into
one to 127.0.0.1 or ::1, where the kernel keeps the original destination for
SO_ORIGINAL_DST. The namespace belongs to the host's user namespace (rootless: to the
holder's, holder.py, where the workload sits in a nested one): the workload, with no
capability there, cannot change the routes or the rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from netfence.runtimes.netfilter import NAT_PRIORITY, Running, begin_all_in
from netfence.runtimes.netns import HAS_IPV6


def ruleset(dns_port: int, transparent_port: int | None) -> str:
    """The namespace's nftables rules (nft -f syntax)."""
    tcp = (f"meta l4proto tcp redirect to :{transparent_port}" if transparent_port is not None
           else "meta l4proto tcp reject with tcp reset")
    return f"""\
table inet netfence {{
  chain nat_out {{
    type nat hook output priority {NAT_PRIORITY}; policy accept;
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


def install(netns: Path, dns_port: int, transparent_port: int | None,
            enter: Sequence[str] = ()) -> None:
    """Routes and rules into the network namespace at `netns` (entered with nsenter's
    arguments `enter` when given: netfilter.run_in)."""
    begin(netns, dns_port, transparent_port, enter).result()


def begin(netns: Path, dns_port: int, transparent_port: int | None,
          enter: Sequence[str] = ()) -> Running:
    """install's programs started: they are in once `result()` returns (without an error)."""
    routes = "route add default dev lo src 127.0.0.1\n"
    if HAS_IPV6:
        routes += "route add ::/0 dev lo\n"
    # Routes and rules are independent of each other: set at the same time.
    return begin_all_in(str(netns), [(["ip", "-batch", "-"], routes),
                                     (["nft", "-f", "-"], ruleset(dns_port, transparent_port))],
                        "the workload's", enter=enter)
