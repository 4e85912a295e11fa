"""Which original destinations the transparent listener may pass a connection through to
(a connection without a name: TLS without SNI, neither TLS nor HTTP), and which the address
stage denies, by reason: decided here, when the config is generated, because network RBAC
acts on the first data only, after tcp_proxy would have connected.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from netfence.policy import ADDRESS_CLASS_ORDER, Policy, Reason
from netfence.policy.denied import IPNetwork, subtract

# Networks by the reason the address stage denies them, in ADDRESS_CLASS_ORDER.
ByReason = tuple[tuple[Reason, tuple[IPNetwork, ...]], ...]

_EVERYTHING = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


@dataclass(frozen=True)
class Destinations:
    """Original destinations by what a connection without a name to them gets.

    allowed: passed through (the address stage lets them through).
    denied: the addresses of the same kind that the address stage denies, by reason.
    With an allowlist they are its IP literals; with every name allowed every IP literal
    is allowed too, so together they cover every address.
    """

    allowed: tuple[IPNetwork, ...]
    denied: ByReason

    @property
    def every(self) -> tuple[IPNetwork, ...]:
        return (*self.allowed, *(n for _, nets in self.denied for n in nets))


def destinations(policy: Policy) -> Destinations:
    if policy.allow_all:
        return _address_space(policy)
    allowed: list[IPNetwork] = []
    denied: list[tuple[Reason, IPNetwork]] = []
    for pattern in policy.ip_literals:
        address = ipaddress.ip_address(pattern.name)
        # An allowlisted literal on an allowed port: Policy.decide is the address stage.
        reason = policy.address_reason(address)
        if reason is None:
            allowed.append(_arriving(address))
        else:
            denied.append((reason, _arriving(address)))
    return Destinations(tuple(dict.fromkeys(allowed)), _by_reason(denied))


def _address_space(policy: Policy) -> Destinations:
    """Every address the address stage lets through, and its rules' networks."""
    rules = policy.address_rules()
    holes = [n for rule in rules for n in rule.networks]
    allowed = tuple(
        n for whole in _EVERYTHING
        for n in ipaddress.collapse_addresses(  # type: ignore[type-var]
            subtract([whole], [h for h in holes if h.version == whole.version])))
    return Destinations(allowed, _by_reason((rule.reason, n) for rule in rules
                                            for n in rule.networks))


def _arriving(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> IPNetwork:
    """One literal's network as connections to it arrive: an IPv4-mapped IPv6
    destination arrives as the IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return ipaddress.ip_network(address)


def _by_reason(items: Iterable[tuple[Reason, IPNetwork]]) -> ByReason:
    """Networks grouped by reason, each network once (the first reason keeps it: Envoy
    refuses one prefix in two chains of a level). Where one sits inside another (a host
    address in a private range), Envoy's longest-prefix match picks the inner one."""
    groups: dict[Reason, list[IPNetwork]] = {}
    seen: set[IPNetwork] = set()
    for reason, net in items:
        if net not in seen:
            seen.add(net)
            groups.setdefault(reason, []).append(net)
    return tuple((r, tuple(groups[r])) for r in ADDRESS_CLASS_ORDER if r in groups)
