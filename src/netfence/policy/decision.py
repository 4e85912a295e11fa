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


# What a user can change to allow a denied destination; None where nothing should.
REMEDIES: dict[Reason, str | None] = {
    Reason.NOT_ALLOWLISTED: "add it to network.outbound.allow_host or pass --allow-host {host}",
    Reason.PORT_NOT_ALLOWED: "add it to network.outbound.allow_port or pass --allow-port {port}",
    Reason.PRIVATE_ADDRESS: "add its range to network.outbound.allow_cidr or pass "
    "--allow-cidr {cidr}",
    Reason.SPECIAL_ADDRESS: "add its range to network.outbound.allow_cidr or pass "
    "--allow-cidr {cidr}",
    Reason.INVALID_HOST: None,
    Reason.DENIED_NAME: None,
    Reason.HOST_ADDRESS: None,
    Reason.LINK_LOCAL_ADDRESS: None,
    Reason.LOOPBACK_ADDRESS: None,
    Reason.ALLOWED: None,
}


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: Reason
    host: str
    port: int
    ip: str | None = None

    @property
    def remedy(self) -> str | None:
        template = REMEDIES[self.reason]
        if not template:
            return None
        # One address: /32 in IPv4, /128 in IPv6 (a /32 there would open a vast range).
        cidr = f"{self.ip}/{128 if self.ip and ':' in self.ip else 32}"
        return template.format(host=self.host, port=self.port, cidr=cidr)

    def describe(self) -> str:
        where = f"{self.host}:{self.port}" + (f" ({self.ip})" if self.ip else "")
        if self.allowed:
            return f"allowed {where}"
        detail = f" {self.ip}" if self.ip and self.reason.endswith("_address") else ""
        text = f"denied {where}: {self.reason.value}{detail}"
        return f"{text}; to allow: {self.remedy}" if self.remedy else text
