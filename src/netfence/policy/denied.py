"""Destinations no profile can open by name: local, private and special-purpose addresses.

Every range belongs to one class (the reason reported). Ranges overlap only where a
loopback one sits inside a special-purpose one (::1 in ::/96): a backend checking the
classes in ADDRESS_CLASS_ORDER (or by policy name, in which loopback sorts first) reports
the same reason as Policy.decide.
Sources: IANA IPv4/IPv6 Special-Purpose Address Registries (RFC 6890 and updates).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from netfence.policy.decision import Reason, remedy_text

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DENIED_NAMES: tuple[str, ...] = (
    "localhost",
    "host.docker.internal",
    "gateway.docker.internal",
    "host.containers.internal",
)
# Every subdomain of these is denied too (RFC 6761 reserves all of *.localhost).
DENIED_SUFFIXES: tuple[str, ...] = ("localhost",)


_SUFFIXES = frozenset(DENIED_SUFFIXES)
_BELOW_SUFFIXES = tuple("." + s for s in DENIED_SUFFIXES)
_NAMES = frozenset(DENIED_NAMES)


def is_denied_zone(name: str) -> bool:
    """Whether `name` and every name below it are denied (it is, or is under, a suffix)."""
    return name in _SUFFIXES or name.endswith(_BELOW_SUFFIXES)


def is_denied_name(name: str) -> bool:
    """Whether a canonical name is denied whatever the allowlist says (localhost and the
    like): the one test the policy and every backend apply."""
    return name in _NAMES or is_denied_zone(name)


# The order in which backends check the address classes, so that they all report the
# same reason for a DNS answer holding addresses of several classes (most severe first).
ADDRESS_CLASS_ORDER: tuple[Reason, ...] = (
    Reason.HOST_ADDRESS,
    Reason.LOOPBACK_ADDRESS,
    Reason.LINK_LOCAL_ADDRESS,
    Reason.PRIVATE_ADDRESS,
    Reason.SPECIAL_ADDRESS,
)


@dataclass(frozen=True)
class AddressRule:
    """One deny rule of the address stage: `network` as the policy lists it (a host address
    or an always-denied range), `networks` what to match (with the IPv6 forms embedding it,
    allowed CIDRs cut out)."""

    reason: Reason
    network: IPNetwork
    networks: tuple[IPNetwork, ...]

    @property
    def remedy(self) -> str | None:
        """The remedy for a denial by this rule (for a backend that knows only the rule)."""
        return remedy_text(self.reason, "HOST", "PORT", str(self.network))


@dataclass(frozen=True)
class DeniedRange:
    network: IPNetwork
    reason: Reason
    # allow_cidr can open private and special ranges, never loopback/link-local/the host.
    liftable: bool


# Dialing an unspecified address (0.0.0.0, ::) reaches this host's own listeners on
# Linux, so those count as loopback: allow_cidr can never open them.
_V4: tuple[tuple[str, Reason], ...] = (
    ("0.0.0.0/8", Reason.LOOPBACK_ADDRESS),
    ("10.0.0.0/8", Reason.PRIVATE_ADDRESS),
    ("100.64.0.0/10", Reason.PRIVATE_ADDRESS),
    ("127.0.0.0/8", Reason.LOOPBACK_ADDRESS),
    ("169.254.0.0/16", Reason.LINK_LOCAL_ADDRESS),
    ("172.16.0.0/12", Reason.PRIVATE_ADDRESS),
    ("192.0.0.0/24", Reason.SPECIAL_ADDRESS),
    ("192.0.2.0/24", Reason.SPECIAL_ADDRESS),
    ("192.88.99.0/24", Reason.SPECIAL_ADDRESS),
    ("192.168.0.0/16", Reason.PRIVATE_ADDRESS),
    ("198.18.0.0/15", Reason.SPECIAL_ADDRESS),
    ("198.51.100.0/24", Reason.SPECIAL_ADDRESS),
    ("203.0.113.0/24", Reason.SPECIAL_ADDRESS),
    ("224.0.0.0/4", Reason.SPECIAL_ADDRESS),
    ("240.0.0.0/4", Reason.SPECIAL_ADDRESS),
)
_V6: tuple[tuple[str, Reason], ...] = (
    ("::/128", Reason.LOOPBACK_ADDRESS),
    ("::1/128", Reason.LOOPBACK_ADDRESS),
    # IPv4-compatible addresses (deprecated, RFC 4291): a stack with automatic tunnelling
    # (sit0) sends ::a.b.c.d to a.b.c.d. Listed after ::/128 and ::1/128, which it holds:
    # checked in class order (loopback first), those keep their reason.
    ("::/96", Reason.SPECIAL_ADDRESS),
    ("64:ff9b:1::/48", Reason.SPECIAL_ADDRESS),
    ("100::/64", Reason.SPECIAL_ADDRESS),
    ("2001::/23", Reason.SPECIAL_ADDRESS),  # includes Teredo 2001::/32
    ("2001:db8::/32", Reason.SPECIAL_ADDRESS),
    ("2002::/16", Reason.SPECIAL_ADDRESS),  # 6to4 embeds any IPv4 address
    ("3fff::/20", Reason.SPECIAL_ADDRESS),
    ("fc00::/7", Reason.PRIVATE_ADDRESS),
    ("fe80::/10", Reason.LINK_LOCAL_ADDRESS),
    ("fec0::/10", Reason.SPECIAL_ADDRESS),
    ("ff00::/8", Reason.SPECIAL_ADDRESS),
)
_UNLIFTABLE = {Reason.LOOPBACK_ADDRESS, Reason.LINK_LOCAL_ADDRESS, Reason.HOST_ADDRESS}
# The deprecated IPv4-compatible form (::a.b.c.d) carries any IPv4 address, loopback and
# the host's included (a sit tunnel delivers it), and nobody needs it: never lifted.
_NEVER_LIFTED = {ipaddress.IPv6Network("::/96")}

# IPv6 prefixes that carry an IPv4 address in their last 32 bits: a proxy dialing one of
# them reaches that IPv4 address, so each IPv4 range is denied in these forms too.
EMBEDDING_PREFIXES: tuple[ipaddress.IPv6Network, ...] = (
    ipaddress.IPv6Network("::ffff:0:0/96"),  # IPv4-mapped
    ipaddress.IPv6Network("64:ff9b::/96"),  # NAT64 well-known prefix
)


def embed_v4(net: ipaddress.IPv4Network, prefix: ipaddress.IPv6Network) -> ipaddress.IPv6Network:
    base = int(prefix.network_address) | int(net.network_address)
    return ipaddress.IPv6Network((base, 96 + net.prefixlen))


def embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, if it is one of the embedding forms."""
    for prefix in EMBEDDING_PREFIXES:
        if ip in prefix:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def base_network(net: IPNetwork) -> IPNetwork:
    """The IPv4 network an embedding IPv6 network stands for; other networks unchanged."""
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
        for prefix in EMBEDDING_PREFIXES:
            if net.subnet_of(prefix):
                base = ipaddress.IPv4Address(int(net.network_address) & 0xFFFFFFFF)
                return ipaddress.IPv4Network((base, net.prefixlen - 96))
    return net


