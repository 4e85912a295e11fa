"""The policy: one immutable value compiled from a profile, and the reference decision.

`Policy.decide` is what every backend must agree with. It follows the order the proxies
must follow: the name first (before anything resolves it), then the port, then the
address that is actually dialed.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from netfence.policy.decision import Decision, Reason
from netfence.policy.denied import (
    ADDRESS_CLASS_ORDER,
    AddressRule,
    DeniedRange,
    IPNetwork,
    base_network,
    denied_ranges,
    embedded_v4,
    is_denied_name,
    subtract,
    with_embedded_forms,
)
from netfence.profile import HostPattern, canonical_host
from netfence.profile.defaults import DEFAULT_PORTS
from netfence.profile.hosts import IPAddress

if TYPE_CHECKING:
    from netfence.profile.model import Profile

# The names of this machine's loopback: all that ingress accepts when the profile names no
# inbound host, and what the workload reaches without its proxy (no_proxy).
LOOPBACK_HOSTS: tuple[HostPattern, ...] = (
    HostPattern("localhost"),
    HostPattern("127.0.0.1", is_ip=True),
    HostPattern("::1", is_ip=True),
)


@dataclass(frozen=True)
class Policy:
    """Everything a backend needs to know about what may pass the fence."""

    allow_all: bool = False
    hosts: tuple[HostPattern, ...] = ()
    # Learn mode opens every port as well as every name (the address stage stays).
    any_port: bool = False
    ports: tuple[int, ...] = DEFAULT_PORTS
    allowed_cidrs: tuple[IPNetwork, ...] = ()
    # The host's own addresses, and networks a runtime treats the same way (the fence's
    # own container networks): denied whatever allow_cidr says.
    host_addresses: tuple[IPAddress | IPNetwork, ...] = ()
    inbound_hosts: tuple[HostPattern, ...] = ()
    denied: tuple[DeniedRange, ...] = field(default_factory=denied_ranges)

    @property
    def name_patterns(self) -> tuple[HostPattern, ...]:
        return tuple(h for h in self.hosts if not h.is_ip)

    @property
    def ip_literals(self) -> tuple[HostPattern, ...]:
        return tuple(h for h in self.hosts if h.is_ip)

    @property
    def inbound_allowlist(self) -> tuple[HostPattern, ...]:
        """The inbound hosts in force: the profile's, else the loopback names only."""
        return self.inbound_hosts or LOOPBACK_HOSTS

    @property
    def denies_everything(self) -> bool:
        return not self.allow_all and not self.hosts

    @property
    def lifting_cidrs(self) -> tuple[IPNetwork, ...]:
        """allowed_cidrs with the IPv6 forms that embed them (they reach the same hosts)."""
        return tuple(n for c in self.allowed_cidrs for n in with_embedded_forms(c))

    @property
    def host_networks(self) -> tuple[IPNetwork, ...]:
        return tuple(
            n for a in self.host_addresses for n in with_embedded_forms(ipaddress.ip_network(a))
        )

    def name_allowed(self, name: str) -> bool:
        return self.allow_all or any(p.matches(name) for p in self.name_patterns)

    def literal_allowed(self, ip: IPAddress) -> bool:
        """Whether an IP-literal target is allowlisted.

        An IPv4-mapped IPv6 address is the IPv4 address (a proxy dialing it reaches that
        host, and Squid rewrites one into the other), so either spelling matches the other.
        """
        keys = {str(ip)}
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            keys.add(str(ip.ipv4_mapped))
        elif isinstance(ip, ipaddress.IPv4Address):
            keys.add(str(ipaddress.IPv6Address(f"::ffff:{ip}")))
        return self.allow_all or any(p.name in keys for p in self.ip_literals)

    def port_allowed(self, port: int) -> bool:
        return 1 <= port <= 65535 and (self.any_port or port in self.ports)

    def address_rules(self) -> tuple[AddressRule, ...]:
        """The address stage as ordered deny rules, for backends that match addresses.

        First the host's own addresses (one rule each), then every always-denied range in
        ADDRESS_CLASS_ORDER, each with the IPv6 forms that embed it and with the allowed
        CIDRs cut out of the liftable ones. A backend that checks the rules in this order
        reports the reason Policy.decide (and decide_answers) reports.
        """
        return self._address_rules

    @functools.cached_property
    def _address_rules(self) -> tuple[AddressRule, ...]:
        # Computed once: Envoy's configuration asks for them at every chain that checks
        # addresses (five times per compilation, 2 ms of a gateway start's).
        rules = [AddressRule(Reason.HOST_ADDRESS, ipaddress.ip_network(a),
                             with_embedded_forms(ipaddress.ip_network(a)))
                 for a in self.host_addresses]
        grouped: dict[IPNetwork, tuple[Reason, list[IPNetwork]]] = {}
        lifting = self.lifting_cidrs
        for rng in self.denied:
            nets = [rng.network]
            if rng.liftable:
                nets = subtract(nets, lifting)
            grouped.setdefault(base_network(rng.network), (rng.reason, []))[1].extend(nets)
        ranked = sorted(grouped.items(), key=lambda item: ADDRESS_CLASS_ORDER.index(item[1][0]))
        rules += [AddressRule(reason, base, tuple(nets))
                  for base, (reason, nets) in ranked if nets]
        return tuple(rules)

    def address_reason(self, ip: IPAddress) -> Reason | None:
        """Why dialing `ip` is denied, or None when the address is fine."""
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address):
            v4 = embedded_v4(ip)
            if v4 is not None:
                candidates.append(v4)
        if any(c in n for c in candidates for n in self.host_networks):
            return Reason.HOST_ADDRESS
        lifted = any(c in n for c in candidates for n in self.lifting_cidrs)
        for rng in self.denied:
            if ip in rng.network and not (rng.liftable and lifted):
                return rng.reason
        return None

    def decide(self, host: str, port: int, resolved_ip: str | None = None) -> Decision:
        """The reference decision for a request to host:port that dials resolved_ip."""
        try:
            target = canonical_host(host)
        except ValueError:
            return Decision(False, Reason.INVALID_HOST, host, port)
        if isinstance(target, str):
            name = target
            if is_denied_name(name):
                return Decision(False, Reason.DENIED_NAME, name, port)
            if not self.name_allowed(name):
                return Decision(False, Reason.NOT_ALLOWLISTED, name, port)
            ip_text = resolved_ip
        else:
            name = ip_text = str(target)
            if not self.literal_allowed(target):
                return Decision(False, Reason.NOT_ALLOWLISTED, name, port)
        if not self.port_allowed(port):
            return Decision(False, Reason.PORT_NOT_ALLOWED, name, port)
        if ip_text is None:
            return Decision(True, Reason.ALLOWED, name, port)
        try:
            ip = ipaddress.ip_address(ip_text)
        except ValueError:
            return Decision(False, Reason.INVALID_HOST, name, port, ip_text)
        reason = self.address_reason(ip)
        if reason is not None:
            return Decision(False, reason, name, port, str(ip))
        return Decision(True, Reason.ALLOWED, name, port, str(ip))

    def decide_answers(self, host: str, port: int, answers: Sequence[str]) -> Decision:
        """The decision for a name whose DNS answer holds several addresses.

        A proxy that may dial any of them (Squid retries the next address; Envoy's cluster
        falls back to the next one) must check them all: allowed only when every one is.
        Of several denied answers, the reason is the first in ADDRESS_CLASS_ORDER.
        """
        if not answers:
            return self.decide(host, port)
        decisions = [self.decide(host, port, ip) for ip in answers]
        denied = [d for d in decisions if not d.allowed]
        if not denied:
            return decisions[0]
        rank = {r: i for i, r in enumerate(ADDRESS_CLASS_ORDER)}
        return min(denied, key=lambda d: rank.get(d.reason, -1))

    def inbound_allowed(self, host: str) -> bool:
        """Ingress Host gating: no inbound.allow_host means loopback names only."""
        try:
            target = canonical_host(host)
        except ValueError:
            return False
        return any(p.matches(str(target)) for p in self.inbound_allowlist)


