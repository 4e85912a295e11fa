"""compile_policy and Policy.decide: the reference decision every backend must agree with."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netfence.policy import LOOPBACK_HOSTS, Decision, Policy, Reason, compile_policy
from netfence.policy.denied import is_denied_name, is_denied_zone
from netfence.profile import BUILTIN_PROFILES, HostPattern, Profile, canonical_host, with_overrides
from netfence.profile.loader import parse_profile

R = Reason


def policy_for(outbound: dict[str, Any] | None = None, *, mode: str = "bridge",
               inbound: dict[str, Any] | None = None, host_addresses: tuple[str, ...] = ()
               ) -> Policy:
    data = {"network": {"mode": mode, "outbound": outbound or {}, "inbound": inbound or {}}}
    profile = parse_profile(data, "test")
    return compile_policy(profile, [ipaddress.ip_address(a) for a in host_addresses])


ALLOW_ALL = compile_policy(BUILTIN_PROFILES["network"])
EXAMPLE = policy_for({"allow_host": ["example.com"]})

# --- always-denied addresses -------------------------------------------------------------

DENIED_ADDRESSES: list[tuple[str, Reason]] = [
    # loopback
    ("127.0.0.1", R.LOOPBACK_ADDRESS),
    ("127.0.0.53", R.LOOPBACK_ADDRESS),
    ("127.255.255.254", R.LOOPBACK_ADDRESS),
    ("::1", R.LOOPBACK_ADDRESS),
    # unspecified (dialing it reaches this host's own listeners)
    ("0.0.0.0", R.LOOPBACK_ADDRESS),
    ("0.1.2.3", R.LOOPBACK_ADDRESS),
    ("::", R.LOOPBACK_ADDRESS),
    # link-local, with the cloud metadata service
    ("169.254.169.254", R.LINK_LOCAL_ADDRESS),
    ("169.254.0.1", R.LINK_LOCAL_ADDRESS),
    ("169.254.255.255", R.LINK_LOCAL_ADDRESS),
    ("fe80::1", R.LINK_LOCAL_ADDRESS),
    ("fe80::a9fe:a9fe", R.LINK_LOCAL_ADDRESS),
    ("febf:ffff::1", R.LINK_LOCAL_ADDRESS),
    # private
    ("10.0.0.1", R.PRIVATE_ADDRESS),
    ("10.255.255.255", R.PRIVATE_ADDRESS),
    ("172.16.0.1", R.PRIVATE_ADDRESS),
    ("172.31.255.254", R.PRIVATE_ADDRESS),
    ("192.168.0.1", R.PRIVATE_ADDRESS),
    ("192.168.255.255", R.PRIVATE_ADDRESS),
    ("fc00::1", R.PRIVATE_ADDRESS),
    ("fd12:3456:789a::1", R.PRIVATE_ADDRESS),
    ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", R.PRIVATE_ADDRESS),
    # CGNAT
    ("100.64.0.1", R.PRIVATE_ADDRESS),
    ("100.127.255.254", R.PRIVATE_ADDRESS),
    # multicast and broadcast
    ("224.0.0.1", R.SPECIAL_ADDRESS),
    ("239.255.255.250", R.SPECIAL_ADDRESS),
    ("255.255.255.255", R.SPECIAL_ADDRESS),
    ("ff02::1", R.SPECIAL_ADDRESS),
    ("ff0e::fb", R.SPECIAL_ADDRESS),
    # reserved and benchmarking
    ("198.18.0.1", R.SPECIAL_ADDRESS),
    ("198.19.255.254", R.SPECIAL_ADDRESS),
    ("240.0.0.1", R.SPECIAL_ADDRESS),
    ("250.1.2.3", R.SPECIAL_ADDRESS),
    ("192.0.0.8", R.SPECIAL_ADDRESS),
    ("192.88.99.1", R.SPECIAL_ADDRESS),
    ("100::1", R.SPECIAL_ADDRESS),
    ("fec0::1", R.SPECIAL_ADDRESS),
    # documentation
    ("192.0.2.1", R.SPECIAL_ADDRESS),
    ("198.51.100.7", R.SPECIAL_ADDRESS),
    ("203.0.113.9", R.SPECIAL_ADDRESS),
    ("2001:db8::1", R.SPECIAL_ADDRESS),
    ("3fff::1", R.SPECIAL_ADDRESS),
    # IPv4-mapped: reaches the embedded IPv4 address
    ("::ffff:127.0.0.1", R.LOOPBACK_ADDRESS),
    ("::ffff:0.0.0.0", R.LOOPBACK_ADDRESS),
    ("::ffff:10.0.0.1", R.PRIVATE_ADDRESS),
    ("::ffff:192.168.1.1", R.PRIVATE_ADDRESS),
    ("::ffff:169.254.169.254", R.LINK_LOCAL_ADDRESS),
    ("::ffff:224.0.0.1", R.SPECIAL_ADDRESS),
    # NAT64 (well-known prefix and local-use prefix)
    ("64:ff9b::a00:1", R.PRIVATE_ADDRESS),
    ("64:ff9b::7f00:1", R.LOOPBACK_ADDRESS),
    ("64:ff9b::a9fe:a9fe", R.LINK_LOCAL_ADDRESS),
    ("64:ff9b:1::a00:1", R.SPECIAL_ADDRESS),
    # 6to4 (embeds any IPv4 address) and Teredo
    ("2002:a00:1::1", R.SPECIAL_ADDRESS),
    ("2002:7f00:1::1", R.SPECIAL_ADDRESS),
    ("2002:808:808::1", R.SPECIAL_ADDRESS),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", R.SPECIAL_ADDRESS),
    ("2001::1", R.SPECIAL_ADDRESS),
]

PUBLIC_ADDRESSES = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "9.255.255.255",
    "11.0.0.0",
    "100.63.255.255",
    "100.128.0.0",
    "169.253.255.255",
    "169.255.0.0",
    "172.15.255.255",
    "172.32.0.0",
    "192.167.255.255",
    "192.169.0.0",
    "198.17.255.255",
    "198.20.0.0",
    "223.255.255.255",
    "2606:4700:4700::1111",
    "2001:4860:4860::8888",
    "2a00:1450:4001::1",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
]


@pytest.mark.parametrize(("ip", "reason"), DENIED_ADDRESSES)
def test_denied_address_literal_even_with_allow_all(ip: str, reason: Reason) -> None:
    for host in (ip, f"[{ip}]" if ":" in ip else ip):
        decision = ALLOW_ALL.decide(host, 443)
        assert not decision.allowed
        assert decision.reason is reason
        assert decision.ip == str(ipaddress.ip_address(ip))


@pytest.mark.parametrize(("ip", "reason"), DENIED_ADDRESSES)
def test_denied_address_as_resolved_address_of_an_allowed_name(ip: str, reason: Reason) -> None:
    for policy in (EXAMPLE, ALLOW_ALL):
        decision = policy.decide("example.com", 443, ip)
        assert (decision.allowed, decision.reason) == (False, reason)
        assert decision.host == "example.com"
        assert decision.ip == str(ipaddress.ip_address(ip))


@pytest.mark.parametrize(("ip", "reason"), DENIED_ADDRESSES)
def test_denied_address_even_when_listed_in_allow_host(ip: str, reason: Reason) -> None:
    decision = policy_for({"allow_host": [ip]}).decide(ip, 443)
    assert (decision.allowed, decision.reason) == (False, reason)


@pytest.mark.parametrize("ip", PUBLIC_ADDRESSES)
def test_public_addresses_are_allowed(ip: str) -> None:
    assert ALLOW_ALL.decide(ip, 443).allowed
    assert ALLOW_ALL.decide(ip, 80).allowed
    assert EXAMPLE.decide("example.com", 443, ip).allowed
    assert policy_for({"allow_host": [ip]}).decide(ip, 443).allowed
    assert not EXAMPLE.decide(ip, 443).allowed  # an IP literal needs its own entry


# --- denied names ------------------------------------------------------------------------

DENIED_NAMES = [
    "localhost",
    "LOCALHOST",
    "localhost.",
    "foo.localhost",
    "a.b.localhost",
    "Foo.LocalHost.",
    "host.docker.internal",
    "Host.Docker.Internal.",
    "gateway.docker.internal",
    "host.containers.internal",
]


@pytest.mark.parametrize("host", DENIED_NAMES)
def test_denied_names(host: str) -> None:
    explicit = policy_for({"allow_host": ["localhost", "*.localhost", "*.docker.internal",
                                         "host.containers.internal"]})
    for policy in (ALLOW_ALL, explicit):
        decision = policy.decide(host, 443)
        assert (decision.allowed, decision.reason) == (False, R.DENIED_NAME), policy
        assert decision.remedy is None
        # Denied before any address is considered, even a public one.
        assert policy.decide(host, 443, "93.184.216.34").reason is R.DENIED_NAME


@pytest.mark.parametrize("host", ["notlocalhost", "localhost.example.com", "docker.internal",
                                  "other.docker.internal", "localhostx.com"])
def test_near_denied_names_are_ordinary_names(host: str) -> None:
    assert ALLOW_ALL.decide(host, 443).allowed


def test_one_denied_name_test() -> None:
    for host in DENIED_NAMES:
        assert is_denied_name(str(canonical_host(host))), host
    for name in ("notlocalhost", "localhost.example.com", "docker.internal",
                 "other.docker.internal", "x.host.docker.internal"):
        assert not is_denied_name(name), name
    # A zone is denied with every name below it; a denied name alone is not a zone.
    assert is_denied_zone("localhost") and is_denied_zone("a.localhost")
    assert not is_denied_zone("host.docker.internal")


# --- the host's own addresses ------------------------------------------------------------

HOST_ADDRESSES = ("93.184.216.34", "10.1.2.3", "2a00:1450:4001::99")


@pytest.mark.parametrize(
    "target",
    ["93.184.216.34", "10.1.2.3", "2a00:1450:4001::99", "::ffff:93.184.216.34",
     "::ffff:10.1.2.3", "64:ff9b::5db8:d822", "[2a00:1450:4001::99]"],
)
@pytest.mark.parametrize(
    "cidrs",
    [[], ["10.0.0.0/8"], ["93.184.216.0/24"], ["0.0.0.0/0", "::/0"], ["10.1.2.3/32"],
     ["2a00:1450::/32"]],
)
def test_host_addresses_are_denied_whatever_allow_cidr_says(target: str,
                                                             cidrs: list[str]) -> None:
    policy = policy_for({"insecure_allow_all": True, "allow_cidr": cidrs},
                        host_addresses=HOST_ADDRESSES)
    literal = policy.decide(target, 443)
    assert (literal.allowed, literal.reason) == (False, R.HOST_ADDRESS)
    resolved = policy.decide("example.com", 443, target.strip("[]"))
    assert (resolved.allowed, resolved.reason) == (False, R.HOST_ADDRESS)
    assert resolved.remedy is None
    assert "host_address" in resolved.describe()
    assert "to allow" not in resolved.describe()


def test_other_addresses_are_not_host_addresses() -> None:
    policy = policy_for({"insecure_allow_all": True}, host_addresses=HOST_ADDRESSES)
    assert policy.decide("93.184.216.35", 443).allowed
    assert policy.decide("10.1.2.4", 443).reason is R.PRIVATE_ADDRESS


def test_host_addresses_are_deduplicated() -> None:
    policy = policy_for(host_addresses=("10.1.2.3", "10.1.2.3", "fd00::2"))
    assert policy.host_addresses == (ipaddress.ip_address("10.1.2.3"),
                                     ipaddress.ip_address("fd00::2"))


def test_host_loopback_and_link_local_keep_their_precise_reason() -> None:
    # The runtime passes every host address, 127.0.0.1 and fe80:: ones included.
    policy = policy_for({"insecure_allow_all": True, "allow_cidr": ["0.0.0.0/0", "::/0"]},
                        host_addresses=("127.0.0.1", "::1", "fe80::1", "10.1.2.3"))
    assert policy.host_addresses == (ipaddress.ip_address("10.1.2.3"),)
    assert policy.decide("127.0.0.1", 80).reason is R.LOOPBACK_ADDRESS
    assert policy.decide("[::1]", 80).reason is R.LOOPBACK_ADDRESS
    assert policy.decide("fe80::1", 80).reason is R.LINK_LOCAL_ADDRESS
    assert policy.decide("10.1.2.3", 80).reason is R.HOST_ADDRESS


# --- allow_cidr --------------------------------------------------------------------------

LIFTED: list[tuple[list[str], str]] = [
    (["10.0.0.0/8"], "10.1.2.3"),
    (["10.0.0.0/8"], "::ffff:10.1.2.3"),
    (["10.0.0.0/8"], "64:ff9b::a01:203"),
    (["10.1.2.3/32"], "10.1.2.3"),
    (["172.16.0.0/12"], "172.20.0.5"),
    (["192.168.0.0/16"], "192.168.1.1"),
    (["100.64.0.0/10"], "100.100.100.100"),
    (["fc00::/7"], "fd00::5"),
    (["198.18.0.0/15"], "198.18.0.1"),
    (["203.0.113.0/24"], "203.0.113.9"),
    (["0.0.0.0/0"], "192.168.1.1"),
    (["::ffff:10.0.0.0/104"], "::ffff:10.1.2.3"),
]


@pytest.mark.parametrize(("cidrs", "target"), LIFTED)
def test_allow_cidr_lifts_private_and_special_ranges(cidrs: list[str], target: str) -> None:
    policy = policy_for({"allow_host": ["example.com", target], "allow_cidr": cidrs})
    assert policy.decide("example.com", 443, target).allowed
    assert policy.decide(target, 443).allowed
    allow_all = policy_for({"insecure_allow_all": True, "allow_cidr": cidrs})
    assert allow_all.decide(target, 443).allowed
    without = policy_for({"allow_host": ["example.com"]})
    assert not without.decide("example.com", 443, target).allowed


NOT_LIFTED: list[tuple[list[str], str, Reason]] = [
    (["10.0.0.0/24"], "10.0.1.1", R.PRIVATE_ADDRESS),
    (["10.0.0.0/8"], "172.16.0.1", R.PRIVATE_ADDRESS),
    (["10.0.0.0/8"], "fd00::1", R.PRIVATE_ADDRESS),
    (["127.0.0.0/8"], "127.0.0.1", R.LOOPBACK_ADDRESS),
    (["127.0.0.0/8"], "::ffff:127.0.0.1", R.LOOPBACK_ADDRESS),
    (["::1/128"], "::1", R.LOOPBACK_ADDRESS),
    (["0.0.0.0/8"], "0.0.0.0", R.LOOPBACK_ADDRESS),
    (["::/128"], "::", R.LOOPBACK_ADDRESS),
    (["169.254.0.0/16"], "169.254.169.254", R.LINK_LOCAL_ADDRESS),
    (["169.254.169.254/32"], "169.254.169.254", R.LINK_LOCAL_ADDRESS),
    (["169.254.0.0/16"], "::ffff:169.254.169.254", R.LINK_LOCAL_ADDRESS),
    (["fe80::/10"], "fe80::1", R.LINK_LOCAL_ADDRESS),
    (["0.0.0.0/0", "::/0"], "127.0.0.1", R.LOOPBACK_ADDRESS),
    (["0.0.0.0/0", "::/0"], "::1", R.LOOPBACK_ADDRESS),
    (["0.0.0.0/0", "::/0"], "169.254.169.254", R.LINK_LOCAL_ADDRESS),
    (["0.0.0.0/0", "::/0"], "fe80::1", R.LINK_LOCAL_ADDRESS),
    (["0.0.0.0/0", "::/0"], "64:ff9b::7f00:1", R.LOOPBACK_ADDRESS),
    # The IPv4-compatible form carries any IPv4 address: never lifted.
    (["::/0"], "::127.0.0.1", R.SPECIAL_ADDRESS),
    (["::/96"], "::169.254.169.254", R.SPECIAL_ADDRESS),
    (["::/96"], "::10.1.2.3", R.SPECIAL_ADDRESS),
]


@pytest.mark.parametrize(("cidrs", "target", "reason"), NOT_LIFTED)
def test_allow_cidr_never_lifts_loopback_or_link_local(cidrs: list[str], target: str,
                                                       reason: Reason) -> None:
    policy = policy_for({"insecure_allow_all": True, "allow_cidr": cidrs})
    for decision in (policy.decide(target, 443), policy.decide("example.com", 443, target)):
        assert (decision.allowed, decision.reason) == (False, reason)


# --- names: wildcards, case, trailing dot, IDN -------------------------------------------

NAME_CASES: list[tuple[list[str], str, bool]] = [
    (["example.com"], "example.com", True),
    (["example.com"], "www.example.com", False),
    (["*.example.com"], "example.com", True),
    (["*.example.com"], "www.example.com", True),
    (["*.example.com"], "a.b.example.com", True),
    ([".example.com"], "example.com", True),
    ([".example.com"], "deep.sub.example.com", True),
    (["*.example.com"], "evilexample.com", False),
    ([".example.com"], "evilexample.com", False),
    (["*.example.com"], "example.com.evil.net", False),
    (["*.example.com"], "example.org", False),
    (["*.example.com"], "com", False),
    (["example.com"], "EXAMPLE.COM", True),
    (["example.com"], "example.com.", True),
    (["EXAMPLE.com."], "Example.Com", True),
    (["*.Example.COM"], "WWW.example.com.", True),
    (["example.com"], "example.com..", False),
    (["bücher.example"], "bücher.example", True),
    (["bücher.example"], "BÜCHER.EXAMPLE.", True),
    (["bücher.example"], "xn--bcher-kva.example", True),
    (["xn--bcher-kva.example"], "bücher.example", True),
    (["bücher.example"], "bucher.example", False),
    (["*.bücher.example"], "shop.bücher.example", True),
    (["example.com"], "\u0435xample.com", False),  # Cyrillic homograph
    (["a.test", "b.test"], "b.test", True),
    (["a.test", "b.test"], "c.test", False),
]


@pytest.mark.parametrize(("allow", "host", "allowed"), NAME_CASES)
def test_names(allow: list[str], host: str, allowed: bool) -> None:
    decision = policy_for({"allow_host": allow}).decide(host, 443)
    assert decision.allowed is allowed
    if not allowed:
        assert decision.reason in (R.NOT_ALLOWLISTED, R.INVALID_HOST)


def test_decision_reports_the_canonical_name() -> None:
    decision = policy_for({"allow_host": ["bücher.example"]}).decide("BÜCHER.example.", 443)
    assert decision.host == "xn--bcher-kva.example"
    assert EXAMPLE.decide("EXAMPLE.com.", 443).host == "example.com"


@pytest.mark.parametrize("host", ["", " ", "exa mple.com", "http://example.com",
                                  "example.com/x", "example.com:443", "*.example.com", "*",
                                  "a" * 64 + ".com", "exa\x00mple.com", "user@example.com"])
def test_invalid_hosts(host: str) -> None:
    for policy in (EXAMPLE, ALLOW_ALL):
        decision = policy.decide(host, 443)
        assert (decision.allowed, decision.reason) == (False, R.INVALID_HOST)
        assert decision.remedy is None


def test_invalid_resolved_address() -> None:
    decision = EXAMPLE.decide("example.com", 443, "not-an-ip")
    assert (decision.allowed, decision.reason) == (False, R.INVALID_HOST)


# --- ports -------------------------------------------------------------------------------

PORT_CASES: list[tuple[dict[str, Any], int, bool]] = [
    ({}, 80, True),
    ({}, 443, True),
    ({}, 8080, False),
    ({}, 22, False),
    ({}, 0, False),
    ({}, 65536, False),
    ({}, -1, False),
    ({"allow_port": [8443]}, 8443, True),
    ({"allow_port": [8443]}, 443, False),
    ({"allow_port": [8443]}, 80, False),
    ({"allow_port": [22, 8080]}, 22, True),
    ({"allow_port": [1, 65535]}, 1, True),
    ({"allow_port": [1, 65535]}, 65535, True),
    ({"allow_port": [1, 65535]}, 0, False),
    ({"allow_port": [1, 65535]}, 65536, False),
    ({"allow_port": []}, 80, False),
    ({"allow_port": []}, 443, False),
]


@pytest.mark.parametrize(("extra", "port", "allowed"), PORT_CASES)
def test_ports(extra: dict[str, Any], port: int, allowed: bool) -> None:
    for outbound, host in (({"allow_host": ["example.com"]}, "example.com"),
                           ({"insecure_allow_all": True}, "8.8.8.8")):
        decision = policy_for({**outbound, **extra}).decide(host, port)
        assert decision.allowed is allowed
        if not allowed:
            assert decision.reason is R.PORT_NOT_ALLOWED


@given(st.integers(1, 65535))
def test_generated_ports(port: int) -> None:
    assert EXAMPLE.decide("example.com", port).allowed is (port in (80, 443))
    custom = policy_for({"allow_host": ["example.com"], "allow_port": [port]})
    assert custom.decide("example.com", port).allowed
    other = port % 65535 + 1
    assert not custom.decide("example.com", other).allowed


@given(st.one_of(st.integers(max_value=0), st.integers(min_value=65536)))
def test_generated_out_of_range_ports_are_denied(port: int) -> None:
    decision = ALLOW_ALL.decide("example.com", port)
    assert (decision.allowed, decision.reason) == (False, R.PORT_NOT_ALLOWED)


# --- check order: name, then port, then address ------------------------------------------


def test_order_name_before_port_before_address() -> None:
    assert EXAMPLE.decide("evil.test", 8080, "127.0.0.1").reason is R.NOT_ALLOWLISTED
    assert EXAMPLE.decide("localhost", 8080, "127.0.0.1").reason is R.DENIED_NAME
    assert EXAMPLE.decide("example.com", 8080, "127.0.0.1").reason is R.PORT_NOT_ALLOWED
    assert EXAMPLE.decide("example.com", 443, "127.0.0.1").reason is R.LOOPBACK_ADDRESS
    assert EXAMPLE.decide("8.8.8.8", 8080).reason is R.NOT_ALLOWLISTED
    assert ALLOW_ALL.decide("127.0.0.1", 8080).reason is R.PORT_NOT_ALLOWED


def test_a_name_decided_before_resolution_has_no_address() -> None:
    decision = EXAMPLE.decide("example.com", 443)
    assert (decision.allowed, decision.reason, decision.ip) == (True, R.ALLOWED, None)


# --- empty allowlists --------------------------------------------------------------------

EMPTY_POLICIES = {
    "none": compile_policy(BUILTIN_PROFILES["none"]),
    "empty-profile": compile_policy(Profile()),
    "empty-list": policy_for({"allow_host": []}),
    "cidr-only": policy_for({"allow_cidr": ["10.0.0.0/8", "0.0.0.0/0", "::/0"]}),
    "ports-only": policy_for({"allow_port": [80, 443, 8080]}),
    "mode-none": policy_for({"allow_host": ["example.com"], "insecure_allow_all": True},
                            mode="none"),
}


@pytest.mark.parametrize("name", sorted(EMPTY_POLICIES))
@pytest.mark.parametrize(("host", "ip"), [("example.com", None), ("example.com", "8.8.8.8"),
                                          ("8.8.8.8", None), ("10.0.0.1", None),
                                          ("2606:4700:4700::1111", None)])
def test_empty_allowlist_denies_everything(name: str, host: str, ip: str | None) -> None:
    policy = EMPTY_POLICIES[name]
    assert policy.denies_everything
    assert not policy.allow_all
    decision = policy.decide(host, 443, ip)
    assert (decision.allowed, decision.reason) == (False, R.NOT_ALLOWLISTED)


# --- the `network` built-in --------------------------------------------------------------


@pytest.mark.parametrize("host", ["example.com", "api.github.com", "xn--bcher-kva.example",
                                  "bücher.example", "a.b.c.d.example.org"])
def test_network_builtin_allows_public_names_on_default_ports(host: str) -> None:
    assert ALLOW_ALL.decide(host, 80).allowed
    assert ALLOW_ALL.decide(host, 443).allowed
    assert ALLOW_ALL.decide(host, 443, "93.184.216.34").allowed
    assert ALLOW_ALL.decide(host, 443, "2606:2800:220:1:248:1893:25c8:1946").allowed
    assert ALLOW_ALL.decide(host, 8080).reason is R.PORT_NOT_ALLOWED


@pytest.mark.parametrize(("ip", "reason"), [
    ("127.0.0.1", R.LOOPBACK_ADDRESS),
    ("10.0.0.1", R.PRIVATE_ADDRESS),
    ("192.168.1.1", R.PRIVATE_ADDRESS),
    ("169.254.169.254", R.LINK_LOCAL_ADDRESS),
    ("::1", R.LOOPBACK_ADDRESS),
    ("fd00::1", R.PRIVATE_ADDRESS),
])
def test_network_builtin_denies_private_resolved_addresses(ip: str, reason: Reason) -> None:
    # DNS rebinding / SSRF: a public-looking name that resolves somewhere local.
    decision = ALLOW_ALL.decide("rebind.example.com", 443, ip)
    assert (decision.allowed, decision.reason) == (False, reason)


# --- legacy IPv4 spellings ---------------------------------------------------------------

LEGACY: list[tuple[str, str, Reason]] = [
    ("2130706433", "127.0.0.1", R.LOOPBACK_ADDRESS),
    ("0x7f000001", "127.0.0.1", R.LOOPBACK_ADDRESS),
    ("0X7F000001", "127.0.0.1", R.LOOPBACK_ADDRESS),
    ("0177.0.0.1", "127.0.0.1", R.LOOPBACK_ADDRESS),
    ("0177.1", "127.0.0.1", R.LOOPBACK_ADDRESS),
    ("127.1", "127.0.0.1", R.LOOPBACK_ADDRESS),
    ("127.0.1", "127.0.0.1", R.LOOPBACK_ADDRESS),
    ("0x7f.0.0.1", "127.0.0.1", R.LOOPBACK_ADDRESS),
    ("127.0.0.1.", "127.0.0.1", R.LOOPBACK_ADDRESS),
    ("0", "0.0.0.0", R.LOOPBACK_ADDRESS),
    ("10.1", "10.0.0.1", R.PRIVATE_ADDRESS),
    ("0xa000001", "10.0.0.1", R.PRIVATE_ADDRESS),
    ("3232235777", "192.168.1.1", R.PRIVATE_ADDRESS),
    ("0xa9fea9fe", "169.254.169.254", R.LINK_LOCAL_ADDRESS),
    ("2852039166", "169.254.169.254", R.LINK_LOCAL_ADDRESS),
    ("0251.0376.0251.0376", "169.254.169.254", R.LINK_LOCAL_ADDRESS),
]


@pytest.mark.parametrize(("host", "ip", "reason"), LEGACY)
def test_legacy_ipv4_spellings_are_addresses(host: str, ip: str, reason: Reason) -> None:
    decision = ALLOW_ALL.decide(host, 80)
    assert (decision.allowed, decision.reason, decision.ip) == (False, reason, ip)
    assert decision.host == ip


@pytest.mark.parametrize(("host", "ip"), [("134744072", "8.8.8.8"), ("0x8080808", "8.8.8.8"),
                                          ("8.8.2056", "8.8.8.8"), ("010.010.010.010", "8.8.8.8"),
                                          ("8.8.8.8.", "8.8.8.8")])
def test_legacy_spellings_match_the_ip_literal_in_allow_host(host: str, ip: str) -> None:
    policy = policy_for({"allow_host": [ip]})
    decision = policy.decide(host, 443)
    assert decision.allowed and decision.ip == ip
    assert policy_for({"allow_host": [host]}).decide(ip, 443).allowed
    assert not policy_for({"allow_host": ["8.8.4.4"]}).decide(host, 443).allowed


# --- describe() and remedies -------------------------------------------------------------

REMEDY_CASES: list[tuple[Policy, str, int, str | None, Reason, str | None]] = [
    # policy, host, port, resolved, reason, flag and argument in the remedy (None: none)
    (EXAMPLE, "other.test", 443, None, R.NOT_ALLOWLISTED, "--allow-host other.test"),
    (EXAMPLE, "Other.TEST.", 443, None, R.NOT_ALLOWLISTED, "--allow-host other.test"),
    (EXAMPLE, "8.8.8.8", 443, None, R.NOT_ALLOWLISTED, "--allow-host 8.8.8.8"),
    (EXAMPLE, "example.com", 8080, None, R.PORT_NOT_ALLOWED, "--allow-port 8080"),
    (EXAMPLE, "example.com", 443, "10.0.0.1", R.PRIVATE_ADDRESS, "--allow-cidr 10.0.0.1/32"),
    (ALLOW_ALL, "192.168.1.5", 443, None, R.PRIVATE_ADDRESS, "--allow-cidr 192.168.1.5/32"),
    (ALLOW_ALL, "fd00::1", 443, None, R.PRIVATE_ADDRESS, "--allow-cidr fd00::1/128"),
    (ALLOW_ALL, "::ffff:10.0.0.1", 443, None, R.PRIVATE_ADDRESS,
     "--allow-cidr ::ffff:a00:1/128"),
    (ALLOW_ALL, "198.18.0.1", 443, None, R.SPECIAL_ADDRESS, "--allow-cidr 198.18.0.1/32"),
    (ALLOW_ALL, "2001:db8::1", 443, None, R.SPECIAL_ADDRESS, "--allow-cidr 2001:db8::1/128"),
    (ALLOW_ALL, "127.0.0.1", 443, None, R.LOOPBACK_ADDRESS, None),
    (ALLOW_ALL, "169.254.169.254", 80, None, R.LINK_LOCAL_ADDRESS, None),
    (ALLOW_ALL, "fe80::1", 80, None, R.LINK_LOCAL_ADDRESS, None),
    (ALLOW_ALL, "localhost", 80, None, R.DENIED_NAME, None),
    (ALLOW_ALL, "host.docker.internal", 80, None, R.DENIED_NAME, None),
    (ALLOW_ALL, "exa mple.com", 80, None, R.INVALID_HOST, None),
]


@pytest.mark.parametrize(("policy", "host", "port", "ip", "reason", "flag"), REMEDY_CASES)
def test_describe_and_remedy_name_reason_and_flag(
    policy: Policy, host: str, port: int, ip: str | None, reason: Reason, flag: str | None
) -> None:
    decision = policy.decide(host, port, ip)
    assert (decision.allowed, decision.reason) == (False, reason)
    text = decision.describe()
    assert text.startswith("denied ")
    assert reason.value in text
    assert str(decision.port) in text
    if flag is None:
        assert decision.remedy is None
        assert "to allow" not in text
        return
    assert decision.remedy is not None
    assert flag in decision.remedy
    assert f"to allow: {decision.remedy}" in text
    field = {"--allow-host": "allow_host", "--allow-port": "allow_port",
             "--allow-cidr": "allow_cidr"}[flag.split()[0]]
    assert f"network.outbound.{field}" in decision.remedy


@pytest.mark.parametrize(("policy", "host", "port", "ip", "reason", "flag"),
                         [c for c in REMEDY_CASES if c[5] is not None])
def test_following_the_remedy_allows_exactly_that_destination(
    policy: Policy, host: str, port: int, ip: str | None, reason: Reason, flag: str | None
) -> None:
    assert flag is not None
    decision = policy.decide(host, port, ip)
    assert decision.remedy is not None
    match = re.search(r"(--allow-(?:host|port|cidr)) (\S+)", decision.remedy)
    assert match is not None
    option, argument = match.groups()
    profile = (BUILTIN_PROFILES["network"] if policy is ALLOW_ALL
               else parse_profile({"network": {"outbound": {"allow_host": ["example.com"]}}},
                                  "p"))
    if option == "--allow-host":
        opened = with_overrides(profile, allow_host=[argument])
    elif option == "--allow-port":
        opened = with_overrides(profile, allow_port=[80, 443, int(argument)])
    else:
        # The suggested range is the one address, never a wider block.
        assert ipaddress.ip_network(argument).num_addresses == 1
        opened = with_overrides(profile, allow_cidr=[argument])
    assert compile_policy(opened).decide(host, port, ip).allowed


def test_describe_allowed() -> None:
    assert EXAMPLE.decide("example.com", 443).describe() == "allowed example.com:443"
    text = EXAMPLE.decide("example.com", 443, "93.184.216.34").describe()
    assert text == "allowed example.com:443 (93.184.216.34)"
    assert EXAMPLE.decide("example.com", 443).remedy is None


def test_describe_denied_address_names_the_address() -> None:
    text = EXAMPLE.decide("example.com", 443, "10.0.0.1").describe()
    assert text.startswith("denied example.com:443 (10.0.0.1): private_address 10.0.0.1")
    assert "--allow-cidr 10.0.0.1/32" in text


# --- compile_policy and immutability -----------------------------------------------------


def test_compile_policy_fields() -> None:
    profile = parse_profile({
        "network": {
            "outbound": {"allow_host": ["*.example.com", "8.8.8.8"], "allow_port": [8443],
                         "allow_cidr": ["10.0.0.0/8"]},
            "inbound": {"allow_host": ["mcp.example"]},
        }
    }, "p")
    policy = compile_policy(profile, [ipaddress.ip_address("192.0.2.10")])
    assert policy.allow_all is False
    assert policy.hosts == (HostPattern("example.com", subdomains=True),
                            HostPattern("8.8.8.8", is_ip=True))
    assert policy.name_patterns == (HostPattern("example.com", subdomains=True),)
    assert policy.ip_literals == (HostPattern("8.8.8.8", is_ip=True),)
    assert policy.ports == (8443,)
    assert policy.allowed_cidrs == (ipaddress.ip_network("10.0.0.0/8"),)
    assert ipaddress.ip_network("::ffff:10.0.0.0/104") in policy.lifting_cidrs
    assert policy.host_addresses == (ipaddress.ip_address("192.0.2.10"),)
    assert policy.inbound_hosts == (HostPattern("mcp.example"),)
    assert not policy.denies_everything


def test_inbound_hosts() -> None:
    default = compile_policy(Profile())
    assert default.inbound_allowed("localhost")
    assert default.inbound_allowed("127.0.0.1")
    assert default.inbound_allowed("[::1]")
    assert not default.inbound_allowed("mcp.example")
    gated = policy_for(inbound={"allow_host": ["mcp.example", "*.svc.test"]})
    assert gated.inbound_allowed("MCP.example.")
    assert gated.inbound_allowed("a.svc.test")
    assert not gated.inbound_allowed("localhost")
    assert not gated.inbound_allowed("evilsvc.test")
    assert not gated.inbound_allowed("mcp.example:8080")


def test_inbound_allowlist_defaults_to_the_loopback_names() -> None:
    assert Policy().inbound_allowlist == LOOPBACK_HOSTS
    assert [str(p) for p in LOOPBACK_HOSTS] == ["localhost", "127.0.0.1", "::1"]
    gated = policy_for(inbound={"allow_host": ["mcp.example"]})
    assert gated.inbound_allowlist == (HostPattern("mcp.example"),)


def test_policy_is_frozen() -> None:
    policy = EXAMPLE
    for field, value in [("allow_all", True), ("hosts", ()), ("ports", (1,)),
                         ("allowed_cidrs", ()), ("host_addresses", ()), ("denied", ())]:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(policy, field, value)
    assert EXAMPLE.decide("other.test", 443).reason is R.NOT_ALLOWLISTED
    assert isinstance(policy.hosts, tuple) and isinstance(policy.ports, tuple)
    decision = policy.decide("example.com", 443)
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.allowed = False  # type: ignore[misc]


def test_compiling_does_not_change_the_profile() -> None:
    profile = BUILTIN_PROFILES["network"]
    before = profile.model_dump()
    compile_policy(profile, [ipaddress.ip_address("10.0.0.1")])
    assert profile.model_dump() == before


def test_decision_fields() -> None:
    assert Decision(True, R.ALLOWED, "a.test", 443).ip is None
    assert R.ALLOWED.value == "allowed"


# --- generated names ---------------------------------------------------------------------

LABEL = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,15}[a-z0-9])?", fullmatch=True)
NAME = st.builds(lambda ls, tld: ".".join([*ls, tld]), st.lists(LABEL, min_size=1, max_size=3),
                 st.from_regex(r"[a-z]{2,6}", fullmatch=True))


@given(NAME, LABEL)
def test_generated_wildcards(name: str, label: str) -> None:
    policy = policy_for({"allow_host": ["*." + name]})
    assert policy.decide(name, 443).allowed
    assert policy.decide(f"{label}.{name}".upper() + ".", 443).allowed
    assert not policy.decide(label + name, 443).allowed
    assert not policy.decide(f"{name}.{label}x", 443).allowed
    assert policy.decide(f"{label}.{name}", 443, "10.0.0.1").reason is R.PRIVATE_ADDRESS


@given(NAME)
def test_generated_names_with_allow_all(name: str) -> None:
    decision = ALLOW_ALL.decide(name, 443)
    if name == "localhost" or name.endswith(".localhost"):
        assert decision.reason is R.DENIED_NAME
    else:
        assert decision.allowed
        assert ALLOW_ALL.decide(name, 443, "127.0.0.1").reason is R.LOOPBACK_ADDRESS
