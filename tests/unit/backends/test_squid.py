"""backends/squid.py: the generated Squid configs (rule order, files, environment) and its
decision-log parser."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import pwd
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from netfence.backends.base import Endpoint, Placement, ProxySetup, Reload, write_setup
from netfence.backends.dnsmasq import dns_setup
from netfence.backends.squid import (
    CONFIG_MARK,
    LOG_FORMAT_TAG,
    SquidProxy,
    address_acls,
    domain_values,
    ip_host,
    page_name,
    reason_for_page,
    rule_network,
    rule_page_name,
    service_name,
)
from netfence.errors import UsageError
from netfence.policy import AddressRule, Policy, Reason, compile_policy
from netfence.profile import BUILTIN_PROFILES, HostPattern, parse_host_pattern


def hosts(*raw: str) -> tuple[HostPattern, ...]:
    return tuple(parse_host_pattern(r) for r in raw)


def make_placement(state: Path, *, ingress: bool = False, resolver_port: int = 53) -> Placement:
    return Placement(
        state_dir=state,
        egress_listen=Endpoint("127.0.0.1", 3128),
        workload_proxy="127.0.0.1:3128",
        dns_listen=Endpoint("127.0.0.1", 53),
        upstream_resolver=Endpoint("10.0.0.53", resolver_port),
        ingress_listen=Endpoint("127.0.0.1", 8080) if ingress else None,
        ingress_upstream=Endpoint("127.0.0.1", 9000) if ingress else None,
        workload_name="demo",
    )


def policy(*raw: str, **kw: object) -> Policy:
    return Policy(hosts=tuple(parse_host_pattern(r) for r in raw), **kw)  # type: ignore[arg-type]


def conf(setup: ProxySetup, role: str = "egress") -> str:
    return next(f.content for f in setup.files if f.path.name == f"squid-{role}.conf")


def access_rules(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("http_access ")]


def acl_kinds(text: str) -> dict[str, str]:
    kinds: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("acl "):
            _, name, kind, *_ = line.split()
            kinds[name] = kind
    return kinds


@pytest.fixture
def squid() -> SquidProxy:
    return SquidProxy()


def test_identity(squid: SquidProxy) -> None:
    assert squid.name == "squid"
    assert squid.listens_in_netns is False


def test_empty_allowlist_denies_everything(squid: SquidProxy, tmp_path: Path) -> None:
    text = conf(squid.setup(Policy(), make_placement(tmp_path)))
    rules = access_rules(text)
    assert not [r for r in rules if r.startswith("http_access allow")]
    assert "acl nf_not_allowlisted src all" in text
    assert "http_access deny nf_not_allowlisted" in rules
    assert " dst " not in text  # nothing is ever resolved
    assert rules[-1] == "http_access deny all"


def test_name_checks_come_before_any_address_check(squid: SquidProxy, tmp_path: Path) -> None:
    pol = policy("example.com", "*.example.org", "192.0.2.7",
                 host_addresses=(ipaddress.ip_address("198.51.100.9"),))
    text = conf(squid.setup(pol, make_placement(tmp_path)))
    kinds = acl_kinds(text)
    rules = access_rules(text)

    def uses(rule: str, kind: str) -> bool:
        return any(kinds.get(word.lstrip("!")) == kind for word in rule.split()[2:])

    def deny_rules(kind: str) -> list[int]:
        return [i for i, r in enumerate(rules) if r.startswith("http_access deny ")
                and uses(r, kind)]

    name_rules = deny_rules("dstdomain") + deny_rules("dstdom_regex")
    port_rules, dst_rules = (deny_rules(k) for k in ("port", "dst"))
    assert name_rules and port_rules and dst_rules
    assert max(name_rules) < min(port_rules) <= max(port_rules) < min(dst_rules)
    # The first rule that resolves a name is the host's own addresses.
    assert rules[min(dst_rules)] == "http_access deny nf_host_address_0"
    # Before any name: the request form (plain http:// or CONNECT), then the host's syntax.
    assert rules[:3] == ["http_access deny manager", "http_access deny !nf_connect !nf_http",
                         "http_access deny !nf_valid_host"]
    allows = [i for i, r in enumerate(rules) if r.startswith("http_access allow")]
    denies = [i for i, r in enumerate(rules[:-1]) if r.startswith("http_access deny")]
    assert allows and max(denies) < min(allows)
    assert rules[-1] == "http_access deny all"
    assert "acl nf_denied_name dstdomain -n .localhost host.docker.internal" in text
    assert "http_access deny !nf_not_allowlisted" in rules


def test_every_deny_names_its_reason(squid: SquidProxy, tmp_path: Path) -> None:
    text = conf(squid.setup(policy("example.com"), make_placement(tmp_path)))
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("http_access deny") and line != "http_access deny all":
            acl = line.split()[-1].lstrip("!")
            assert any(ln.startswith("deny_info ERR_") and ln.endswith(f" {acl}")
                       for ln in lines[i:i + 2]), line
    for reason in (Reason.DENIED_NAME, Reason.NOT_ALLOWLISTED, Reason.PORT_NOT_ALLOWED,
                   Reason.INVALID_HOST, Reason.UNSUPPORTED_REQUEST):
        assert f"deny_info {page_name(reason)} " in text
    # Address rules: one page per denied range, named after it.
    assert "deny_info ERR_LOOPBACK_ADDRESS__127.0.0.0_8 nf_loopback_address_" in text
    assert "deny_info ERR_PRIVATE_ADDRESS__fc00--_7 nf_private_address_" in text


def test_allow_all_keeps_every_rule_but_the_allowlist(squid: SquidProxy, tmp_path: Path) -> None:
    text = conf(squid.setup(Policy(allow_all=True), make_placement(tmp_path)))
    rules = access_rules(text)
    assert "nf_not_allowlisted" not in text
    assert "http_access deny nf_denied_name" in rules
    assert "http_access deny !nf_port_not_allowed" in rules
    assert any(r.startswith("http_access deny nf_loopback_address_") for r in rules)
    assert any(r.startswith("http_access deny nf_private_address_") for r in rules)
    assert rules[-2:] == ["http_access allow nf_port_not_allowed", "http_access deny all"]


def test_port_rule_covers_plain_and_connect(squid: SquidProxy, tmp_path: Path) -> None:
    text = conf(squid.setup(policy("example.com", ports=(80, 443, 8443)),
                            make_placement(tmp_path)))
    assert "acl nf_port_not_allowed port 80 443 8443" in text
    # One rule for every method: a CONNECT's port is its URL port.
    assert access_rules(text).count("http_access deny !nf_port_not_allowed") == 1


def test_no_allowed_port_refuses_everything(squid: SquidProxy, tmp_path: Path) -> None:
    text = conf(squid.setup(policy("example.com", ports=()), make_placement(tmp_path)))
    assert "acl nf_port_not_allowed port 0" in text


def test_ip_literal_spelling() -> None:
    assert ip_host("192.0.2.1") == "192.0.2.1"
    assert ip_host("2001:db8::1") == "[2001:db8::1]"
    assert ip_host("::ffff:192.0.2.1") == "192.0.2.1"
    values = domain_values(hosts("[2001:db8:0:0::1]", "192.0.2.1", "example.com"))
    assert values == ["example.com", "192.0.2.1", "[2001:db8::1]"]


def test_covered_names_are_left_out() -> None:
    values = domain_values(hosts(
        "example.com", "*.example.com", "a.example.com", "*.b.example.com", "other.org",
        "*.deep.other.org",
    ))
    assert values == ["other.org", ".deep.other.org", ".example.com"]


def _squid_reason(groups: list[tuple[AddressRule, list[str]]], ip: str) -> Reason | None:
    """What the generated dst rules decide, evaluated the way Squid stores addresses."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    for rule, values in groups:
        if any(addr in ipaddress.ip_network(v) for v in values):
            return rule.reason
    return None


