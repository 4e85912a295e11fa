"""The docker runtime's redirect: the holder's and the egress's routes and rules, and what
a run says when it cannot install them."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from netfence.backends import get_backend
from netfence.profile import load_profile
from netfence.runtimes.base import TRANSPARENT_PORT, WorkloadSpec
from netfence.runtimes.docker import networks, redirect
from netfence.runtimes.docker.runtime import DockerFence
from netfence.runtimes.signals import StopSignals

PLAN = networks.plan_addresses("10.213.7.0/24", "10.213.7.1")


def test_the_workload_reaches_its_fence_on_link_and_everything_else_by_the_egress() -> None:
    assert redirect.workload_routes("eth0", PLAN).splitlines() == [
        "route del 10.213.7.0/24 dev eth0",
        "route add 10.213.7.2/32 dev eth0",
        "route add 10.213.7.3/32 dev eth0",
        "route add 10.213.7.4/32 dev eth0",
        "route replace default via 10.213.7.3 dev eth0",
    ]


def test_workload_rules_send_dns_to_the_fence_and_refuse_other_udp() -> None:
    rules = redirect.workload_ruleset(PLAN, transparent=True)
    assert "th dport 53 dnat ip to 10.213.7.2:53" in rules
    assert "ip daddr { 10.213.7.2, 10.213.7.3, 10.213.7.4 } accept" in rules
    assert "meta l4proto tcp accept\n    reject\n" in rules
    # No transparent path: TCP out is reset at once, as in the namespace runtime.
    closed = redirect.workload_ruleset(PLAN, transparent=False)
    assert "meta l4proto tcp reject with tcp reset\n    reject\n" in closed


def test_the_egress_redirects_only_what_arrives_from_the_workload() -> None:
    rules = redirect.egress_ruleset("eth1", PLAN, TRANSPARENT_PORT)
    assert ('iifname "eth1" ip daddr != 10.213.7.3 meta l4proto tcp redirect to :15001'
            in rules)
    assert "type filter hook forward priority 0; policy drop;" in rules
    # Without a transparent listener the egress still routes nothing.
    closed = redirect.egress_ruleset("eth1", PLAN, None)
    assert "redirect" not in closed and "policy drop" in closed


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("nft") is None
                    or shutil.which("unshare") is None,
                    reason="checking nftables rules needs root and nft")
def test_every_ruleset_loads_in_a_namespace_of_its_own() -> None:
    for rules in (redirect.workload_ruleset(PLAN, True), redirect.workload_ruleset(PLAN, False),
                  redirect.egress_ruleset("eth1", PLAN, TRANSPARENT_PORT),
                  redirect.egress_ruleset("eth1", PLAN, None)):
        done = subprocess.run(["unshare", "--net", "nft", "-f", "-"], input=rules,
                              capture_output=True, text=True, timeout=10)
        assert done.returncode == 0, (done.stderr, rules)


def test_interface_is_found_by_its_address() -> None:
    links = [{"ifname": "lo", "addr_info": [{"local": "127.0.0.1"}]},
             {"ifname": "eth1", "addr_info": [{"local": "10.213.7.3"}]}]
    assert redirect.interface_with("10.213.7.3", links) == "eth1"
    assert redirect.interface_with("10.213.7.5", links) is None
    assert redirect.interface_with("10.213.7.3", "not json links") is None


def _fence(tmp_path: Path, proxy: str, transparent: bool) -> DockerFence:
    backend = get_backend(proxy)
    backend.transparent = transparent  # an instance attribute: the class is untouched
    spec = WorkloadSpec(name="w", command=("img",), profile=load_profile("none"), proxy=proxy)
    fence = DockerFence(object(), spec, backend, tmp_path, StopSignals())  # type: ignore[arg-type]
    fence.fence["egress"] = (None, object())  # type: ignore[assignment]
    return fence


@pytest.mark.parametrize(("proxy", "transparent", "installed", "words"), [
    ("envoy", True, True, None),
    ("envoy", True, False, "needs root and the container engine on this host"),
    ("squid", False, True, "the squid proxy has no transparent path; --proxy envoy"),
    ("squid", False, False, "the squid proxy has no transparent path; --proxy envoy"),
])
def test_a_run_says_in_one_line_when_programs_ignoring_the_proxy_cannot_connect(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        proxy: str, transparent: bool, installed: bool, words: str | None) -> None:
    asked: list[Any] = []
    monkeypatch.setattr(redirect, "install",
                        lambda *args: asked.append(args) or installed)
    fence = _fence(tmp_path, proxy, transparent)
    with caplog.at_level(logging.WARNING, logger="netfence"):
        fence._redirect(object(), PLAN)  # type: ignore[arg-type]
    notes = [r.getMessage() for r in caplog.records]
    if words is None:
        assert notes == []
    else:
        assert len(notes) == 1 and words in notes[0], notes
    # The transparent port only when the backend has the listener (and netfence is root).
    port = asked[0][3]
    assert port == (TRANSPARENT_PORT if transparent and os.geteuid() == 0 else None)


@pytest.mark.skipif(os.geteuid() != 0, reason="the transparent path is root's")
@pytest.mark.parametrize(("accepted", "warned"), [(True, False), (None, False), (False, True)])
def test_the_internal_bridge_is_let_through_dockers_forward_chain(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        accepted: bool | None, warned: bool) -> None:
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(redirect, "install", lambda *args: True)
    monkeypatch.setattr(networks, "accept_bridged",
                        lambda bridge, name: calls.append(("accept", bridge, name)) or accepted)
    monkeypatch.setattr(networks, "remove_bridged",
                        lambda name: calls.append(("remove", name)))
    fence = _fence(tmp_path, "envoy", transparent=True)
    fence.bridge = "br-0123456789ab"
    with caplog.at_level(logging.WARNING, logger="netfence"):
        fence._redirect(object(), PLAN)  # type: ignore[arg-type]
    assert calls == [("accept", "br-0123456789ab", "w")]
    notes = [r.getMessage() for r in caplog.records]
    assert bool(notes) == warned and all("DOCKER-USER" in n for n in notes), notes
    fence.undo.close()  # the rule goes with the fence, whatever came of adding it
    assert calls[-1] == ("remove", "w")


def test_the_workload_resolves_at_the_dns_container_whatever_the_engine_writes(
        tmp_path: Path) -> None:
    # Docker Engine names its embedded server (127.0.0.11) in every container's
    # resolv.conf on a user network; the workload gets one file naming its fence instead.
    fence = _fence(tmp_path, "envoy", transparent=False)
    fence.plan = PLAN
    mount = fence._resolv_conf()
    assert (mount["Target"], mount["Type"], mount["ReadOnly"]) == (
        "/etc/resolv.conf", "bind", True)
    written = Path(mount["Source"])
    assert written.parent == tmp_path and written.stat().st_mode & 0o777 == 0o644
    assert written.read_text().splitlines() == ["nameserver 10.213.7.2",
                                                "options timeout:2 attempts:2"]


def test_the_bridge_is_let_through_without_a_transparent_path_too(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # Squid's workload reaches its fence over the bridge as well: where Docker set the
    # FORWARD policy to DROP, that needs the rule; failing to add it is no warning here.
    calls: list[str] = []
    monkeypatch.setattr(redirect, "install", lambda *args: True)
    monkeypatch.setattr(networks, "accept_bridged",
                        lambda bridge, name: calls.append(bridge) or False)
    fence = _fence(tmp_path, "squid", transparent=False)
    fence.bridge = "podman3"
    with caplog.at_level(logging.WARNING, logger="netfence"):
        fence._redirect(object(), PLAN)  # type: ignore[arg-type]
    assert calls == ["podman3"]
    assert [r.getMessage() for r in caplog.records if "DOCKER-USER" in r.getMessage()] == []
