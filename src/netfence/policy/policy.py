"""The policy: one immutable value compiled from a profile, and the reference decision.

`Policy.decide` is what every backend must agree with. It follows the order the proxies
must follow: the name first (before anything resolves it), then the port, then the
address that is actually dialed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from netfence.policy.decision import Decision, Reason
from netfence.policy.denied import (
    DENIED_NAMES,
    DENIED_SUFFIXES,
    DeniedRange,
    IPNetwork,
    denied_ranges,
    embedded_v4,
    with_embedded_forms,
)
from netfence.profile import HostPattern, Profile, canonical_host
from netfence.profile.hosts import IPAddress
from netfence.profile.model import DEFAULT_PORTS


@dataclass(frozen=True)
class Policy:
    """Everything a backend needs to know about what may pass the fence."""

    allow_all: bool = False
    hosts: tuple[HostPattern, ...] = ()
    ports: tuple[int, ...] = DEFAULT_PORTS
    allowed_cidrs: tuple[IPNetwork, ...] = ()
    host_addresses: tuple[IPAddress, ...] = ()
    inbound_hosts: tuple[HostPattern, ...] = ()
    denied: tuple[DeniedRange, ...] = field(default_factory=denied_ranges)

    @property
    def name_patterns(self) -> tuple[HostPattern, ...]:
        return tuple(h for h in self.hosts if not h.is_ip)

    @property
    def ip_literals(self) -> tuple[HostPattern, ...]:
        return tuple(h for h in self.hosts if h.is_ip)

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
            if name in DENIED_NAMES or any(name.endswith("." + s) for s in DENIED_SUFFIXES):
                return Decision(False, Reason.DENIED_NAME, name, port)
            if not self.name_allowed(name):
                return Decision(False, Reason.NOT_ALLOWLISTED, name, port)
            ip_text = resolved_ip
        else:
            name = ip_text = str(target)
            if not (self.allow_all or any(p.name == name for p in self.ip_literals)):
                return Decision(False, Reason.NOT_ALLOWLISTED, name, port)
        if not 1 <= port <= 65535 or port not in self.ports:
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

    def inbound_allowed(self, host: str) -> bool:
        """Ingress Host gating: no inbound.allow_host means loopback names only."""
        try:
            target = canonical_host(host)
        except ValueError:
            return False
        text = str(target)
        if not self.inbound_hosts:
            return text in ("localhost", "127.0.0.1", "::1")
        return any(p.matches(text) for p in self.inbound_hosts)


def compile_policy(profile: Profile, host_addresses: Iterable[IPAddress] = ()) -> Policy:
    """The policy a profile means; host_addresses are the host's own, read by the runtime."""
    out = profile.network.outbound
    none_mode = profile.network.mode == "none"
    return Policy(
        allow_all=out.insecure_allow_all and not none_mode,
        hosts=() if none_mode else out.allow_host,
        ports=out.allow_port if out.allow_port is not None else DEFAULT_PORTS,
        allowed_cidrs=out.allow_cidr,
        # A host address already in an unliftable class (127.0.0.1, fe80::...) is denied
        # anyway; leaving it out keeps the more precise reason, loopback or link-local.
        host_addresses=tuple(
            a for a in dict.fromkeys(host_addresses)
            if not any(a in r.network for r in denied_ranges() if not r.liftable)
        ),
        inbound_hosts=profile.network.inbound.allow_host,
    )