@pytest.mark.parametrize("ip", [
    "10.1.2.3", "10.2.0.1", "10.255.255.255", "127.0.0.1", "169.254.169.254", "192.168.1.1",
    "8.8.8.8", "198.51.100.9", "::ffff:10.1.0.1", "::ffff:10.9.0.1", "::ffff:127.0.0.1",
    "64:ff9b::10.1.0.1", "64:ff9b::10.9.0.1", "64:ff9b::8.8.8.8", "::1", "fd00::1",
    "fe80::1", "2001:db8::1", "2606:4700::1", "100.64.0.1", "0.0.0.0", "224.0.0.1",
])
def test_address_rules_agree_with_policy(ip: str) -> None:
    pol = Policy(
        hosts=(parse_host_pattern("example.com"),),
        allowed_cidrs=(ipaddress.ip_network("10.1.0.0/16"),),
        host_addresses=(ipaddress.ip_address("198.51.100.9"),),
    )
    assert _squid_reason(address_acls(pol), ip) == pol.address_reason(ipaddress.ip_address(ip))


def test_lifted_ranges_are_cut_out_not_negated(tmp_path: Path) -> None:
    pol = Policy(hosts=(parse_host_pattern("example.com"),),
                 allowed_cidrs=(ipaddress.ip_network("10.1.0.0/16"),))
    text = conf(SquidProxy().setup(pol, make_placement(tmp_path)))
    # `dst` matches when any resolved address matches: a `!lifted` term could be satisfied
    # by one lifted address while Squid dials another, denied one.
    assert any(r.startswith("http_access deny nf_private_address_") for r in access_rules(text))
    assert not [r for r in access_rules(text) if r.count(" ") > 2 and " dst" in r]
    ten = [ln for ln in text.splitlines() if ln.startswith("acl nf_private_address_")
           and " 10." in ln]
    assert ten and not any("10.1." in ln for ln in ten)  # 10.1.0.0/16 is cut out


