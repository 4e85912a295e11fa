"""policy/decision.py: what a decision says (describe) and the remedy that would lift it."""

from __future__ import annotations

import ipaddress
import re

import pytest

from netfence.policy import Decision, Policy, Reason, compile_policy
from netfence.profile import BUILTIN_PROFILES, with_overrides
from netfence.profile.loader import parse_profile
from tests.support.policies import ALLOW_ALL, EXAMPLE

R = Reason

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


def test_decision_fields() -> None:
    assert Decision(True, R.ALLOWED, "a.test", 443).ip is None
    assert R.ALLOWED.value == "allowed"


def test_remedies_name_the_flag_and_the_range() -> None:
    pol = compile_policy(BUILTIN_PROFILES["network"])
    assert pol.decide("10.1.2.3", 80).remedy == (
        "add its range to network.outbound.allow_cidr or pass --allow-cidr 10.1.2.3/32")
    rule = next(r for r in pol.address_rules() if r.reason is R.PRIVATE_ADDRESS)
    assert rule.remedy is not None and f"in {rule.network})" in (rule.remedy or "")
