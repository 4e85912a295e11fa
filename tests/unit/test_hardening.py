"""Pure logic behind issue 4's hardening: the address rules every backend shares, multi-answer
decisions, IP-literal spellings, the host grammar, the decision-log reasons, learn mode."""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from netfence.backends.base import Endpoint, Placement
from netfence.backends.dnsmasq import answer_filter, dns_setup
from netfence.backends.envoy import EnvoyProxy
from netfence.backends.squid import SquidProxy
from netfence.policy import ADDRESS_CLASS_ORDER, Policy, Reason, compile_policy
from netfence.policy.learn import Used, learned_profile, summary
from netfence.profile import BUILTIN_PROFILES, canonical_host, parse_host_pattern, with_overrides
from netfence.profile.host_regex import (
    IPV6_RE,
    LEGACY_IPV4,
    VALID_HOST_RE,
    ipv4_spellings,
    ipv6_spellings,
    literal_spellings,
)
from netfence.profile.hosts import parse_ip

R = Reason
HOST = ipaddress.ip_address("10.203.0.1")


def allowlist(*hosts: str, cidrs: tuple[str, ...] = (), learn: bool = False) -> Policy:
    profile = with_overrides(BUILTIN_PROFILES["none"], allow_host=hosts, allow_cidr=cidrs)
    return compile_policy(profile, [HOST], learn=learn)


# --- the policy ----------------------------------------------------------------------------


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


def test_remedies_name_the_flag_and_the_range() -> None:
    pol = compile_policy(BUILTIN_PROFILES["network"])
    assert pol.decide("10.1.2.3", 80).remedy == (
        "add its range to network.outbound.allow_cidr or pass --allow-cidr 10.1.2.3/32")
    rule = next(r for r in pol.address_rules() if r.reason is R.PRIVATE_ADDRESS)
    assert rule.remedy is not None and f"in {rule.network})" in (rule.remedy or "")


# --- the host grammar backends enforce -----------------------------------------------------

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


# --- IP-literal spellings (Envoy) ----------------------------------------------------------


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


# --- configs -------------------------------------------------------------------------------


def _placement(tmp: Path) -> Placement:
    return Placement(state_dir=tmp, egress_listen=Endpoint("127.0.0.1", 3128),
                     workload_proxy="127.0.0.1:3128", dns_listen=Endpoint("127.0.0.1", 5300),
                     upstream_resolver=Endpoint("10.9.8.7", 53))


def test_dnsmasq_refuses_answers_with_any_denied_address(tmp_path: Path) -> None:
    pol = allowlist("a.test", cidrs=("10.203.0.0/24",))
    lines = answer_filter(pol)
    nets = [ipaddress.ip_network(line.split("=", 1)[1]) for line in lines]
    assert ipaddress.ip_network("127.0.0.0/8") in nets
    assert ipaddress.ip_network("10.203.0.1/32") in nets  # the host, though in allow_cidr
    assert not any(ipaddress.ip_address("10.203.0.2") in n for n in nets if n.version == 4)
    conf = dns_setup(pol, _placement(tmp_path)).files[0].content
    assert all(line in conf.splitlines() for line in lines)


def test_envoy_dial_view_resolves_through_the_fence_dns(tmp_path: Path) -> None:
    cfg = json.loads(EnvoyProxy("/x/envoy").setup(allowlist("a.test"), _placement(tmp_path))
                     .files[0].content)
    (cluster,) = cfg["static_resources"]["clusters"]
    resolver = cluster["cluster_type"]["typed_config"]["dns_cache_config"][
        "typed_dns_resolver_config"]["typed_config"]["resolvers"]
    assert resolver == [{"socket_address": {"address": "127.0.0.1", "port_value": 5300}}]
    assert cfg["layered_runtime"]["layers"][0]["static_layer"][
        "re2.max_program_size.error_level"] >= 10_000


