"""policy/denied.py: the addresses and names no profile can open, as Policy.decide applies them."""

from __future__ import annotations

import ipaddress

import pytest

from netfence.policy import Reason
from netfence.policy.denied import is_denied_name, is_denied_zone
from netfence.profile import canonical_host
from tests.support.policies import ALLOW_ALL, EXAMPLE, policy_for

R = Reason


# --- always-denied addresses -----------------------------------------------------------

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


# --- denied names ----------------------------------------------------------------------

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