def test_files_and_modes(squid: SquidProxy, tmp_path: Path) -> None:
    state = tmp_path / "state"
    setup = squid.setup(policy("example.com"), make_placement(state, ingress=True))
    write_setup(setup, state)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for spec in setup.files:
        assert spec.path.is_relative_to(state)
        assert stat.S_IMODE(spec.path.stat().st_mode) == 0o600, spec.path
        assert stat.S_IMODE(spec.path.parent.stat().st_mode) == 0o700
    owned = {f.path for f in setup.files if f.owner == "proxy"}
    for process in setup.processes:
        assert process.stdout in owned and process.stderr in owned
    if os.geteuid() == 0:
        uid = pwd.getpwnam("proxy").pw_uid
        assert all(p.stat().st_uid == uid for p in owned)
    names = {f.path.name for f in setup.files}
    assert {"squid-egress.conf", "squid-ingress.conf"} <= names


def test_unprivileged_owns_nothing_and_chowns_nothing(squid: SquidProxy,
                                                      tmp_path: Path) -> None:
    state = tmp_path / "state"
    privileged = squid.setup(policy("example.com"), make_placement(state, ingress=True))
    setup = squid.setup(policy("example.com"), dataclasses.replace(
        make_placement(state, ingress=True), unprivileged=True))
    assert [f.owner for f in setup.files] == [None] * len(privileged.files)
    # The same files and configs otherwise (non-root Squid ignores cache_effective_user).
    assert [(f.path, f.content, f.mode) for f in setup.files] == [
        (f.path, f.content, f.mode) for f in privileged.files]
    write_setup(setup, state)
    assert all(f.path.stat().st_uid == os.geteuid() for f in setup.files)
    for process, before in zip(setup.processes, privileged.processes, strict=True):
        assert "chown" not in " ".join(process.argv) and process.capabilities == ()
        assert process.argv[4:] == before.argv[4:]  # the wrapper's arguments, Squid's argv
        # The wrapper enters the page directory and runs the rest: here, pwd.
        pages = Path(process.argv[5])
        pages.mkdir(exist_ok=True)
        wrapper = (*process.argv[:6], "pwd")
        done = subprocess.run(wrapper, capture_output=True, text=True, timeout=10, check=True)
        assert done.stdout.strip() == str(pages)