def subtract(nets: Iterable[IPNetwork], holes: Sequence[IPNetwork]) -> list[IPNetwork]:
    """`nets` without any address in `holes` (so lifted addresses are never denied)."""
    todo = list(nets)
    out: list[IPNetwork] = []
    while todo:
        net = todo.pop()
        for hole in holes:
            if hole.version != net.version or not net.overlaps(hole):
                continue
            if hole.supernet_of(net):  # type: ignore[arg-type]
                break
            todo.extend(net.address_exclude(hole))  # type: ignore[arg-type]
            break
        else:
            out.append(net)
    return sorted(out, key=lambda n: (n.version, n))


def with_embedded_forms(net: IPNetwork) -> tuple[IPNetwork, ...]:
    """A network plus the IPv6 forms that embed it (for IPv4 networks)."""
    if isinstance(net, ipaddress.IPv4Network):
        return (net, *(embed_v4(net, p) for p in EMBEDDING_PREFIXES))
    return (net,)


@functools.cache
def denied_ranges() -> tuple[DeniedRange, ...]:
    """The always-denied ranges, IPv4 ranges also in their IPv6-embedded forms."""
    out: list[DeniedRange] = []
    for text, reason in (*_V4, *_V6):
        for net in with_embedded_forms(ipaddress.ip_network(text)):
            out.append(DeniedRange(net, reason,
                                   reason not in _UNLIFTABLE and net not in _NEVER_LIFTED))
    return tuple(out)
