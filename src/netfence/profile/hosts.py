"""Host names and patterns: the one place that decides what a host string means.

Both the profile (allow_host entries) and the policy (hosts seen in requests) go through
here, so a name is normalised the same way wherever it is compared.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_NAME = 253
MAX_LABEL = 63
# After IDNA conversion a label is letters, digits, hyphens; underscore appears in real
# service names (_dmarc, SRV-style hosts), so it is tolerated.
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?$")
# inet_aton accepts these legacy IPv4 spellings (decimal, hex, octal, shortened); a client
# library may too, so they must be read as addresses, never as names.
_LEGACY_IPV4 = re.compile(r"^(?:0x[0-9a-f]+|[0-9]+)(?:\.(?:0x[0-9a-f]+|[0-9]+)){0,3}$")
# A character no IP literal has, in any spelling inet_aton reads (trailing whitespace
# included; an IPv6 one has a colon): such a host is a name. A long allowlist then skips
# two failing address parsers per name.
_NOT_IN_IPV4 = re.compile(r"[^0-9a-fA-FxX.\s]")
# A name every check of canonical_name passes at once (lower-case ASCII, labels of 1 to
# MAX_LABEL characters); anything else takes the checks one by one, for their messages.
_PLAIN_NAME = re.compile(
    rf"(?:[a-z0-9_](?:[a-z0-9_-]{{0,{MAX_LABEL - 2}}}[a-z0-9_])?\.)*"
    rf"[a-z0-9_](?:[a-z0-9_-]{{0,{MAX_LABEL - 2}}}[a-z0-9_])?\.?"
)


@dataclass(frozen=True, order=True, slots=True)
class HostPattern:
    """An allowlist entry: an exact name, a name with all its subdomains, or an IP literal."""

    name: str
    subdomains: bool = False
    is_ip: bool = False

    def matches(self, host: str) -> bool:
        """Whether a canonical host (output of canonical_host, as text) is covered."""
        if host == self.name:
            return True
        return self.subdomains and host.endswith("." + self.name)

    def __str__(self) -> str:
        return f"*.{self.name}" if self.subdomains else self.name


def split_host_port(text: str) -> tuple[str, str | None]:
    """HOST, HOST:PORT, [IPv6] or [IPv6]:PORT as (host, port as written).

    Brackets are removed; the port is None when no colon introduces one ('' when one
    does, with nothing after it) and is not checked: the caller knows its default and
    range. Without brackets, several colons are an IPv6 address with no port. ValueError
    for a bracket left open or anything but ':PORT' after the closing one.
    """
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: expected [IPv6] or [IPv6]:PORT")
        return host, rest[1:] if rest else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, port
    return text, None


def _reject_unsafe_chars(raw: str) -> None:
    if raw == "":
        raise ValueError("empty host")
    if raw.isascii() and raw.isprintable() and " " not in raw:
        return  # printable ASCII other than space: none of the characters below
    for ch in raw:
        if ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F:
            raise ValueError(f"contains whitespace or a control character ({ch!r})")


def parse_ip(raw: str) -> IPAddress | None:
    """The address a host string denotes, or None when it is a name.

    Brackets around IPv6, IPv6 zone ids and the legacy IPv4 spellings are all addresses.
    """
    text = raw[1:-1] if raw.startswith("[") and raw.endswith("]") else raw
    if "%" in text:
        # A zone id (fe80::1%eth0) picks an interface, not another destination: drop it
        # before ip_address, which would otherwise keep it in the address.
        try:
            return ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            return None
    if ":" not in text and _NOT_IN_IPV4.search(text):
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    # One trailing dot does not make an IPv4 literal a name (URL parsers read 127.0.0.1.
    # as 127.0.0.1), just as it does not change a name.
    v4 = text[:-1] if text.endswith(".") else text
    if _LEGACY_IPV4.match(v4.lower()):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(v4))
        except OSError:
            return None
    return None


def _to_ascii(name: str) -> str:
    if name.isascii():
        return name.lower()
    import idna  # only for a non-ASCII name (10 ms to import)

    try:
        return idna.encode(name, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise ValueError(f"not a valid internationalised name: {exc}") from None


def canonical_name(raw: str) -> str:
    """Lower-case ASCII (punycode) form of a DNS name, one trailing dot removed.

    Raises ValueError with a reason for anything that is not a plain DNS name.
    """
    if _PLAIN_NAME.fullmatch(raw):
        name = raw[:-1] if raw.endswith(".") else raw
        if len(name) <= MAX_NAME:
            return name
    _reject_unsafe_chars(raw)
    if "://" in raw:
        raise ValueError("a scheme is not part of a host")
    if "/" in raw or "?" in raw or "#" in raw:
        raise ValueError("a path is not part of a host")
    if "@" in raw:
        raise ValueError("user information is not part of a host")
    if ":" in raw:
        raise ValueError("a port is not part of a host (use allow_port)")
    name = raw[:-1] if raw.endswith(".") else raw
    name = _to_ascii(name)
    if len(name) > MAX_NAME:
        raise ValueError(f"name longer than {MAX_NAME} characters")
    for label in name.split("."):
        if label == "":
            raise ValueError("empty label")
        if len(label) > MAX_LABEL:
            raise ValueError(f"label longer than {MAX_LABEL} characters ({label[:20]}...)")
        if not _LABEL.match(label):
            raise ValueError(f"label {label!r} has characters not allowed in a host name")
    return name


def canonical_host(raw: str) -> str | IPAddress:
    """A request's host as the policy compares it: an address, or a canonical name."""
    ip = parse_ip(raw)
    if ip is not None:
        return ip
    if "*" in raw:
        raise ValueError("'*' is not a host")
    return canonical_name(raw)


def parse_host_pattern(raw: str) -> HostPattern:
    """Parse one allow_host entry; ValueError says what is wrong with it."""
    _reject_unsafe_chars(raw)
    ip = parse_ip(raw)
    if ip is not None:
        return HostPattern(name=str(ip), is_ip=True)
    subdomains = False
    rest = raw
    if rest.startswith("*."):
        subdomains, rest = True, rest[2:]
    elif rest.startswith(".") and rest != ".":
        subdomains, rest = True, rest[1:]
    if "*" in rest:
        if rest == "*" and not subdomains:
            raise ValueError("'*' alone is not a host; use insecure_allow_all to allow all")
        raise ValueError("'*' is only allowed as a whole leading label, as in *.example.com")
    name = canonical_name(rest)
    if subdomains and parse_ip(name) is not None:
        raise ValueError("a wildcard cannot apply to an IP address")
    return HostPattern(name=name, subdomains=subdomains)