def test_error_pages_name_reason_and_remedy(squid: SquidProxy, tmp_path: Path) -> None:
    setup = squid.setup(policy("example.com"), make_placement(tmp_path, ingress=True))
    pages = {(f.path.parent.name, f.path.name): f.content for f in setup.files}
    egress = pages[("squid-egress-errors", "ERR_NOT_ALLOWLISTED")]
    assert egress == ("netfence: denied %H:%p: not_allowlisted; to allow: add it to "
                      "network.outbound.allow_host or pass --allow-host %H\n")
    assert pages[("squid-egress-errors", "ERR_LOOPBACK_ADDRESS")] == (
        "netfence: denied %H:%p: loopback_address\n")
    assert pages[("squid-egress-errors", "ERR_LOOPBACK_ADDRESS__127.0.0.0_8")] == (
        "netfence: denied %H:%p: loopback_address 127.0.0.0/8\n")
    private = pages[("squid-egress-errors", "ERR_PRIVATE_ADDRESS__10.0.0.0_8")]
    assert private.startswith("netfence: denied %H:%p: private_address 10.0.0.0/8; to allow: ")
    assert "--allow-cidr ADDRESS/32 (the address is in 10.0.0.0/8)" in private
    assert "network.inbound.allow_host" in pages[("squid-ingress-errors", "ERR_NOT_ALLOWLISTED")]
    for reason in Reason:
        if reason is not Reason.ALLOWED:
            body = pages[("squid-egress-errors", page_name(reason))]
            assert body.count("\n") == 1 and reason.value in body


def test_processes(squid: SquidProxy, tmp_path: Path) -> None:
    placement = make_placement(tmp_path, ingress=True)
    setup = squid.setup(policy("example.com"), placement)
    egress, ingress = setup.processes
    assert egress.ready == (placement.egress_listen,)
    assert ingress.ready == (placement.ingress_listen,)
    for process, role in ((egress, "egress"), (ingress, "ingress")):
        argv = process.argv
        squid_at = argv.index("squid")
        assert argv[squid_at:] == (
            "squid", "-N", "-f", str(tmp_path / f"squid-{role}.conf"),
            "-n", service_name(placement, role),
        )
        assert argv[0] == "/bin/sh"
    assert service_name(placement, "egress") != service_name(placement, "ingress")
    other = make_placement(tmp_path / "other")
    assert service_name(other, "egress") != service_name(placement, "egress")
    assert all(len(service_name(placement, r)) <= 32 and service_name(placement, r).isalnum()
               for r in ("egress", "ingress"))
    assert setup.decision_logs == (egress.stdout,)
    assert squid.validate_command(setup) == [
        ("squid", "-k", "parse", "-f", str(tmp_path / "squid-egress.conf")),
        ("squid", "-k", "parse", "-f", str(tmp_path / "squid-ingress.conf")),
    ]


def test_no_ingress_without_ingress_listen(squid: SquidProxy, tmp_path: Path) -> None:
    setup = squid.setup(policy("example.com"), make_placement(tmp_path))
    assert [p.name for p in setup.processes] == ["squid-egress"]


def test_env_sets_both_cases(squid: SquidProxy, tmp_path: Path) -> None:
    env = squid.setup(Policy(), make_placement(tmp_path)).env
    for key in ("http_proxy", "https_proxy"):
        assert env[key] == env[key.upper()] == "http://127.0.0.1:3128"
    assert env["no_proxy"] == env["NO_PROXY"]


