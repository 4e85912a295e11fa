"""Host syntax as regular expressions, for proxies that must match hosts themselves.

hosts.py decides what a host string means; a proxy that refuses or recognises hosts
before anything resolves them needs the same decisions as patterns:
- VALID_HOST_RE: what canonical_host reads as a name or a bracketed IPv6 address (POSIX
  ERE and RE2 alike: Squid's dstdom_regex and Envoy's header matchers);
- the IP-literal spellings (RE2): every text a client library may send for one address,
  the legacy IPv4 forms parse_ip reads through inet_aton included.
"""

from __future__ import annotations

import ipaddress

from netfence.profile.hosts import MAX_LABEL, HostPattern

# Hosts as canonical_host accepts them, for backends that must refuse the rest before
# anything resolves them (Envoy and Squid strip one trailing dot first). A label: letters,
# digits, '_' and inner '-', at most MAX_LABEL; a name at most hosts.MAX_NAME characters (checked
# apart). IP literals are [IPv6] or numbers and dots (legacy IPv4 spellings are
# syntactically names too).
LABEL_RE = f"[A-Za-z0-9_]([A-Za-z0-9_-]{{0,{MAX_LABEL - 2}}}[A-Za-z0-9_])?"
_H16 = "[0-9A-Fa-f]{1,4}"
_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_LS32 = f"({_H16}:{_H16}|{_OCTET}(\\.{_OCTET}){{3}})"


def _h16s(n: int) -> str:
    return f"({_H16}:){{{n}}}" if n else ""


def _before(n: int) -> str:
    return f"(({_H16}:){{0,{n}}}{_H16})?" if n else f"({_H16})?"


# RFC 3986 IPv6address, as Python's ipaddress reads it (no zone id).
IPV6_RE = "(" + "|".join([
    f"{_h16s(6)}{_LS32}",
    f"::{_h16s(5)}{_LS32}",
    f"{_before(0)}::{_h16s(4)}{_LS32}",
    f"{_before(1)}::{_h16s(3)}{_LS32}",
    f"{_before(2)}::{_h16s(2)}{_LS32}",
    f"{_before(3)}::{_H16}:{_LS32}",
    f"{_before(4)}::{_LS32}",
    f"{_before(5)}::{_H16}",
    f"{_before(6)}::",
]) + ")"
NAME_RE = f"{LABEL_RE}(\\.{LABEL_RE})*"
VALID_HOST_RE = f"({NAME_RE}|\\[{IPV6_RE}\\])"


# inet_aton's spellings of an IPv4 address other than the dotted quad: 1 to 3 parts, or 4
# parts of which one is hex, octal (a leading zero) or beyond 255.
_ANY_PART = r"(?:0[xX][0-9a-fA-F]*|[0-9]+)"
_QUAD_PART = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_ODD_PART = r"(?:0[xX][0-9a-fA-F]*|0[0-9]+|[0-9]{4,}|[3-9][0-9][0-9]|2[6-9][0-9]|25[6-9])"
LEGACY_IPV4 = "(?:" + "|".join(
    [rf"{_ANY_PART}(?:\.{_ANY_PART}){{0,2}}"]
    + [r"\.".join([_QUAD_PART] * i + [_ODD_PART] + [_ANY_PART] * (3 - i)) for i in range(4)]
) + ")"


def _ci(text: str) -> str:
    return "".join(f"[{c}{c.upper()}]" if c.isalpha() else c for c in text)


def _number_spellings(value: int) -> str:
    """How inet_aton reads a number: decimal, octal (leading 0) or hex (0x), any zeros."""
    alts = [str(value), "0+" + (format(value, "o") if value else ""),
            "0[xX]0*" + _ci(format(value, "x"))]
    return "(?:" + "|".join(dict.fromkeys(alts)) + ")"


def ipv4_spellings(ip: ipaddress.IPv4Address) -> str:
    """RE2 for every spelling inet_aton reads as `ip`: 4, 3, 2 or 1 parts (the last part
    holding the remaining bytes), each in decimal, octal or hex."""
    b = ip.packed
    layouts = [
        (b[0], b[1], b[2], b[3]),
        (b[0], b[1], (b[2] << 8) | b[3]),
        (b[0], (b[1] << 16) | (b[2] << 8) | b[3]),
        (int(ip),),
    ]
    alts = [r"\.".join(_number_spellings(v) for v in layout) for layout in layouts]
    return "(?:" + "|".join(alts) + ")"


def ipv6_spellings(ip: ipaddress.IPv6Address) -> str:
    """RE2 for every RFC 4291 text form of `ip` (without brackets): hex groups with
    optional leading zeros in any case, "::" for any run of zero groups, and the last 32
    bits as a dotted quad."""
    groups = [int.from_bytes(ip.packed[i:i + 2], "big") for i in range(0, 16, 2)]
    tail_v4 = r"\.".join(str(x) for x in ip.packed[12:])

    def group(g: int) -> str:
        h = format(g, "x")
        return f"0{{0,{4 - len(h)}}}" + _ci(h) if len(h) < 4 else _ci(h)

    alts: list[str] = []
    for n, tail in ((8, ""), (6, tail_v4)):
        runs: list[tuple[int, int] | None] = [None]
        runs += [(i, j) for i in range(n) for j in range(i + 1, n + 1)
                 if all(g == 0 for g in groups[i:j])]
        for run in runs:
            if run is None:
                parts = [group(g) for g in groups[:n]] + ([tail] if tail else [])
                alts.append(":".join(parts))
                continue
            left = ":".join(group(g) for g in groups[:run[0]])
            right = [group(g) for g in groups[run[1]:n]] + ([tail] if tail else [])
            alts.append(f"{left}::{':'.join(right)}")
    return "(?:" + "|".join(dict.fromkeys(alts)) + ")"


def literal_spellings(pattern: HostPattern) -> tuple[str, str]:
    """(RE2 for every spelling of an allowlisted IP literal, its canonical authority host).

    An IPv4 address (or IPv4-mapped IPv6 address) is also written as the mapped IPv6
    address, as Squid and the policy read both as one destination."""
    ip = ipaddress.ip_address(pattern.name)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv4Address):
        mapped = ipaddress.IPv6Address(f"::ffff:{ip}")
        return f"(?:{ipv4_spellings(ip)}|\\[{ipv6_spellings(mapped)}\\])", str(ip)
    return f"\\[{ipv6_spellings(ip)}\\]", f"[{ip}]"
