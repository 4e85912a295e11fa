"""backends/dnsmasq.py: the generated dnsmasq config: only allowlisted names are ever
forwarded, and answers holding a denied address are refused."""

from __future__ import annotations

import dataclasses
import ipaddress
import signal
import stat
from pathlib import Path

import pytest

from netfence.backends.base import Endpoint, Placement, ProxySetup, Reload, write_setup
from netfence.backends.dnsmasq import answer_filter, dns_setup, dns_validate_command
from netfence.policy import DENIED_NAMES, Policy
from netfence.profile import parse_host_pattern
from tests.support.policies import HOST, allowlist, policy_for

UP = "192.0.2.53#53"


def make_placement(state: Path, upstream: Endpoint | None = None) -> Placement:
    return Placement(
        state_dir=state,
        egress_listen=Endpoint("127.0.0.1", 3128),
        workload_proxy="127.0.0.1:3128",
        dns_listen=Endpoint("127.0.0.1", 5300),
        upstream_resolver=upstream or Endpoint("192.0.2.53", 53),
    )


def policy(*raw: str, allow_all: bool = False) -> Policy:
    return Policy(allow_all=allow_all, hosts=tuple(parse_host_pattern(r) for r in raw))


def lines_of(setup: ProxySetup) -> list[str]:
    """The main config's lines, then the servers file's (which it includes)."""
    main, servers = setup.files
    return main.content.splitlines() + servers.content.splitlines()


def contents(setup: ProxySetup) -> dict[str, str]:
    return {f.path.name: f.content for f in setup.files}


def forwarded(lines: list[str]) -> list[str]:
    """Lines that send queries upstream (a server= with an address)."""
    return [ln for ln in lines if ln.startswith("server=") and not ln.endswith("/")]


def test_base_settings(tmp_path: Path) -> None:
    lines = lines_of(dns_setup(Policy(), make_placement(tmp_path)))
    for expected in ("no-resolv", "no-hosts", "listen-address=127.0.0.1", "port=5300",
                     "bind-interfaces", "log-queries", "log-facility=-", "pid-file"):
        assert expected in lines
    assert not [ln for ln in lines if ln.startswith(("resolv-file", "addn-hosts", "interface="))]


def test_empty_allowlist_forwards_nothing(tmp_path: Path) -> None:
    lines = lines_of(dns_setup(Policy(), make_placement(tmp_path)))
    assert forwarded(lines) == []
    assert lines[-1] == "server=/#/"


def test_exact_name_does_not_open_its_subdomains(tmp_path: Path) -> None:
    lines = lines_of(dns_setup(policy("api.example.com"), make_placement(tmp_path)))
    assert forwarded(lines) == [f"server=/api.example.com/{UP}"]
    assert "server=/*.api.example.com/" in lines


def test_wildcard_forwards_name_and_subdomains(tmp_path: Path) -> None:
    lines = lines_of(dns_setup(policy("*.example.com"), make_placement(tmp_path)))
    assert forwarded(lines) == [f"server=/example.com/{UP}"]
    assert "server=/*.example.com/" not in lines


def test_exact_name_under_wildcard_adds_no_block(tmp_path: Path) -> None:
    lines = lines_of(dns_setup(policy("*.example.com", "a.example.com", "b.example.com"),
                               make_placement(tmp_path)))
    assert forwarded(lines) == [f"server=/example.com/{UP}"]
    assert not [ln for ln in lines if ln.startswith("server=/*.")]


def test_wildcard_below_exact_name(tmp_path: Path) -> None:
    lines = lines_of(dns_setup(policy("example.com", "*.api.example.com"),
                               make_placement(tmp_path)))
    assert set(forwarded(lines)) == {f"server=/example.com/{UP}",
                                     f"server=/api.example.com/{UP}"}
    assert "server=/*.example.com/" in lines


def test_denied_names_are_never_forwarded(tmp_path: Path) -> None:
    lines = lines_of(dns_setup(policy("*.docker.internal", "localhost", "*.app.localhost"),
                               make_placement(tmp_path)))
    for name in DENIED_NAMES:
        assert f"server=/{name}/" in lines
    assert forwarded(lines) == [f"server=/docker.internal/{UP}"]


def test_ip_literals_need_nothing(tmp_path: Path) -> None:
    lines = lines_of(dns_setup(policy("192.0.2.1", "[2001:db8::1]"), make_placement(tmp_path)))
    assert forwarded(lines) == []


