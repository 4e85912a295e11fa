"""profile/host_regex.py: the host grammar backends enforce, and the IP-literal spellings
(Envoy) agreeing with what the policy reads."""

from __future__ import annotations

import ipaddress
import re
import socket

from hypothesis import given, settings
from hypothesis import strategies as st

from netfence.profile import canonical_host, parse_host_pattern
from netfence.profile.host_regex import (
    IPV6_RE,
    LEGACY_IPV4,
    VALID_HOST_RE,
    ipv4_spellings,
    ipv6_spellings,
    literal_spellings,
)
from netfence.profile.hosts import parse_ip

HOSTISH = st.one_of(
    st.from_regex(r"[a-zA-Z0-9_.-]{1,70}", fullmatch=True),
    st.builds(lambda a: f"[{a}]", st.ip_addresses(v=6).map(str)),
    st.builds(lambda a: f"[{a}]", st.from_regex(r"[0-9a-f:.]{1,20}", fullmatch=True)),
)


@settings(max_examples=500, deadline=None)
@given(HOSTISH)
def test_valid_host_regex_is_what_the_policy_reads(host: str) -> None:
    """What backends refuse as invalid_host before resolving, the policy cannot read."""
    stripped = host[:-1] if host.endswith(".") and not host.endswith("..") else host
    matches = re.fullmatch(VALID_HOST_RE, stripped) is not None and len(stripped) <= 253
    try:
        canonical_host(host)
        readable = True
    except ValueError:
        readable = False
    if not matches:
        assert not readable or parse_ip(host) is not None, host
    elif not host.startswith("["):
        assert readable, host


@settings(max_examples=300, deadline=None)
@given(st.ip_addresses(v=6))
def test_ipv6_regex_reads_every_address(ip: ipaddress.IPv6Address) -> None:
    for text in (ip.compressed, ip.exploded, ip.compressed.upper()):
        assert re.fullmatch(IPV6_RE, text), text


# --- IP-literal spellings (Envoy) ------------------------------------------------------


@st.composite
def spelling_of(draw: st.DrawFn, ip: ipaddress.IPv4Address) -> str:
    b = ip.packed
    layout = draw(st.sampled_from([(b[0], b[1], b[2], b[3]), (b[0], b[1], (b[2] << 8) | b[3]),
                                   (b[0], (b[1] << 16) | (b[2] << 8) | b[3]), (int(ip),)]))
    parts = []
    for value in layout:
        kind = draw(st.sampled_from(["dec", "oct", "hex"]))
        zeros = "0" * draw(st.integers(0, 2))
        parts.append({"dec": str(value), "oct": "0" + zeros + format(value, "o"),
                      "hex": "0x" + zeros + format(value, "X" if draw(st.booleans()) else "x")
                      }[kind])
    return ".".join(parts)


@settings(max_examples=400, deadline=None)
@given(st.ip_addresses(v=4), st.data())
def test_ipv4_spellings_match_exactly_what_inet_aton_reads(ip: ipaddress.IPv4Address,
                                                            data: st.DataObject) -> None:
    regex = re.compile(ipv4_spellings(ip))
    text = data.draw(spelling_of(ip))
    assert ipaddress.IPv4Address(socket.inet_aton(text)) == ip
    assert regex.fullmatch(text), text
    other = data.draw(st.ip_addresses(v=4).filter(lambda o: o != ip))
    assert isinstance(other, ipaddress.IPv4Address)
    assert not regex.fullmatch(data.draw(spelling_of(other)))


@settings(max_examples=300, deadline=None)
@given(st.ip_addresses(v=6), st.ip_addresses(v=6))
def test_ipv6_spellings_match_every_form_of_one_address(ip: ipaddress.IPv6Address,
                                                        other: ipaddress.IPv6Address) -> None:
    regex = re.compile(ipv6_spellings(ip))
    forms = {ip.compressed, ip.exploded, ip.compressed.upper(), ip.exploded.replace(":0", ":")}
    if ip.ipv4_mapped is not None:
        forms.add(f"::ffff:{ip.ipv4_mapped}")
    for text in forms:
        if parse_ip(text) == ip:
            assert regex.fullmatch(text), text
    if other != ip:
        assert not regex.fullmatch(other.compressed)


def test_literal_spellings_include_the_mapped_form() -> None:
    regex, canonical = literal_spellings(parse_host_pattern("10.203.0.3"))
    assert canonical == "10.203.0.3"
    for text in ("0xacb0003", "[::ffff:10.203.0.3]", "[0:0:0:0:0:FFFF:ACB:3]"):
        assert re.fullmatch(regex, text), text
    regex6, canonical6 = literal_spellings(parse_host_pattern("fd00::5"))
    assert canonical6 == "[fd00::5]" and re.fullmatch(regex6, "[FD00:0::0.0.0.5]")


def test_legacy_ipv4_regex_is_every_spelling_but_the_dotted_quad() -> None:
    for text in ("0x7f000001", "127.1", "0177.0.0.1", "2130706433", "127.0.0.01", "1.2.3.256"):
        assert re.fullmatch(LEGACY_IPV4, text), text
    for text in ("127.0.0.1", "10.203.0.3", "0.0.0.0", "example.com", "1.2.3.4.5"):
        assert not re.fullmatch(LEGACY_IPV4, text), text
