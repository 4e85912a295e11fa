"""The workload container's only ways out, set from the host before it starts.

The workload joins the network namespace of a holder container (`<name>-net`, on the
internal network only, with the workload's address) that netfence sets up first:
- in the holder's namespace, routes to the fence's own addresses only, a default route via
  the egress container, DNS to any address turned into DNS to the dns container, and every
  other packet refused at once except TCP, which goes out by the default route (or is reset
  when the backend has no transparent path);
- in the egress container's namespace, TCP arriving from the internal network for any
  address but the egress's own is redirected to the transparent listener there, where the
  kernel keeps the original destination for SO_ORIGINAL_DST; and nothing is forwarded: the
  egress never routes for the workload, whatever the engine set ip_forward to (Podman: 1).

The redirect happens in the egress's namespace, not the workload's, because the listener
reads the original destination from the conntrack of its own namespace. Both namespaces
belong to the engine's (the host's) user namespace; the workload, with no capability,
cannot change them. netfence enters them with the host's `nsenter`, `ip` and `nft`: root
only, and only when the engine runs on this host, which the namespace's addresses prove.

The redirected packets cross the internal bridge with foreign destinations, so where
br_netfilter is loaded they pass the host's FORWARD chain. Netavark (Podman) adds no rule
for an internal network there (checked with Podman 4.3 and netavark 1.4). Docker Engine
drops packets leaving an internal network for an address outside its subnet
(DOCKER-ISOLATION-STAGE-1; seen with Docker 20.10): the runtime accepts the internal
bridge's own traffic in DOCKER-USER (networks.accept_bridged), else the connections are
dropped (fail-closed).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from netfence.backends import DNS_PORT
from netfence.runtimes.docker.networks import AddressPlan
from netfence.runtimes.netfilter import NAT_PRIORITY, run_in

if TYPE_CHECKING:
    from docker.models.containers import Container



def workload_ruleset(plan: AddressPlan, transparent: bool) -> str:
    """The holder's nftables rules (nft -f syntax)."""
    fence = ", ".join((plan.dns, plan.egress, plan.ingress))
    tcp = "accept" if transparent else "reject with tcp reset"
    return f"""\
table inet netfence {{
  chain nat_out {{
    type nat hook output priority {NAT_PRIORITY}; policy accept;
    meta l4proto {{ tcp, udp }} th dport {DNS_PORT} dnat ip to {plan.dns}:{DNS_PORT}
  }}
  chain filter_out {{
    type filter hook output priority 0; policy accept;
    oifname "lo" accept
    ip daddr {{ {fence} }} accept
    meta l4proto tcp {tcp}
    reject
  }}
}}
"""


def workload_routes(interface: str, plan: AddressPlan) -> str:
    """The holder's routes (ip -batch syntax): on-link only to the fence, so that an
    address of the internal subnet that is not the fence's (the engine's gateway above
    all) is routed to the egress like any other."""
    lines = [f"route del {plan.subnet} dev {interface}"]
    lines += [f"route add {address}/32 dev {interface}"
              for address in (plan.dns, plan.egress, plan.ingress)]
    # Replaced, not added: Docker Engine 20.10 gave the holder a default route of its own
    # here (adding one failed with "File exists"); Podman gives none.
    lines.append(f"route replace default via {plan.egress} dev {interface}")
    return "".join(line + "\n" for line in lines)


def egress_ruleset(interface: str, plan: AddressPlan, transparent_port: int | None) -> str:
    """The egress container's nftables rules (nft -f syntax)."""
    redirect = "" if transparent_port is None else f"""\
  chain prerouting {{
    type nat hook prerouting priority {NAT_PRIORITY}; policy accept;
    iifname "{interface}" ip daddr != {plan.egress} meta l4proto tcp \
redirect to :{transparent_port}
  }}
"""
    return f"""\
table inet netfence {{
{redirect}  chain forward {{
    type filter hook forward priority 0; policy drop;
  }}
}}
"""


@dataclass(frozen=True)
class Netns:
    """A container's network namespace, held open (a fd), and its interface on the
    internal network."""

    fd: int
    interface: str

    def run(self, argv: list[str], stdin: str, what: str) -> str:
        return run_in(f"/proc/self/fd/{self.fd}", argv, stdin, f"{what}'s",
                      pass_fds=(self.fd,))


def interface_with(address: str, links: object) -> str | None:
    """The interface holding `address` in `ip -json address show` output."""
    for link in links if isinstance(links, list) else []:
        infos = link.get("addr_info") if isinstance(link, dict) else None
        for info in infos if isinstance(infos, list) else []:
            if isinstance(info, dict) and info.get("local") == address:
                name = link.get("ifname")
                return name if isinstance(name, str) else None
    return None


@contextlib.contextmanager
def entered(container: Container, address: str) -> Iterator[Netns | None]:
    """The container's network namespace, if netfence can enter it: root, and the engine
    on this host. The namespace is held open by a fd, and proved to be the container's by
    its address on the internal network (a remote engine's PID means nothing here)."""
    container.reload()
    pid = int(container.attrs.get("State", {}).get("Pid") or 0)
    if os.geteuid() != 0 or pid <= 0:
        yield None
        return
    try:
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        yield None
        return
    try:
        out = Netns(fd, "").run(["ip", "-json", "address", "show"], "", str(container.name))
        try:
            interface = interface_with(address, json.loads(out or "[]"))
        except ValueError:
            interface = None
        yield Netns(fd, interface) if interface is not None else None
    finally:
        os.close(fd)


def install(holder: Container, egress: Container, plan: AddressPlan,
            transparent_port: int | None) -> bool:
    """The holder's routes and rules, and the egress's rules. False (and nothing changed)
    when netfence cannot enter the containers' namespaces (not root, a remote engine)."""
    with entered(holder, plan.workload) as workload_ns, entered(egress, plan.egress) as egress_ns:
        if workload_ns is None or egress_ns is None:
            return False
        # The egress first: by the time the workload has a route to it, it redirects.
        egress_ns.run(["nft", "-f", "-"],
                      egress_ruleset(egress_ns.interface, plan, transparent_port),
                      str(egress.name))
        workload_ns.run(["nft", "-f", "-"], workload_ruleset(plan, transparent_port is not None),
                        str(holder.name))
        workload_ns.run(["ip", "-batch", "-"], workload_routes(workload_ns.interface, plan),
                        str(holder.name))
    return True
