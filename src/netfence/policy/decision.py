"""What a decision says: allowed or not, why, and what would change it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Reason(StrEnum):
    ALLOWED = "allowed"
    INVALID_HOST = "invalid_host"
    DENIED_NAME = "denied_name"
    NOT_ALLOWLISTED = "not_allowlisted"
    PORT_NOT_ALLOWED = "port_not_allowed"
    HOST_ADDRESS = "host_address"
    LINK_LOCAL_ADDRESS = "link_local_address"
    LOOPBACK_ADDRESS = "loopback_address"
    PRIVATE_ADDRESS = "private_address"
    SPECIAL_ADDRESS = "special_address"
    # Request-level reasons, outside Policy.decide: a form the fence does not relay
    # (https:// or ftp:// URLs: TLS goes through CONNECT), and Envoy's dial view refusing a
    # name whose DNS answer also holds a denied address (its first address was fine).
    UNSUPPORTED_REQUEST = "unsupported_request"
    DENIED_ADDRESS_IN_ANSWER = "denied_address_in_answer"


# What a user can change to allow a denied destination; None where nothing should.
REMEDIES: dict[Reason, str | None] = {
    Reason.NOT_ALLOWLISTED: "add it to network.outbound.allow_host or pass --allow-host {host}",
    Reason.PORT_NOT_ALLOWED: "add it to network.outbound.allow_port or pass --allow-port {port}",
    Reason.PRIVATE_ADDRESS: "add its range to network.outbound.allow_cidr or pass "
    "--allow-cidr {cidr}",
    Reason.SPECIAL_ADDRESS: "add its range to network.outbound.allow_cidr or pass "
    "--allow-cidr {cidr}",
    Reason.UNSUPPORTED_REQUEST: "send https:// through CONNECT (proxy-aware clients do); "
    "the fence relays only http:// URLs and CONNECT tunnels",
    Reason.DENIED_ADDRESS_IN_ANSWER: "see which address with `netfence check {host}:{port} "
    "--resolved-ip IP`; only a private or special-purpose one can be lifted (--allow-cidr)",
    Reason.INVALID_HOST: None,
    Reason.DENIED_NAME: None,
    Reason.HOST_ADDRESS: None,
    Reason.LINK_LOCAL_ADDRESS: None,
    Reason.LOOPBACK_ADDRESS: None,
    Reason.ALLOWED: None,
}


def remedy_text(reason: Reason, host: str, port: int | str, address: str | None) -> str | None:
    """The remedy for a denial. `address` is the denied address, or the range holding it
    when a backend only knows that (a single address gets /32 or /128, a range itself)."""
    template = REMEDIES.get(reason)
    if not template:
        return None
    if address is None:
        cidr = "ADDRESS/32"
    elif "/" in address:
        bits = 128 if ":" in address else 32
        cidr = f"ADDRESS/{bits} (the address is in {address})"
    else:
        # One address: /32 in IPv4, /128 in IPv6 (a /32 there would open a vast range).
        cidr = f"{address}/{128 if ':' in address else 32}"
    return template.format(host=host, port=port, cidr=cidr)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: Reason
    host: str
    port: int
    ip: str | None = None

    @property
    def remedy(self) -> str | None:
        return remedy_text(self.reason, self.host, self.port, self.ip)

    def describe(self) -> str:
        where = f"{self.host}:{self.port}" + (f" ({self.ip})" if self.ip else "")
        if self.allowed:
            return f"allowed {where}"
        detail = f" {self.ip}" if self.ip and self.reason.endswith("_address") else ""
        text = f"denied {where}: {self.reason.value}{detail}"
        return f"{text}; to allow: {self.remedy}" if self.remedy else text