ENVOY_LINES = {
    # RBAC denial by a named range: reason, range and remedy
    '{"log":"netfence-egress","method":"GET","authority":"p.test","status":403,'
    '"details":"rbac_access_denied_matched_policy[private_address@10.0.0.0/8]",'
    '"route":"allowed","rbac_policy":"private_address@10.0.0.0/8"}':
        ("private_address", "10.0.0.0/8", "--allow-cidr"),
    # the dial view refused the answer after RBAC passed the first address
    '{"log":"netfence-egress","method":"GET","authority":"m.test","status":403,'
    '"details":"dns_resolution_failure{cares_norecords:Domain_name_not_found}",'
    '"route":"allowed","checked":"yes"}':
        ("denied_address_in_answer", None, "netfence check m.test:80"),
    # a name that does not resolve: allowed (the fence let it through)
    '{"log":"netfence-egress","method":"GET","authority":"n.test","status":503,'
    '"details":"dns_resolution_failure{cares_norecords:Domain_name_not_found}",'
    '"route":"allowed","checked":null}': ("allowed", None, None),
    # refused by the codec before any route: not allowed
    '{"log":"netfence-egress","method":null,"authority":null,"status":400,'
    '"details":"http1.codec_error","route":null}': ("invalid_host", None, None),
    '{"log":"netfence-egress","method":"GET","authority":"a.test","status":403,'
    '"details":"direct_response","route":"unsupported_request"}':
        ("unsupported_request", None, "CONNECT"),
}


@pytest.mark.parametrize("line", list(ENVOY_LINES))
def test_envoy_decision_reasons(line: str) -> None:
    record = EnvoyProxy("/x/envoy").parse_decision(line)
    assert record is not None
    reason, address, remedy = ENVOY_LINES[line]
    assert (record.reason, record.address) == (reason, address)
    assert record.allowed is (reason == "allowed")
    if remedy:
        assert remedy in (record.remedy or "")


def test_squid_decision_address_and_lines_without_request() -> None:
    squid = SquidProxy()
    record = squid.parse_decision(
        "nf1 2026-01-02T03:04:05Z GET p.test 80 403 ERR_PRIVATE_ADDRESS__10.0.0.0_8 - 1 2 0")
    assert record is not None
    assert (record.reason, record.address) == ("private_address", "10.0.0.0/8")
    assert "--allow-cidr ADDRESS/32 (the address is in 10.0.0.0/8)" in (record.remedy or "")
    assert squid.parse_decision(
        "nf1 2026-01-02T03:04:05Z - - - 0 ERR_CLIENT_GONE - 0 0 0") is None


def test_squid_refuses_other_schemes_and_invalid_hosts_first(tmp_path: Path) -> None:
    setup = SquidProxy().setup(compile_policy(BUILTIN_PROFILES["network"]),
                               Placement(tmp_path, Endpoint("127.0.0.1", 3128), "x:3128",
                                         Endpoint("127.0.0.1", 53), Endpoint("10.9.8.7", 53)))
    conf = next(f.content for f in setup.files if f.path.name == "squid-egress.conf")
    rules = [ln for ln in conf.splitlines() if ln.startswith("http_access ")]
    assert rules[1:4] == ["http_access deny !nf_connect !nf_http",
                          "http_access deny !nf_valid_host", "http_access deny nf_long_host"]
    assert "relaxed_header_parser off" in conf and "uri_whitespace deny" in conf


# --- learn mode ----------------------------------------------------------------------------


def test_learned_profile_allows_exactly_what_was_used() -> None:
    base = with_overrides(BUILTIN_PROFILES["none"], allow_cidr=("10.203.0.0/24",))
    used = [Used("allowed.test", 80, True), Used("Allowed.Test.", 80, True),
            Used("other.test", 8080, True), Used("10.203.0.4", 80, True),
            Used("[::ffff:10.203.0.5]", 443, True),
            Used("loopback.test", 80, False, "loopback_address"),
            Used("", None, False, "invalid_host")]
    text = learned_profile(base, used, now="T")
    data = yaml.safe_load(text)
    assert data["network"]["outbound"] == {
        "allow_host": ["10.203.0.4", "::ffff:acb:5", "allowed.test", "other.test"],
        "allow_port": [80, 443, 8080],
        "allow_cidr": ["10.203.0.0/24"],
    }
    assert "#   allowed.test:80  2" in text
    assert "#   loopback.test:80  loopback_address  1" in text
    assert summary(used) == (5, 2)
    # It is a profile netfence reads, allowing exactly these destinations.
    from netfence.profile.loader import parse_profile
    pol = compile_policy(parse_profile(data, "learned"))
    assert pol.decide("other.test", 8080).allowed and not pol.decide("else.test", 80).allowed
    assert pol.decide("10.203.0.5", 443, None).allowed


def test_nothing_used_learns_an_empty_allowlist() -> None:
    data = yaml.safe_load(learned_profile(BUILTIN_PROFILES["none"], [], now="T"))
    assert data == {"name": "learned", "network": {"outbound": {"allow_host": []}}}
