"""The daemon's add, with the host's parts replaced (namespace, nftables, dnsmasq, Envoy):
the member's dnsmasq is started before the publication and waited for after it, and a
failure of either fails the add and removes all of it; a publication that only adds is
one round, one that removes anything goes in stages (tests/integration/test_gateway*.py
run the real ones)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netfence.backends.base import Endpoint, FileSpec, ProcessSpec
from netfence.backends.envoy.gateway import (
    Slot,
    WorkloadResources,
    clusters_path,
    listeners_path,
    route_files_in_use,
    runtime_path,
    workload_resources,
)
from netfence.errors import NetfenceError
from netfence.policy import compile_policy
from netfence.profile.loader import parse_profile
from netfence.runtimes import state
from netfence.runtimes.control import PEER_PID, PROGRESS
from netfence.runtimes.gateway import member, spares
from netfence.runtimes.gateway.daemon import Gateway

LISTENS = ("import socket, sys, time\n"
           "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
           "time.sleep(60)\n")


@dataclasses.dataclass
class Host:
    """The member's doings on the host, recorded: namespaces made and removed, and its
    dnsmasq, a stand-in that listens on its port or exits at once."""

    dnsmasq_fails: bool = False
    broken: str = ""  # "create" or "redirect": that step fails
    made: list[str] = dataclasses.field(default_factory=list)
    removed: list[str] = dataclasses.field(default_factory=list)
    started: list[subprocess.Popen[bytes]] = dataclasses.field(default_factory=list)

    def create(self, name: str) -> Path:
        if self.broken == "create":
            raise NetfenceError("ip netns add: no")
        self.made.append(name)
        return Path("/run/netns") / name

    def redirect(self, nsfile: Path, *ports: int) -> None:
        assert nsfile.name in self.made
        if self.broken == "redirect":
            raise NetfenceError("nft: no")

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
    monkeypatch.setattr(spares.redirect, "install", found.redirect)
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
    request = _request()
    said: list[tuple[dict[str, object], int]] = []
    request[PROGRESS] = lambda message: said.append((message, len(gateway.seen)))
    reply = gateway._add(request)
    assert reply["netns"] == str(Path("/run/netns") / host.made[0])
    # Its namespace said to be there before anything was published (a warm run's sandbox
    # is made meanwhile), as the reply says it.
    assert said == [(reply, 0)]
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


@pytest.mark.parametrize("broken", ["create", "redirect"])
def test_a_namespace_that_cannot_be_made_fails_the_add_and_leaves_nothing(
        host: Host, tmp_path: Path, broken: str) -> None:
    # Made in a thread beside the compilation and dnsmasq's start: those are undone too.
    host.broken = broken
    gateway = Recording(tmp_path / "gw")
    with pytest.raises(NetfenceError, match="no"):
        gateway._add(_request())
    assert gateway.members == {} and gateway.pending == 0 and gateway.seen == [{}]
    assert host.removed == host.made  # none made, or the one made
    assert [p.poll() is not None for p in host.started] == [True]


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


# --- what each publication writes and waits for ----------------------------------------


class Publishing(Gateway):
    """The real publication, Envoy's part recorded: each write and each wait, by file."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, idle_exit=None)
        self.now: dict[str, WorkloadResources] = {}
        self.steps: list[tuple[str, set[Path]]] = []

    def _current(self) -> dict[str, WorkloadResources]:
        return dict(self.now)

    def _write(self, files: list[FileSpec]) -> None:
        changed = {f.path for f in files if self.written.get(f.path) != f.content}
        super()._write(files)
        if changed:
            self.steps.append(("write", changed))

    def _until_applied(self, files: list[FileSpec], what: str) -> None:
        self.steps.append(("wait", {f.path for f in files}))

    def take(self) -> list[tuple[str, set[Path]]]:
        self.steps, taken = [], self.steps
        return taken


def _resources(directory: Path, name: str, host: str = "example.com") -> WorkloadResources:
    policy = compile_policy(parse_profile(
        {"network": {"outbound": {"allow_host": [host]}}}, "test"), ())
    slot = Slot(name, Path(f"/run/netns/netfence-{name}"), Endpoint("127.0.0.1", 5300),
                Endpoint("192.0.2.53", 53), directory / "logs" / name)
    return workload_resources(policy, slot, directory)


def _named(directory: Path, *workloads: WorkloadResources) -> set[Path]:
    """Their route and filter files: what their listeners name."""
    return route_files_in_use(directory, workloads)


def test_a_publication_that_only_adds_is_one_round(tmp_path: Path) -> None:
    gateway = Publishing(tmp_path)
    fixed = {clusters_path(tmp_path), listeners_path(tmp_path), runtime_path(tmp_path)}
    a, b = _resources(tmp_path, "a"), _resources(tmp_path, "b")
    gateway.now = {"a": a}
    gateway._publish_now()
    everything = fixed | _named(tmp_path, a)
    assert gateway.take() == [("write", everything), ("wait", everything)]
    gateway.now = {"a": a, "b": b}
    gateway._publish_now()
    assert gateway.take() == [("write", fixed | _named(tmp_path, b)),
                              ("wait", fixed | _named(tmp_path, a, b))]
    # A new policy for a running workload: the same names, one round too.
    changed = _resources(tmp_path, "a", host="other.example")
    gateway.now = {"a": changed, "b": b}
    gateway._publish_now()
    (write, wait) = gateway.take()
    assert write[0] == "write" and listeners_path(tmp_path) in write[1]
    assert wait == ("wait", fixed | _named(tmp_path, a, b))


def test_a_publication_that_removes_goes_in_stages(tmp_path: Path) -> None:
    gateway = Publishing(tmp_path)
    a, b, c = (_resources(tmp_path, n) for n in "abc")
    gateway.now = {"a": a, "b": b}
    gateway._publish_now()
    gateway.take()
    # b goes and c comes: c's clusters first, then the listeners, then b's clusters go.
    gateway.now = {"a": a, "c": c}
    gateway._publish_now()
    clusters, listeners, runtime = (clusters_path(tmp_path), listeners_path(tmp_path),
                                    runtime_path(tmp_path))
    assert gateway.take() == [
        ("write", _named(tmp_path, c) | {clusters}), ("wait", {clusters}),
        ("write", {listeners, runtime}),
        ("wait", {listeners, runtime} | _named(tmp_path, a, c)),
        ("write", {clusters}), ("wait", {clusters})]
    assert not any(p.exists() for p in _named(tmp_path, b))
    assert all(p.exists() for p in _named(tmp_path, a, c))
    # A new policy that drops one of a workload's clusters, route configurations and
    # filter resources (not one of today's: their names are fixed) is a removal too: they
    # stay until the listeners that name them are replaced.
    fewer = dataclasses.replace(a, clusters=a.clusters[1:], routes=dict([*a.routes.items()][:1]),
                                filters=dict([*a.filters.items()][:-1]))
    dropped = _named(tmp_path, a) - _named(tmp_path, fewer)
    assert len(dropped) == 2
    gateway.now = {"a": fewer, "c": c}
    gateway._publish_now()
    assert gateway.take() == [
        ("wait", {clusters}),
        ("wait", {listeners, runtime} | _named(tmp_path, fewer, c)),
        ("write", {clusters}), ("wait", {clusters})]
    assert not any(p.exists() for p in dropped)