def test_common_settings(squid: SquidProxy, tmp_path: Path) -> None:
    text = conf(squid.setup(policy("example.com"), make_placement(tmp_path)))
    lines = text.splitlines()
    for expected in ("http_port 127.0.0.1:3128", "dns_nameservers 10.0.0.53", "hosts_file none",
                     "cache deny all", "via off", "forwarded_for delete",
                     "httpd_suppress_version_string on", "pid_filename none",
                     "access_log stdio:/dev/stdout netfence", "cache_log /dev/stderr",
                     "error_directory /proc/self/cwd", "read_timeout 24 hours"):
        assert expected in lines
    assert any(ln.startswith("shutdown_lifetime 1 ") for ln in lines)
    assert any(ln.startswith("logformat netfence ") and "%err_code" in ln for ln in lines)
    assert "netns" not in text


def test_resolver_port_must_be_53(squid: SquidProxy, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="port 53"):
        squid.setup(Policy(), make_placement(tmp_path, resolver_port=5353))


def test_netns_listener_is_refused(squid: SquidProxy, tmp_path: Path) -> None:
    placement = make_placement(tmp_path)
    netns = dataclasses.replace(
        placement, egress_listen=Endpoint("127.0.0.1", 3128, Path("/run/netns/x")))
    with pytest.raises(ValueError, match="namespace"):
        squid.setup(Policy(), netns)


def test_ingress_host_gating(squid: SquidProxy, tmp_path: Path) -> None:
    text = conf(squid.setup(Policy(), make_placement(tmp_path, ingress=True)), "ingress")
    assert "http_port 127.0.0.1:8080 accel vhost" in text
    assert ("cache_peer 127.0.0.1 parent 9000 0 no-query no-digest originserver "
            "name=nf_workload") in text
    assert "never_direct allow all" in text
    assert "acl nf_not_allowlisted dstdomain -n localhost 127.0.0.1 [::1]" in text
    rules = access_rules(text)
    assert rules.index("http_access deny !nf_not_allowlisted") < rules.index(
        "http_access allow nf_not_allowlisted")
    assert rules[-1] == "http_access deny all"

    pol = Policy(inbound_hosts=tuple(parse_host_pattern(h) for h in ("mcp.example.com",
                                                                      "*.internal.test")))
    text = conf(squid.setup(pol, make_placement(tmp_path, ingress=True)), "ingress")
    assert "acl nf_not_allowlisted dstdomain -n mcp.example.com .internal.test" in text
    assert "localhost" not in text.split("acl nf_not_allowlisted", 1)[1].splitlines()[0]


def test_large_allowlist_lines_stay_short(squid: SquidProxy, tmp_path: Path) -> None:
    names = [f"host{i}.example{i % 7}.com" for i in range(1000)]
    text = conf(squid.setup(policy(*names), make_placement(tmp_path)))
    acl_lines = [ln for ln in text.splitlines() if ln.startswith("acl nf_not_allowlisted")]
    assert len(acl_lines) > 1 and max(len(ln) for ln in acl_lines) < 600
    assert sum(len(ln.split()) - 4 for ln in acl_lines) == 1000


SAMPLES = {
    f"{LOG_FORMAT_TAG} 2026-01-02T03:04:05Z GET example.com 80 200 - 93.184.216.34 120 530 14":
        ("GET", "example.com", 80, True, "allowed", 200, "93.184.216.34", 120, 530, 14),
    f"{LOG_FORMAT_TAG} 2026-01-02T03:04:05Z GET evil.test 80 403 ERR_NOT_ALLOWLISTED - 131 414 0":
        ("GET", "evil.test", 80, False, "not_allowlisted", 403, None, 131, 414, 0),
    f"{LOG_FORMAT_TAG} 2026-01-02T03:04:05Z CONNECT ok.test 22 403 ERR_PORT_NOT_ALLOWED - 1 2 0":
        ("CONNECT", "ok.test", 22, False, "port_not_allowed", 403, None, 1, 2, 0),
    f"{LOG_FORMAT_TAG} 2026-01-02T03:04:05Z GET %5B::1%5D 80 403 ERR_LOOPBACK_ADDRESS - 1 2 0":
        ("GET", "::1", 80, False, "loopback_address", 403, None, 1, 2, 0),
    f"{LOG_FORMAT_TAG} 2026-01-02T03:04:05Z GET up.test 80 503 ERR_CONNECT_FAIL 192.0.2.1 1 2 3":
        ("GET", "up.test", 80, True, "allowed", 503, "192.0.2.1", 1, 2, 3),
    f"{LOG_FORMAT_TAG} 2026-01-02T03:04:05Z NONE - - 400 ERR_INVALID_URL - 10 20 0":
        ("NONE", "", None, False, "invalid_host", 400, None, 10, 20, 0),
}


