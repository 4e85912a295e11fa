"""policy/policy.py: compile_policy and Policy.decide, the reference decision every backend
must agree with."""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netfence.policy import ADDRESS_CLASS_ORDER, LOOPBACK_HOSTS, Policy, Reason, compile_policy
from netfence.profile import BUILTIN_PROFILES, HostPattern, Profile
from netfence.profile.loader import parse_profile
from tests.support.policies import ALLOW_ALL, EXAMPLE, allowlist, policy_for

R = Reason


# --- the host's own addresses ----------------------------------------------------------

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


# --- allow_cidr ------------------------------------------------------------------------

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


# --- names: wildcards, case, trailing dot, IDN -----------------------------------------

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


# --- ports -----------------------------------------------------------------------------

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


# --- check order: name, then port, then address ----------------------------------------


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


# --- empty allowlists ------------------------------------------------------------------

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


# --- the `network` built-in ------------------------------------------------------------


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


# --- legacy IPv4 spellings -------------------------------------------------------------

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


# --- compile_policy and immutability ---------------------------------------------------


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
    before = dataclasses.asdict(profile)
    compile_policy(profile, [ipaddress.ip_address("10.0.0.1")])
    assert dataclasses.asdict(profile) == before


# --- generated names -------------------------------------------------------------------

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


# --- multi-answer decisions, IP-literal forms, learn mode, address rules ---------------


def test_decide_answers_denies_if_any_answer_is_denied() -> None:
    pol = allowlist("a.test", cidrs=("10.203.0.0/24",))
    assert pol.decide_answers("a.test", 80, ["10.203.0.2"]).allowed
    mixed = pol.decide_answers("a.test", 80, ["10.203.0.2", "127.0.0.1"])
    assert (mixed.allowed, mixed.reason, mixed.ip) == (False, R.LOOPBACK_ADDRESS, "127.0.0.1")
    # Of several denied answers, the first class in ADDRESS_CLASS_ORDER names the reason.
    worst = pol.decide_answers("a.test", 80, ["10.9.9.9", "169.254.169.254", "10.203.0.1"])
    assert worst.reason is R.HOST_ADDRESS
    assert pol.decide_answers("b.test", 80, ["10.203.0.2"]).reason is R.NOT_ALLOWLISTED
    assert pol.decide_answers("a.test", 80, []).allowed  # does not resolve: nothing to check


def test_ipv4_mapped_literals_are_the_ipv4_address() -> None:
    assert allowlist("10.203.0.3").decide("[::ffff:10.203.0.3]", 80).allowed is False  # private
    pol = allowlist("10.203.0.3", cidrs=("10.203.0.0/24",))
    for host in ("10.203.0.3", "[::ffff:10.203.0.3]", "::ffff:acb:3", "0xacb0003", "10.203.3"):
        assert pol.decide(host, 80).allowed, host
    pol = allowlist("::ffff:10.203.0.3", cidrs=("10.203.0.0/24",))
    assert pol.decide("10.203.0.3", 80).allowed
    assert not pol.decide("10.203.0.4", 80).allowed


def test_ipv4_compatible_addresses_are_denied() -> None:
    pol = compile_policy(BUILTIN_PROFILES["network"])
    assert pol.decide("[::10.203.0.3]", 80).reason is R.SPECIAL_ADDRESS
    # ::1 and :: keep their own, more severe, reason.
    assert pol.decide("[::1]", 80).reason is R.LOOPBACK_ADDRESS
    assert pol.decide("[::]", 80).reason is R.LOOPBACK_ADDRESS


def test_learn_opens_names_and_ports_but_not_addresses() -> None:
    pol = allowlist(learn=True)
    assert pol.allow_all and pol.any_port
    assert pol.decide("anything.example", 8443).allowed
    assert pol.decide("localhost", 80).reason is R.DENIED_NAME
    assert pol.decide("x.example", 80, "127.0.0.1").reason is R.LOOPBACK_ADDRESS
    assert pol.decide("x.example", 80, "10.203.0.1").reason is R.HOST_ADDRESS
    assert pol.decide("x.example", 0).reason is R.PORT_NOT_ALLOWED


def test_address_rules_order_lifts_and_agree_with_address_reason() -> None:
    pol = allowlist("a.test", cidrs=("10.1.0.0/16", "fd00::/16"))
    rules = pol.address_rules()
    ranks = [ADDRESS_CLASS_ORDER.index(r.reason) for r in rules]
    assert ranks == sorted(ranks) and rules[0].reason is R.HOST_ADDRESS
    assert all(not net.overlaps(ipaddress.ip_network("10.1.0.0/16")) for r in rules
               for net in r.networks if net.version == 4 and r.reason is R.PRIVATE_ADDRESS)


@settings(max_examples=300, deadline=None)
@given(st.ip_addresses())
def test_first_matching_rule_is_the_address_reason(ip: ipaddress.IPv4Address |
                                                   ipaddress.IPv6Address) -> None:
    pol = allowlist("a.test", cidrs=("10.1.0.0/16", "fd00::/16", "192.0.2.0/25"))
    first = next((r.reason for r in pol.address_rules()
                  if any(ip in n for n in r.networks if n.version == ip.version)), None)
    assert first == pol.address_reason(ip)
