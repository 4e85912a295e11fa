"""Host names and allow_host patterns: one normalisation shared by profile and policy."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netfence.profile import HostPattern, canonical_host, parse_host_pattern, split_host_port
from netfence.profile.hosts import MAX_LABEL, MAX_NAME, canonical_name, parse_ip

# --- strategies --------------------------------------------------------------------------

LABEL = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
# Names whose last label has a letter: an all-digit name is an IPv4 literal, not a name.
TLD = st.from_regex(r"[a-z][a-z0-9]{1,9}", fullmatch=True)
NAMES = st.builds(
    lambda labels, tld: ".".join([*labels, tld]),
    st.lists(LABEL, min_size=1, max_size=4),
    TLD,
)
BAD_CHARS = st.sampled_from(
    [" ", "\t", "\n", "\r", "\x00", "\x01", "\x1f", "\x7f", "\u00a0", "\u2003", "\u3000"]
)


# --- valid patterns ----------------------------------------------------------------------

VALID_PATTERNS: list[tuple[str, str, bool, bool]] = [
    # raw, canonical name, subdomains, is_ip
    ("example.com", "example.com", False, False),
    ("EXAMPLE.COM", "example.com", False, False),
    ("Example.Com.", "example.com", False, False),
    ("api.example.com", "api.example.com", False, False),
    (".example.com", "example.com", True, False),
    ("*.example.com", "example.com", True, False),
    ("*.EXAMPLE.com.", "example.com", True, False),
    (".Example.COM.", "example.com", True, False),
    ("_dmarc.example.com", "_dmarc.example.com", False, False),
    ("a-b.example", "a-b.example", False, False),
    ("localhost", "localhost", False, False),  # parseable; the policy denies it
    ("bücher.example", "xn--bcher-kva.example", False, False),
    ("BÜCHER.example.", "xn--bcher-kva.example", False, False),
    ("xn--bcher-kva.example", "xn--bcher-kva.example", False, False),
    ("XN--BCHER-KVA.EXAMPLE", "xn--bcher-kva.example", False, False),
    ("*.bücher.example", "xn--bcher-kva.example", True, False),
    (".münchen.de", "xn--mnchen-3ya.de", True, False),
    ("b\u00fccher\u3002example", "xn--bcher-kva.example", False, False),  # ideographic dot
    ("10.0.0.1", "10.0.0.1", False, True),
    ("10.0.0.1.", "10.0.0.1", False, True),
    ("8.8.8.8", "8.8.8.8", False, True),
    ("::1", "::1", False, True),
    ("[::1]", "::1", False, True),
    ("2001:DB8::1", "2001:db8::1", False, True),
    ("[2001:db8:0:0:0:0:0:1]", "2001:db8::1", False, True),
    ("fe80::1%eth0", "fe80::1", False, True),  # a zone id is not part of the address
    ("[fe80::1%eth0]", "fe80::1", False, True),
    ("2001:db8::1%eth0", "2001:db8::1", False, True),
    ("::ffff:10.0.0.1", "::ffff:a00:1", False, True),
    ("127.1", "127.0.0.1", False, True),
    ("0x7f000001", "127.0.0.1", False, True),
    ("2130706433", "127.0.0.1", False, True),
    ("0177.0.0.1", "127.0.0.1", False, True),
    ("a" * MAX_LABEL + ".com", "a" * MAX_LABEL + ".com", False, False),
]


@pytest.mark.parametrize(("raw", "name", "subdomains", "is_ip"), VALID_PATTERNS)
def test_valid_patterns(raw: str, name: str, subdomains: bool, is_ip: bool) -> None:
    assert parse_host_pattern(raw) == HostPattern(name=name, subdomains=subdomains, is_ip=is_ip)


def test_dot_and_star_prefix_mean_the_same() -> None:
    assert parse_host_pattern(".example.com") == parse_host_pattern("*.example.com")


def test_name_of_exactly_max_length_is_accepted() -> None:
    name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    assert len(name) == MAX_NAME
    assert parse_host_pattern(name).name == name
    assert parse_host_pattern(name + ".").name == name


def test_str_round_trips() -> None:
    for raw in ("example.com", "*.example.com", ".example.com", "10.0.0.1", "::1", "bücher.de"):
        pattern = parse_host_pattern(raw)
        assert parse_host_pattern(str(pattern)) == pattern
    assert str(parse_host_pattern(".example.com")) == "*.example.com"


# --- rejected patterns -------------------------------------------------------------------

INVALID_PATTERNS: list[tuple[str, str]] = [
    # raw, fragment of the reason
    ("", "empty host"),
    (" ", "whitespace"),
    ("exa mple.com", "whitespace"),
    (" example.com", "whitespace"),
    ("example.com ", "whitespace"),
    ("example.com\n", "whitespace or a control character"),
    ("\texample.com", "whitespace or a control character"),
    ("exa\x00mple.com", "control character"),
    ("exa\x1bmple.com", "control character"),
    ("exa\x7fmple.com", "control character"),
    ("http://example.com", "scheme"),
    ("https://example.com/", "scheme"),
    ("HTTPS://example.com", "scheme"),
    ("example.com/path", "path"),
    ("example.com/", "path"),
    ("example.com?q=1", "path"),
    ("example.com#frag", "path"),
    ("user@example.com", "user information"),
    ("example.com:443", "port"),
    ("example.com:", "port"),
    ("1.2.3.4:80", "port"),
    ("[::1]:443", "port"),
    ("*", "'*' alone"),
    ("*example.com", "whole leading label"),
    ("ex*ample.com", "whole leading label"),
    ("foo.*.example.com", "whole leading label"),
    ("example.*", "whole leading label"),
    ("example.com*", "whole leading label"),
    ("*.*.example.com", "whole leading label"),
    ("**.example.com", "whole leading label"),
    ("*.", "empty"),
    (".", "empty label"),
    ("..", "empty label"),
    ("..example.com", "empty label"),
    ("a..example.com", "empty label"),
    ("example.com..", "empty label"),
    ("a" * (MAX_LABEL + 1) + ".com", "label longer than 63"),
    ("*." + "a" * (MAX_LABEL + 1) + ".com", "label longer than 63"),
    (".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 62]), "longer than 253"),
    ("-foo.example.com", "not allowed"),
    ("foo-.example.com", "not allowed"),
    ("exa!mple.com", "not allowed"),
    ("exa'mple.com", "not allowed"),
    ("*.10.0.0.1", "wildcard cannot apply to an IP"),
]


@pytest.mark.parametrize(("raw", "reason"), INVALID_PATTERNS)
def test_invalid_patterns_are_rejected_with_a_reason(raw: str, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_host_pattern(raw)
    assert reason in str(info.value), str(info.value)


@pytest.mark.parametrize("raw", [raw for raw, _ in INVALID_PATTERNS])
def test_canonical_host_rejects_the_same_strings(raw: str) -> None:
    with pytest.raises(ValueError):
        canonical_host(raw)


def test_canonical_host_never_takes_a_wildcard() -> None:
    for raw in ("*", "*.example.com", ".example.com"):
        with pytest.raises(ValueError):
            canonical_host(raw)


# --- canonical_host: what a request's host means -----------------------------------------

CANONICAL: list[tuple[str, str | ipaddress.IPv4Address | ipaddress.IPv6Address]] = [
    ("Example.COM", "example.com"),
    ("example.com.", "example.com"),
    ("BÜCHER.example", "xn--bcher-kva.example"),
    ("127.0.0.1", ipaddress.IPv4Address("127.0.0.1")),
    ("127.0.0.1.", ipaddress.IPv4Address("127.0.0.1")),
    ("127.1", ipaddress.IPv4Address("127.0.0.1")),
    ("2130706433", ipaddress.IPv4Address("127.0.0.1")),
    ("0x7f000001", ipaddress.IPv4Address("127.0.0.1")),
    ("0X7F000001", ipaddress.IPv4Address("127.0.0.1")),
    ("0177.0.0.1", ipaddress.IPv4Address("127.0.0.1")),
    ("0x7f.1", ipaddress.IPv4Address("127.0.0.1")),
    ("10.1", ipaddress.IPv4Address("10.0.0.1")),
    ("3232235777", ipaddress.IPv4Address("192.168.1.1")),
    ("0", ipaddress.IPv4Address("0.0.0.0")),
    ("[::1]", ipaddress.IPv6Address("::1")),
    ("::FFFF:127.0.0.1", ipaddress.IPv6Address("::ffff:7f00:1")),
    ("fe80::1%25eth0", ipaddress.IPv6Address("fe80::1")),
]


@pytest.mark.parametrize(("raw", "expected"), CANONICAL)
def test_canonical_host(raw: str, expected: object) -> None:
    assert canonical_host(raw) == expected
    assert type(canonical_host(raw)) is type(expected)


@pytest.mark.parametrize("raw", ["example.com", "a.b", "1.2.3.4.5", "0x7f.example", "1e100.net"])
def test_names_that_look_numeric_stay_names(raw: str) -> None:
    assert parse_ip(raw) is None
    assert canonical_host(raw) == raw


def test_canonical_name_rejects_ip_brackets_and_ports() -> None:
    with pytest.raises(ValueError, match="port"):
        canonical_name("[::1]")


# --- matching ----------------------------------------------------------------------------

MATCHES: list[tuple[str, str, bool]] = [
    ("example.com", "example.com", True),
    ("example.com", "www.example.com", False),
    ("example.com", "evilexample.com", False),
    ("*.example.com", "example.com", True),
    ("*.example.com", "www.example.com", True),
    ("*.example.com", "a.b.c.example.com", True),
    ("*.example.com", "evilexample.com", False),
    ("*.example.com", "example.com.evil.net", False),
    ("*.example.com", "example.org", False),
    ("*.example.com", "com", False),
    (".example.com", "x.example.com", True),
    (".example.com", "xexample.com", False),
    ("10.0.0.1", "10.0.0.1", True),
    ("10.0.0.1", "10.0.0.2", False),
]


@pytest.mark.parametrize(("pattern", "host", "expected"), MATCHES)
def test_matches(pattern: str, host: str, expected: bool) -> None:
    assert parse_host_pattern(pattern).matches(host) is expected


# --- generated names ---------------------------------------------------------------------


@given(NAMES)
def test_generated_names_normalise_case_and_one_trailing_dot(name: str) -> None:
    plain = parse_host_pattern(name)
    assert plain == HostPattern(name=name)
    assert parse_host_pattern(name.upper()) == plain
    assert parse_host_pattern(name + ".") == plain
    assert parse_host_pattern(name.title() + ".") == plain
    assert canonical_host(name.upper() + ".") == name


@given(NAMES, LABEL)
def test_generated_wildcards_cover_apex_and_subdomains_only(name: str, label: str) -> None:
    star, dot = parse_host_pattern("*." + name), parse_host_pattern("." + name)
    assert star == dot == HostPattern(name=name, subdomains=True)
    assert star.matches(name)
    assert star.matches(f"{label}.{name}")
    assert star.matches(f"{label}.{label}.{name}")
    assert not star.matches(label + name)  # look-alike without the dot
    assert not star.matches(f"{name}.{label}x")  # the name as a prefix of another
    exact = parse_host_pattern(name)
    assert exact.matches(name)
    assert not exact.matches(f"{label}.{name}")


@given(NAMES, BAD_CHARS, st.data())
def test_generated_names_with_whitespace_or_controls_are_rejected(
    name: str, bad: str, data: st.DataObject
) -> None:
    at = data.draw(st.integers(0, len(name)))
    raw = name[:at] + bad + name[at:]
    with pytest.raises(ValueError):
        parse_host_pattern(raw)
    with pytest.raises(ValueError):
        canonical_host(raw)


@given(NAMES, st.integers(1, 65535))
def test_generated_names_with_a_port_are_rejected(name: str, port: int) -> None:
    with pytest.raises(ValueError, match="port"):
        parse_host_pattern(f"{name}:{port}")


@given(NAMES, st.sampled_from(["http", "https", "ftp"]))
def test_generated_names_with_a_scheme_are_rejected(name: str, scheme: str) -> None:
    with pytest.raises(ValueError, match="scheme"):
        parse_host_pattern(f"{scheme}://{name}")


@given(NAMES, st.integers(MAX_LABEL + 1, 120))
def test_generated_overlong_labels_are_rejected(name: str, length: int) -> None:
    with pytest.raises(ValueError, match="label longer than 63"):
        parse_host_pattern("a" * length + "." + name)


@given(NAMES, st.integers(1, 3))
def test_star_inside_a_generated_name_is_rejected(name: str, where: int) -> None:
    labels = name.split(".")
    labels.insert(min(where, len(labels)), "*")
    with pytest.raises(ValueError, match=r"\*"):
        parse_host_pattern(".".join(labels))


@given(st.ip_addresses())
def test_generated_ip_literals(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    pattern = parse_host_pattern(str(ip))
    assert pattern == HostPattern(name=str(ip), is_ip=True)
    assert canonical_host(str(ip)) == ip
    if ip.version == 6:
        assert parse_host_pattern(f"[{ip}]") == pattern
        assert parse_host_pattern(str(ip).upper()) == pattern
    else:
        assert parse_host_pattern(f"{ip}.") == pattern
        assert canonical_host(str(int(ip))) == ip  # the decimal spelling
        assert canonical_host(hex(int(ip))) == ip  # the hex spelling


# --- host:port ---------------------------------------------------------------------------

SPLITS: list[tuple[str, tuple[str, str | None]]] = [
    ("example.com", ("example.com", None)),
    ("example.com:443", ("example.com", "443")),
    ("example.com:", ("example.com", "")),
    ("example.com:x", ("example.com", "x")),
    ("10.0.0.1:53", ("10.0.0.1", "53")),
    ("[::1]", ("::1", None)),
    ("[::1]:8080", ("::1", "8080")),
    ("[::1]:", ("::1", "")),
    ("::1", ("::1", None)),  # several colons, no brackets: an address, no port
    ("2001:db8::1:443", ("2001:db8::1:443", None)),
    ("", ("", None)),
]


@pytest.mark.parametrize(("text", "expected"), SPLITS)
def test_split_host_port(text: str, expected: tuple[str, str | None]) -> None:
    assert split_host_port(text) == expected


@pytest.mark.parametrize("text", ["[::1", "[::1]5", "[::1]x:80", "[::1]]"])
def test_split_host_port_refuses_what_follows_a_bracket(text: str) -> None:
    with pytest.raises(ValueError, match="expected"):
        split_host_port(text)