@pytest.mark.parametrize("line", list(SAMPLES))
def test_parse_decision(squid: SquidProxy, line: str) -> None:
    record = squid.parse_decision(line)
    assert record is not None
    assert record.time == "2026-01-02T03:04:05Z"
    got = (record.method, record.host, record.port, record.allowed, record.reason,
           record.status, record.upstream_ip, record.bytes_up, record.bytes_down,
           record.duration_ms)
    assert got == SAMPLES[line]


@pytest.mark.parametrize("line", [
    "", "2026/01/02 03:04:05| Starting Squid Cache version 5.7",
    f"{LOG_FORMAT_TAG} too few fields",
    f"{LOG_FORMAT_TAG} 2026-01-02T03:04:05Z GET h 80 abc - - 1 2 3",
])
def test_parse_decision_ignores_other_lines(squid: SquidProxy, line: str) -> None:
    assert squid.parse_decision(line) is None


def test_every_reason_round_trips_through_its_page() -> None:
    for reason in Reason:
        if reason is not Reason.ALLOWED:
            assert reason_for_page(page_name(reason)) is reason
    for rule in Policy(host_addresses=(ipaddress.ip_address("fd00::2"),)).address_rules():
        page = rule_page_name(rule)
        assert reason_for_page(page) is rule.reason
        assert rule_network(page) == str(rule.network)
    assert rule_network("ERR_NOT_ALLOWLISTED") is None
    assert reason_for_page("-") is Reason.ALLOWED
    assert reason_for_page("ERR_ACCESS_DENIED") is Reason.NOT_ALLOWLISTED


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


def test_names_come_in_the_order_squid_keeps_them() -> None:
    # From the last character, '.' before any other (a plain reversed sort puts '-'
    # first): so that each insertion into Squid's tree lands next to the previous one.
    values = domain_values(hosts("x-b.com", "a.b.com", "*.a.org", "z.com", "192.0.2.1"))
    assert values == [".a.org", "a.b.com", "x-b.com", "z.com", "192.0.2.1"]


def test_names_covered_from_any_depth_are_left_out() -> None:
    values = domain_values(hosts(
        "*.a.example", "x.y.a.example", "*.z.a.example", "a.example", "*.b.c.example",
        "d.b.c.example", "b.c.example", "*.c.example.net", "c.example.net", "e.example.net"))
    assert values == [".a.example", ".b.c.example", ".c.example.net", "e.example.net"]


# --- a new policy while Squid runs (netfence update) -------------------------------------

def test_a_new_policy_is_a_sighup(squid: SquidProxy, tmp_path: Path) -> None:
    """Each Squid reads its config, its marker and its pages, and takes a change of any of
    them by reconfiguring (SIGHUP), never by a restart."""
    setup = squid.setup(policy("a.test"), make_placement(tmp_path, ingress=True))
    files = {f.path for f in setup.files}
    for process in setup.processes:
        assert process.reload == Reload(signal=signal.SIGHUP)
        role = process.role
        assert process.reads[0] == tmp_path / f"squid-{role}.conf"
        pages = {f.path for f in setup.files if f.path.parent.name == f"squid-{role}-errors"}
        assert set(process.reads[1:]) == pages  # the pages and the marker among them
        assert set(process.reads) <= files
    assert not set(setup.processes[0].reads) & set(setup.processes[1].reads)


def marks(setup: ProxySetup) -> list[str]:
    return sorted(f.path.name for f in setup.files if f.path.name.startswith(CONFIG_MARK))


