"""Policy changes: what they allow anew and no longer, and their place in `netfence logs`."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from netfence.backends.squid import LOG_FORMAT_TAG
from netfence.errors import NetfenceError, UsageError
from netfence.profile.loader import load_profile, parse_profile, profile_data, with_overrides
from netfence.profile.model import Profile
from netfence.runtimes import logs
from netfence.runtimes.base import Fence, WorkloadSpec
from netfence.runtimes.logs import PolicyChange, read_decisions, record_policy_change
from netfence.runtimes.state import WorkloadState
from netfence.runtimes.supervisor import Updates, policy_difference


def _profile(hosts: list[str], ports: list[int] | None = None,
             cidrs: tuple[str, ...] = ()) -> Profile:
    outbound: dict[str, object] = {"allow_host": hosts, "allow_cidr": list(cidrs)}
    if ports is not None:
        outbound["allow_port"] = ports
    return parse_profile({"network": {"outbound": outbound}}, "test")


def test_difference_names_hosts_ports_and_ranges() -> None:
    old = _profile(["a.test", "*.b.test"])  # default ports 80, 443
    new = _profile(["*.b.test", "c.test"], [443, 8443], ("10.1.0.0/16",))
    added, removed = policy_difference(old, new)
    assert added == ("host c.test", "port 8443", "cidr 10.1.0.0/16")
    assert removed == ("host a.test", "port 80")
    assert policy_difference(new, new) == ((), ())


def test_profile_data_reads_back_as_the_same_profile() -> None:
    profiles = [load_profile("network"), load_profile("none"),
                _profile(["::1", "10.0.0.1", "2001:db8::1", "*.a.test", "a.test"], [],
                         ("fd00::/8",)),
                with_overrides(load_profile("none"), allow_host=["x.test"], allow_port=[22],
                               read=["/srv/data"])]
    for profile in profiles:
        data = json.loads(json.dumps(profile_data(profile)))  # as the socket carries it
        assert parse_profile(data, "again") == profile


def _workload(tmp_path: Path) -> WorkloadState:
    return WorkloadState(name="w", runtime="namespace", proxy="squid", command=["x"],
                         supervisor_pid=os.getpid(), supervisor_start="", started_at=0.0,
                         state_dir=str(tmp_path), decision_logs=[str(tmp_path / "access.log")])


def _squid_line(at: str, host: str) -> str:
    return f"{LOG_FORMAT_TAG} {at} GET {host} 80 200 - 10.0.0.1 1 2 3\n"


def test_changes_appear_among_the_decisions_by_time(tmp_path: Path) -> None:
    (tmp_path / "access.log").write_text(
        _squid_line("2026-12-06T10:00:01Z", "a.test") + _squid_line("2026-12-06T10:00:05Z",
                                                                    "b.test"))
    record_policy_change(tmp_path, PolicyChange("2026-12-06T10:00:03.000Z", "p.yaml",
                                                ("host b.test",), ("host a.test",)))
    assert os.stat(tmp_path / logs.POLICY_LOG).st_mode & 0o777 == 0o600
    entries = list(read_decisions(_workload(tmp_path), follow=False))
    kinds = [e.source if isinstance(e, PolicyChange) else e.host for e in entries]
    assert kinds == ["a.test", "p.yaml", "b.test"]
    change = entries[1]
    assert isinstance(change, PolicyChange)
    assert change.log_entry("w") == {"time": "2026-12-06T10:00:03.000Z", "workload": "w",
                                     "event": "policy", "policy": "p.yaml",
                                     "added": ["host b.test"], "removed": ["host a.test"]}


def test_log_time_sorts_with_the_proxies_times() -> None:
    at = time.mktime((2026, 12, 6, 10, 0, 3, 0, 0, 0)) - time.timezone + 0.25
    assert logs.log_time(at) == "2026-12-06T10:00:03.250Z"


class _Fence(Fence):
    """Records the profiles it is given; fails for those naming a host in `refuse`."""

    def __init__(self, refuse: set[str]) -> None:
        self.refuse = refuse
        self.applied: list[tuple[str, ...]] = []

    def start(self) -> None: ...
    def launch(self, detached: bool) -> None: ...
    def wait(self) -> int: return 0
    def close(self) -> None: ...

    def update(self, profile: Profile) -> None:
        hosts = tuple(str(h) for h in profile.network.outbound.allow_host)
        self.applied.append(hosts)
        if "usage.test" in hosts:
            raise UsageError("this change cannot be made while it runs")
        if self.refuse.intersection(hosts):
            raise NetfenceError("the proxy refused it", remedy="see its log")


def _updates(tmp_path: Path, fence: Fence) -> Updates:
    spec = WorkloadSpec(name="w", command=("x",), proxy="envoy",
                        profile=with_overrides(load_profile("none"), allow_host=["a.test"],
                                               read=["/srv"]))
    return Updates(spec, fence, _workload(tmp_path))


def _request(*hosts: str) -> dict[str, object]:
    return {"op": "update", "source": "p.yaml",
            "profile": profile_data(_profile(list(hosts)))}


def test_an_update_is_applied_recorded_and_logged(tmp_path: Path) -> None:
    fence = _Fence(set())
    updates = _updates(tmp_path, fence)
    reply = updates.handle(_request("b.test"))
    assert reply == {"added": ["host b.test"], "removed": ["host a.test"], "grants_ignored": []}
    assert fence.applied == [("b.test",)]
    assert updates.spec.profile.read == ("/srv",)  # grants as the workload started
    saved = json.loads((tmp_path / "workload.json").read_text())
    assert saved["policy"] == "p.yaml"
    [change] = [e for e in read_decisions(_workload(tmp_path), follow=False)]
    assert isinstance(change, PolicyChange) and change.added == ("host b.test",)


def test_a_refused_update_goes_back_to_the_old_policy(tmp_path: Path) -> None:
    fence = _Fence({"bad.test"})
    updates = _updates(tmp_path, fence)
    with pytest.raises(NetfenceError, match="the proxy refused it; the old policy stays"):
        updates.handle(_request("bad.test"))
    assert fence.applied == [("bad.test",), ("a.test",)]
    assert updates.spec.profile.network.outbound.allow_host[0].name == "a.test"
    assert not (tmp_path / logs.POLICY_LOG).exists()  # nothing changed, nothing logged


def test_a_change_refused_before_anything_changed_is_not_rolled_back(tmp_path: Path) -> None:
    fence = _Fence(set())
    with pytest.raises(UsageError, match="cannot be made while it runs"):
        _updates(tmp_path, fence).handle(_request("usage.test"))
    assert fence.applied == [("usage.test",)]


def test_a_request_that_is_no_update_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NetfenceError, match="unknown request"):
        _updates(tmp_path, _Fence(set())).handle({"op": "shutdown"})