def test_allow_all_forwards_everything_but_denied_names(tmp_path: Path) -> None:
    lines = lines_of(dns_setup(policy(allow_all=True), make_placement(tmp_path)))
    assert forwarded(lines) == [f"server={UP}"]
    assert "address=/#/" not in lines and "server=/#/" not in lines
    assert "server=/localhost/" in lines


def test_ipv6_upstream(tmp_path: Path) -> None:
    placement = make_placement(tmp_path, Endpoint("2001:db8::53", 5353))
    lines = lines_of(dns_setup(policy("example.com"), placement))
    assert "server=/example.com/2001:db8::53#5353" in lines


def test_process_and_files(tmp_path: Path) -> None:
    state = tmp_path / "state"
    placement = make_placement(state)
    setup = dns_setup(policy("example.com"), placement)
    (process,) = setup.processes
    conf, servers = state / "dnsmasq.conf", state / "dnsmasq-servers.conf"
    # As root dnsmasq reads the servers file at start only, as a second config (it cannot
    # reach it once it has dropped root): any change restarts it.
    assert process.argv == ("dnsmasq", "--keep-in-foreground", f"--conf-file={conf}",
                            f"--conf-file={servers}")
    assert process.ready == (placement.dns_listen,)
    assert process.stderr.parent == state
    assert setup.env == {}
    assert [f.path for f in setup.files] == [conf, servers]
    assert process.reads == (conf, servers)
    assert process.reload is None
    write_setup(setup, state)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert stat.S_IMODE(servers.stat().st_mode) == 0o600
    assert dns_validate_command(setup) == [
        ("dnsmasq", "--test", f"--conf-file={conf}", f"--conf-file={servers}")]


def test_unprivileged_rereads_the_servers_file_on_sighup(tmp_path: Path) -> None:
    """As the calling user (rootless, on a loopback port above 1023) dnsmasq never
    changes user, so it can re-read its servers file: a names-only change is a SIGHUP, a
    change of the main config a restart. No `user=` (as root it drops to nobody on its
    own), no owners, and the empty pid-file writes nothing. Checked with dnsmasq 2.90 run
    as nobody."""
    state = tmp_path / "state"
    placement = dataclasses.replace(make_placement(state), unprivileged=True)
    setup = dns_setup(allowlist("example.com"), placement)
    conf, servers = state / "dnsmasq.conf", state / "dnsmasq-servers.conf"
    (process,) = setup.processes
    assert process.argv == ("dnsmasq", "--keep-in-foreground", f"--conf-file={conf}",
                            f"--servers-file={servers}")
    assert process.reads == (conf, servers)
    assert process.reload == Reload(signal=signal.SIGHUP, restart_for=(conf,))
    assert not [ln for ln in lines_of(setup) if ln.startswith(("user=", "group="))]
    assert all(f.owner is None for f in setup.files)
    # The files are the same either way (--test reads a servers file as a config).
    root = dns_setup(allowlist("example.com"), make_placement(state))
    assert setup.files == root.files
    assert dns_validate_command(setup) == dns_validate_command(root)


def test_a_names_only_change_leaves_the_main_config(tmp_path: Path) -> None:
    """What a SIGHUP cannot change (the answer filter, the listen address) is all in the
    main config; allowed names, allow_all and the default are all in the servers file."""
    placement = dataclasses.replace(make_placement(tmp_path), unprivileged=True)
    before = contents(dns_setup(allowlist("a.example"), placement))
    allow_all = policy_for({"insecure_allow_all": True}, host_addresses=(str(HOST),))
    for changed in (allowlist("b.example", "*.c.example"), allowlist(), allow_all):
        after = contents(dns_setup(changed, placement))
        assert after["dnsmasq.conf"] == before["dnsmasq.conf"]
        assert after["dnsmasq-servers.conf"] != before["dnsmasq-servers.conf"]
    cidrs = contents(dns_setup(allowlist("a.example", cidrs=("10.1.0.0/16",)), placement))
    assert cidrs["dnsmasq.conf"] != before["dnsmasq.conf"]


@pytest.mark.parametrize("count", [1, 1000])
def test_one_forward_per_name(tmp_path: Path, count: int) -> None:
    names = [f"h{i}.example.net" for i in range(count)]
    lines = lines_of(dns_setup(policy(*names), make_placement(tmp_path)))
    assert len(forwarded(lines)) == count


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