def test_the_marker_follows_the_policy_not_the_placement(squid: SquidProxy,
                                                         tmp_path: Path) -> None:
    placement = make_placement(tmp_path, ingress=True)
    first = squid.setup(policy("a.test"), placement)
    for role in ("egress", "ingress"):  # a log that never logs, in the page directory
        (mark,) = [f for f in first.files if f.path.name.startswith(CONFIG_MARK)
                   and f.path.parent.name == f"squid-{role}-errors"]
        assert conf(first, role).endswith(
            f"\naccess_log stdio:/proc/self/cwd/{mark.path.name} netfence !all\n")
        assert mark.content == "" and mark.owner == "proxy"
    assert marks(squid.setup(policy("b.test"), placement)) != marks(first)
    assert marks(squid.setup(policy("a.test", inbound_hosts=hosts("b.test")),
                             placement)) != marks(first)
    elsewhere = dataclasses.replace(placement, ingress_upstream=Endpoint("10.1.2.3", 80))
    assert marks(squid.setup(policy("a.test"), elsewhere)) == marks(first)


def _cache_log(setup: ProxySetup, role: str, *lines: str) -> None:
    process = next(p for p in setup.processes if p.role == role)
    with process.stderr.open("a") as fh:
        fh.writelines(f"2026/12/06 10:00:00| {line}\n" for line in lines)


def _opening(setup: ProxySetup, role: str) -> str:
    (name,) = [m for m in marks(setup) if f"/{m} " in conf(setup, role)]
    return f"Logfile: opening log stdio:/proc/self/cwd/{name}"


ACCEPTING = "Accepting HTTP Socket connections at conn3 local=127.0.0.1:3128 remote=[::] FD 11"


def test_settled_once_every_squid_listens_with_the_new_config(squid: SquidProxy,
                                                              tmp_path: Path) -> None:
    """What Squid 5.7 logs: at start, the logs it opens then the port; on SIGHUP,
    `Reconfiguring`, the port closed, the logs opened again, the port again."""
    placement = make_placement(tmp_path, ingress=True)
    first = squid.setup(policy("a.test"), placement)
    second = squid.setup(policy("b.test"), placement)
    write_setup(first, tmp_path)
    assert not squid.settled(first)  # not started
    for role in ("egress", "ingress"):
        _cache_log(first, role, "Starting Squid Cache version 5.7",
                   "Logfile: opening log stdio:/dev/stdout", _opening(first, role))
    assert not squid.settled(first)  # not listening yet
    _cache_log(first, "egress", ACCEPTING)
    _cache_log(first, "ingress", ACCEPTING.replace("HTTP", "reverse-proxy HTTP"))
    assert squid.settled(first)
    assert not squid.settled(second)  # its files written, no signal yet

    for role in ("egress", "ingress"):
        _cache_log(first, role, "Reconfiguring Squid Cache (version 5.7)...",
                   "Closing HTTP(S) port 127.0.0.1:3128")
    assert not squid.settled(first) and not squid.settled(second)
    for role in ("egress", "ingress"):
        _cache_log(first, role, "Processing Configuration File: x.conf (depth 0)",
                   _opening(second, role))
    _cache_log(first, "egress", ACCEPTING)
    assert not squid.settled(second)  # the ingress is not listening again yet
    _cache_log(first, "ingress", ACCEPTING)
    assert squid.settled(second)
    assert not squid.settled(first)
    # A setup holding dnsmasq's process too: only the Squids are asked.
    both = second + dns_setup(policy("b.test"), placement)
    assert squid.settled(both)


def test_settled_finds_a_marker_far_back(squid: SquidProxy, tmp_path: Path) -> None:
    setup = squid.setup(policy("a.test"), make_placement(tmp_path))
    write_setup(setup, tmp_path)
    _cache_log(setup, "egress", _opening(setup, "egress"), ACCEPTING,
               *["WARNING: something Squid says now and then " * 4] * 3000)
    assert setup.processes[0].stderr.stat().st_size > 256 * 1024
    assert squid.settled(setup)
