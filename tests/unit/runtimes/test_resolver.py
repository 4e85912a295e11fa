"""--dns-upstream parsing: what is accepted, and one clear error for the rest."""

from __future__ import annotations

import pytest

from netfence.backends import Endpoint
from netfence.errors import UsageError
from netfence.runtimes.resolver import parse_endpoint


@pytest.mark.parametrize(("text", "expected"), [
    ("10.0.0.53", Endpoint("10.0.0.53", 53)),
    ("10.0.0.53:5353", Endpoint("10.0.0.53", 5353)),
    ("[fd00::53]", Endpoint("fd00::53", 53)),
    ("[fd00::53]:5353", Endpoint("fd00::53", 5353)),
    ("fd00::53", Endpoint("fd00::53", 53)),
])
def test_accepted(text: str, expected: Endpoint) -> None:
    assert parse_endpoint(text) == expected


@pytest.mark.parametrize("text", [
    "dns.example", "10.0.0.53:abc", "10.0.0.53:0", "10.0.0.53:70000", "[fd00::53]:abc",
    "[fd00::53]x", "[fe80::1%eth0]",
    # A zone is free text: a newline in it would add a line to Squid's or dnsmasq's config.
    "[fe80::1%x\nhttp_access allow all]", "fe80::1%x\nhttp_access allow all",
])
def test_refused_in_one_line(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_endpoint(text)
    assert str(info.value).startswith("--dns-upstream ")
    assert info.value.exit_code == 2
    assert "\n" not in str(info.value)  # one line, the value shown escaped
