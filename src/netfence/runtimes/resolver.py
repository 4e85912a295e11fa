"""The host's resolver, the default upstream for the fence's DNS and proxies."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from netfence.backends import DNS_PORT, Endpoint
from netfence.errors import NetfenceError, UsageError
from netfence.profile import split_host_port

RESOLV_CONF = Path("/etc/resolv.conf")


def parse_endpoint(text: str, default_port: int = DNS_PORT) -> Endpoint:
    """IP, IP:PORT, [IPv6] or [IPv6]:PORT."""
    try:
        host, port_text = split_host_port(text)
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise UsageError(f"--dns-upstream {text!r}: expected IP[:PORT]") from None
    port_text = str(default_port) if port_text is None else port_text
    port = int(port_text) if port_text.isdigit() else -1
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
        # A zone is free text (a newline in it would write config lines): none taken.
        raise UsageError(f"--dns-upstream {text!r}: an IPv6 zone (%...) is not supported")
    if not 1 <= port <= 65535:
        raise UsageError(f"--dns-upstream {text!r}: the port must be 1-65535")
    return Endpoint(str(ip), port)


def host_resolver() -> Endpoint:
    try:
        lines = RESOLV_CONF.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            return parse_endpoint(parts[1].split("%")[0])
    raise NetfenceError(f"no nameserver in {RESOLV_CONF}", remedy="pass --dns-upstream IP")
