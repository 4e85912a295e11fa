"""The daemon's add, with the host's parts replaced (namespace, nftables, dnsmasq, Envoy):
the member's dnsmasq is started before the publication and waited for after it, and a
failure of either fails the add and removes all of it (tests/integration/test_gateway.py
runs the real ones)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netfence.backends.base import Endpoint, ProcessSpec
from netfence.errors import NetfenceError
from netfence.profile.loader import parse_profile
from netfence.runtimes import state
from netfence.runtimes.control import PEER_PID
from netfence.runtimes.gateway import member
from netfence.runtimes.gateway.daemon import Gateway

LISTENS = ("import socket, sys, time\n"
           "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
           "time.sleep(60)\n")


@dataclasses.dataclass
class Host:
    """The member's doings on the host, recorded: namespaces made and removed, and its
    dnsmasq, a stand-in that listens on its port or exits at once."""

    dnsmasq_fails: bool = False
    made: list[str] = dataclasses.field(default_factory=list)
    removed: list[str] = dataclasses.field(default_factory=list)
    started: list[subprocess.Popen[bytes]] = dataclasses.field(default_factory=list)

    def create(self, name: str) -> Path:
        self.made.append(name)
        return Path("/run/netns") / name

    def start(self, spec: ProcessSpec) -> subprocess.Popen[bytes]:
        (listen,) = spec.ready
        argv = (["sh", "-c", "echo refused >&2; exit 3"] if self.dnsmasq_fails
                else [sys.executable, "-c", LISTENS, str(listen.port)])
        with open(spec.stderr, "ab") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=err)
        self.started.append(proc)
        return proc


class Recording(Gateway):
    """The daemon with Envoy's part replaced: each publication records the workloads it
    holds and whether their dnsmasq was still starting."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, idle_exit=None)
        self.seen: list[dict[str, bool]] = []
        self.fail = False

    def _publish_now(self) -> None:
        with self.lock:
            self.seen.append({n: m.dnsmasq_starting for n, m in self.members.items()})
        if self.fail:
            raise NetfenceError("envoy refused it")


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Host]:
    found = Host()
    monkeypatch.setattr(state, "STATE_ROOT", tmp_path / "state")
    monkeypatch.setattr(member.netns, "create", found.create)
    monkeypatch.setattr(member.netns, "remove", found.removed.append)
    monkeypatch.setattr(member.netns, "host_addresses", lambda: ())
    monkeypatch.setattr(member.redirect, "install", lambda *args, **kwargs: None)
    monkeypatch.setattr(member.processes, "start", found.start)
    yield found
    for proc in found.started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _request(name: str = "w") -> dict[str, object]:
    """An add from this very process, as `netfence run --gateway` asks it."""
    me = os.getpid()
    directory = state.STATE_ROOT / name
    directory.mkdir(parents=True, mode=0o700)
    state.save(state.WorkloadState(
        name=name, runtime="namespace", proxy="envoy", command=["true"], supervisor_pid=me,
        supervisor_start=state.process_start_time(me) or "", started_at=time.time(),
        state_dir=str(directory), gateway=True))
    return {"op": "add", "name": name, PEER_PID: me, "dns_upstream": "192.0.2.53",
            "profile": {"network": {"outbound": {"allow_host": ["example.com"]}}}}


def test_dnsmasq_starts_while_the_add_is_published(host: Host, tmp_path: Path) -> None:
    gateway = Recording(tmp_path / "gw")
    reply = gateway._add(_request())
    assert reply["netns"] == str(Path("/run/netns") / host.made[0])
    # Published with its dnsmasq still starting; answered once that listens.
    assert gateway.seen == [{"w": True}]
    added = gateway.members["w"]
    assert not added.dnsmasq_starting and added.dnsmasq is not None
    assert added.dnsmasq[1].poll() is None
    gateway.retire(added)
    assert gateway.seen[-1] == {} and host.removed == host.made
    assert added.dnsmasq is None and host.started[0].poll() is not None


def test_a_dnsmasq_that_fails_to_start_fails_the_add_and_leaves_nothing(
        host: Host, tmp_path: Path) -> None:
    host.dnsmasq_fails = True
    gateway = Recording(tmp_path / "gw")
    with pytest.raises(NetfenceError, match=r"exited with status 3 while starting: refused"):
        gateway._add(_request())
    # Published, then published again without it; its namespace and dnsmasq gone.
    assert gateway.seen == [{"w": True}, {}]
    assert gateway.members == {} and gateway.pending == 0
    assert host.removed == host.made and len(host.made) == 1
    assert [p.poll() for p in host.started] == [3]


def test_a_failed_publication_fails_the_add_and_leaves_nothing(
        host: Host, tmp_path: Path) -> None:
    gateway = Recording(tmp_path / "gw")
    gateway.fail = True
    with pytest.raises(NetfenceError, match="envoy refused it"):
        gateway._add(_request())
    assert gateway.members == {} and gateway.pending == 0
    assert host.removed == host.made and len(host.made) == 1
    (proc,) = host.started
    assert proc.poll() is not None  # stopped, not left starting


def test_the_main_loop_leaves_a_starting_dnsmasq_to_its_add(
        host: Host, tmp_path: Path) -> None:
    host.dnsmasq_fails = True
    gateway = Recording(tmp_path / "gw")
    record = state.load(str(_request()["name"]))
    assert record is not None
    workload = member.Member(gateway.directory, record, -1, tmp_path / "logs",
                             Endpoint("192.0.2.53", 53), learn=False, publish=gateway.publish)
    workload.start(parse_profile({}, "test"))
    (proc,) = host.started
    proc.wait()
    assert not workload.dnsmasq_exited()  # the add's to report, not the loop's to revive
    with pytest.raises(NetfenceError, match="exited with status 3"):
        workload.ready()
    workload.close()
    assert host.removed == host.made