def _within(item: IPAddress | IPNetwork, network: IPNetwork) -> bool:
    if isinstance(item, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return item.network_address in network and item.broadcast_address in network
    return item in network


def compile_policy(profile: Profile, host_addresses: Iterable[IPAddress | IPNetwork] = (),
                   learn: bool = False) -> Policy:
    """The policy a profile means; host_addresses are the host's own, read by the runtime.

    learn: every name and every port passes (to record what a workload uses); the
    address stage, denied names and the host's addresses still deny as always.
    """
    out = profile.network.outbound
    none_mode = profile.network.mode == "none"
    return Policy(
        allow_all=learn or (out.insecure_allow_all and not none_mode),
        any_port=learn,
        hosts=() if none_mode else out.allow_host,
        ports=out.allow_port if out.allow_port is not None else DEFAULT_PORTS,
        allowed_cidrs=out.allow_cidr,
        # A host address already in an unliftable class (127.0.0.1, fe80::...) is denied
        # anyway; leaving it out keeps the more precise reason, loopback or link-local.
        host_addresses=tuple(
            a for a in dict.fromkeys(host_addresses)
            if not any(_within(a, r.network) for r in denied_ranges() if not r.liftable)
        ),
        inbound_hosts=profile.network.inbound.allow_host,
    )
