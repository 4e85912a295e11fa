"""The real Squid: generated configs pass `squid -k parse`, and a running Squid obeys them.

Squid only talks to DNS servers on port 53, so the traffic test runs in a network namespace
of its own with only loopback up: Squid, a tiny DNS responder that records every query,
and two plain HTTP servers (ports 80 and 443) all live there, and curl is run there too.
The namespace and every process are removed afterwards.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import secrets
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from netfence.backends.base import Endpoint, Placement, ProxySetup, write_file, write_setup
from netfence.backends.squid import SquidProxy
from netfence.policy import Policy, compile_policy
from netfence.profile import parse_host_pattern
from netfence.profile.loader import parse_profile
from tests.support.processes import stop

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("squid") is None, reason="squid is not installed"),
]

LOOPBACK = "127.0.0.1"
TINYDNS = Path(__file__).resolve().parents[1] / "support" / "tinydns.py"
# Squid warns about these itself; anything else it says at parse time is our fault.
KNOWN_WARNINGS = ("HTTP requires the use of Via",)


def make_placement(state: Path, *, egress_port: int = 3128,
                   ingress: tuple[int, int] | None = None) -> Placement:
    return Placement(
        state_dir=state,
        egress_listen=Endpoint(LOOPBACK, egress_port),
        workload_proxy=f"{LOOPBACK}:{egress_port}",
        dns_listen=Endpoint(LOOPBACK, 53),
        upstream_resolver=Endpoint(LOOPBACK, 53),
        ingress_listen=Endpoint(LOOPBACK, ingress[0]) if ingress else None,
        ingress_upstream=Endpoint(LOOPBACK, ingress[1]) if ingress else None,
    )


# --- validation of a range of profiles ---------------------------------------------------

PROFILES: dict[str, dict[str, object]] = {
    "empty": {},
    "allow_all": {"outbound": {"insecure_allow_all": True}},
    "wildcards": {"outbound": {"allow_host": ["*.example.com", ".example.org", "pypi.org",
                                             "a.example.com", "example.com", "*.x.pypi.org"]}},
    "ports": {"outbound": {"allow_host": ["example.com"], "allow_port": [22, 443, 8443]}},
    "no_ports": {"outbound": {"allow_host": ["example.com"], "allow_port": []}},
    "cidrs": {"outbound": {"allow_host": ["example.com"],
                           "allow_cidr": ["10.1.0.0/16", "192.168.0.0/16", "fd00::/8"]}},
    "ip_literals": {"outbound": {"allow_host": ["192.0.2.1", "[2001:db8::1]", "::ffff:1.2.3.4",
                                                "example.com"]}},
    "inbound": {"inbound": {"allow_host": ["mcp.example.com", "*.internal.test", "10.0.0.1"]},
                "outbound": {"allow_host": ["example.com"]}},
    "hosts_1000": {"outbound": {"allow_host": [f"h{i}.svc{i % 13}.example" for i in range(1000)]}},
}


def parse_problems(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines()
            if any(w in line for w in ("WARNING", "ERROR", "FATAL", "Bungled"))
            and not any(k in line for k in KNOWN_WARNINGS)]


@pytest.mark.parametrize("name", list(PROFILES))
def test_squid_parses_config(name: str, tmp_path: Path) -> None:
    policy = compile_policy(parse_profile({"network": PROFILES[name]}, name),
                            host_addresses=[ipaddress.ip_address("192.0.2.10"),
                                            ipaddress.ip_address("2001:db8::10")])
    state = tmp_path / "state"
    squid = SquidProxy()
    setup = squid.setup(policy, make_placement(state, ingress=(8080, 9000)))
    write_setup(setup, state)
    commands = squid.validate_command(setup)
    assert len(commands) == 2
    for command in commands:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr[-3000:]
        assert parse_problems(result.stderr) == []


def test_squid_parse_rejects_a_broken_config(tmp_path: Path) -> None:
    state = tmp_path / "state"
    squid = SquidProxy()
    setup = squid.setup(Policy(), make_placement(state))
    write_setup(setup, state)
    with (state / "squid-egress.conf").open("a") as fh:
        fh.write("acl broken dst not-an-address\n")
    (command,) = squid.validate_command(setup)
    assert subprocess.run(command, capture_output=True, timeout=60).returncode != 0


# --- real traffic in a namespace of our own ----------------------------------------------

needs_root_and_tools = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("curl") is None,
    reason="needs root, iproute2 and curl",
)


def wait_for(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Netns:
    """A network namespace with loopback up; processes started in it are tracked by PID."""

    def __init__(self) -> None:
        self.name = f"nft-squid-{os.getpid()}-{secrets.token_hex(3)}"
        self.procs: list[subprocess.Popen[bytes]] = []
        subprocess.run(["ip", "netns", "add", self.name], check=True, timeout=10)
        subprocess.run(["ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up"],
                       check=True, timeout=10)

    def start(self, argv: tuple[str, ...] | list[str], stdout: Path, stderr: Path) -> None:
        with stdout.open("ab") as out, stderr.open("ab") as err:
            # `ip netns exec` and the Squid wrapper both exec: the PID is the server's own.
            self.procs.append(subprocess.Popen(["ip", "netns", "exec", self.name, *argv],
                                               stdout=out, stderr=err))

    def run(self, *argv: str, timeout: float = 15) -> str:
        result = subprocess.run(["ip", "netns", "exec", self.name, *argv],
                                capture_output=True, text=True, timeout=timeout)
        return result.stdout

    def close(self) -> None:
        stop(*self.procs, timeout=10)
        subprocess.run(["ip", "netns", "delete", self.name], check=False, timeout=10)


@pytest.fixture
def netns() -> Iterator[Netns]:
    ns = Netns()
    try:
        yield ns
    finally:
        ns.close()


def start_squid(ns: Netns, setup: ProxySetup, state: Path) -> None:
    write_setup(setup, state)
    for spec in setup.processes:
        ns.start(spec.argv, spec.stdout, spec.stderr)
    for spec in setup.processes:
        wait_for(lambda s=spec: "Accepting " in s.stderr.read_text(errors="replace"),
                 f"{spec.name} to listen")


def curl(ns: Netns, url: str, *extra: str, proxy: str | None = None) -> tuple[int, str]:
    args = ["curl", "-s", "-m", "8", "-g", "-w", "\n%{http_code}", *extra]
    if proxy:
        args += ["-x", f"http://{proxy}"]
    out = ns.run(*args, url)
    body, _, code = out.rpartition("\n")
    return int(code or 0), body


@needs_root_and_tools
def test_traffic_through_squid(netns: Netns, tmp_path: Path) -> None:
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("hello from upstream\n")
    dns_log = tmp_path / "dns-queries.txt"
    dns_out = tmp_path / "dns.out"
    netns.start([sys.executable, str(TINYDNS), "--listen", f"{LOOPBACK}:53",
                 "--record", str(dns_log), "--answer", f"ok.test={LOOPBACK}",
                 "--lifetime", "60"], dns_out, tmp_path / "dns.err")
    for port in (80, 443):  # plain HTTP on 443 too: CONNECT only needs a TCP peer
        netns.start([sys.executable, "-u", "-m", "http.server", str(port), "--bind", LOOPBACK,
                     "--directory", str(www)], tmp_path / f"http{port}.out",
                    tmp_path / f"http{port}.err")
    wait_for(lambda: "listening" in dns_out.read_text(), "the DNS responder")
    for port in (80, 443):
        wait_for(lambda p=port: "Serving HTTP" in (tmp_path / f"http{p}.out").read_text(),
                 f"the HTTP server on {port}")

    squid = SquidProxy()
    # The real policy, and one without address denials (a pure-logic fake) so that a
    # name resolving to loopback can stand for a reachable upstream.
    strict_state, open_state = tmp_path / "strict", tmp_path / "open"
    strict = squid.setup(Policy(hosts=(parse_host_pattern("ok.test"),)),
                         make_placement(strict_state, egress_port=3128))
    opened = squid.setup(Policy(hosts=(parse_host_pattern("ok.test"),), denied=()),
                         make_placement(open_state, egress_port=3129, ingress=(8080, 80)))
    start_squid(netns, strict, strict_state)  # two Squids at once: distinct -n names
    start_squid(netns, opened, open_state)

    code, body = curl(netns, "http://secret.test/", proxy=f"{LOOPBACK}:3128")
    assert code == 403
    assert "netfence: denied secret.test:80: not_allowlisted" in body
    assert "--allow-host secret.test" in body

    code, body = curl(netns, "http://ok.test/", proxy=f"{LOOPBACK}:3128")
    assert code == 403
    assert body.strip() == "netfence: denied ok.test:80: loopback_address 127.0.0.0/8"

    code, body = curl(netns, "http://ok.test:8080/", proxy=f"{LOOPBACK}:3128")
    assert code == 403 and "port_not_allowed" in body

    code, body = curl(netns, "http://localhost/", proxy=f"{LOOPBACK}:3128")
    assert code == 403 and "denied_name" in body

    code, body = curl(netns, "http://ok.test/", proxy=f"{LOOPBACK}:3129")
    assert (code, body.strip()) == (200, "hello from upstream")

    code, body = curl(netns, "http://ok.test:443/", "-p", proxy=f"{LOOPBACK}:3129")
    assert (code, body.strip()) == (200, "hello from upstream")  # through a CONNECT tunnel

    code, body = curl(netns, "http://ok.test:22/", "-p", proxy=f"{LOOPBACK}:3129")
    assert code != 200  # CONNECT to a port outside the policy is refused

    # An address as Host: Squid resolves an accepted Host name once (for its network
    # database) even when it only ever forwards to the workload, and that would muddle
    # the DNS check below.
    code, body = curl(netns, f"http://{LOOPBACK}:8080/")
    assert (code, body.strip()) == (200, "hello from upstream")
    code, body = curl(netns, f"http://{LOOPBACK}:8080/", "-H", "Host: evil.test")
    assert code == 403 and "network.inbound.allow_host" in body

    strict_log, open_log = strict.decision_logs[0], opened.decision_logs[0]
    wait_for(lambda: strict_log.read_text().count("\n") >= 4, "the egress access log")
    wait_for(lambda: open_log.read_text().count("\n") >= 3, "the egress access log")
    records = [r for r in map(squid.parse_decision, strict_log.read_text().splitlines()) if r]
    by_host = {(r.host, r.port): r for r in records}
    assert by_host[("secret.test", 80)].reason == "not_allowlisted"
    assert by_host[("ok.test", 80)].reason == "loopback_address"
    assert by_host[("ok.test", 8080)].reason == "port_not_allowed"
    assert by_host[("localhost", 80)].reason == "denied_name"
    assert not any(r.allowed for r in records)
    assert "ERR_NOT_ALLOWLISTED" in strict_log.read_text()
    opened_records = [r for r in map(squid.parse_decision, open_log.read_text().splitlines())
                      if r]
    tunnel = [r for r in opened_records if r.method == "CONNECT" and r.port == 443]
    assert tunnel and tunnel[0].allowed and tunnel[0].upstream_ip == LOOPBACK
    assert [r.reason for r in opened_records if r.port == 22] == ["port_not_allowed"]

    asked = {line.split()[0] for line in dns_log.read_text().splitlines()}
    assert "ok.test" in asked  # Squid did resolve through the fake resolver
    assert not {"secret.test", "localhost"} & asked  # denied names never left Squid


# --- a running Squid takes a new policy (netfence update) --------------------------------

NOBODY = 65534
# An upstream that echoes what it reads: what a long-lived CONNECT tunnel talks to.
ECHO_SERVER = """
import socket, sys, threading
server = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print("listening", flush=True)
def echo(conn):
    with conn:
        while data := conn.recv(4096):
            conn.sendall(data)
while True:
    threading.Thread(target=echo, args=(server.accept()[0],), daemon=True).start()
"""
# A client that opens one CONNECT tunnel, then sends each line it reads through it and
# prints what comes back (or why nothing does).
TUNNEL_CLIENT = """
import socket, sys
tunnel = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
tunnel.sendall(f"CONNECT {sys.argv[2]} HTTP/1.1\\r\\nHost: {sys.argv[2]}\\r\\n\\r\\n".encode())
print(tunnel.recv(4096).split(b"\\r\\n")[0].decode(), flush=True)
for line in sys.stdin:
    try:
        tunnel.sendall(line.encode())
        print(tunnel.recv(4096).decode().strip() or "closed", flush=True)
    except OSError as exc:
        print(f"error {exc}", flush=True)
"""


class Tunnel:
    """A CONNECT tunnel held open by a client in the namespace, driven line by line."""

    def __init__(self, ns: Netns, proxy_port: int, target: str) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns.name, sys.executable, "-u", "-c", TUNNEL_CLIENT,
             str(proxy_port), target],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ns.procs.append(self.proc)  # type: ignore[arg-type]  # stopped with the namespace
        self.status = self._line()

    def _line(self) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 10)
        assert ready, "the tunnel client said nothing"
        return self.proc.stdout.readline().strip()

    def echo(self, text: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self._line()


def reload_state(unprivileged: bool) -> Path:
    """A state dir the Squid user can reach: rootless, Squid runs as its owner (`nobody`
    stands for the caller), which cannot pass pytest's 0700 root temporary directory."""
    state = Path(tempfile.mkdtemp(prefix="nf-squid-reload-"))
    if unprivileged:
        os.chown(state, NOBODY, NOBODY)
    return state


def write_as_fence(setup: ProxySetup, state: Path, unprivileged: bool,
                   old: ProxySetup | None = None) -> list[Path]:
    """Write a setup (only the files that changed since `old`, as an update does); rootless,
    every file then belongs to the user Squid runs as."""
    before = {f.path: f.content for f in old.files} if old else {}
    changed = [f for f in setup.files if before.get(f.path) != f.content]
    if old is None:
        write_setup(setup, state)
    else:
        for spec in changed:
            write_file(spec)
    if unprivileged:
        for spec in changed:
            for path in (spec.path, spec.path.parent):
                os.chown(path, NOBODY, NOBODY)
    return [f.path for f in changed]


@needs_root_and_tools
@pytest.mark.parametrize("unprivileged", [False, True], ids=["root", "rootless"])
def test_sighup_applies_a_new_policy(netns: Netns, tmp_path: Path, unprivileged: bool) -> None:
    """Squid reconfigures in place on SIGHUP, egress and ingress: settled() says when it
    serves the new config; then a newly allowed host goes through, a dropped one is
    denied, and a CONNECT tunnel opened before stays up (even to the dropped host)."""
    if unprivileged and shutil.which("setpriv") is None:
        pytest.skip("needs setpriv")
    dns_out = tmp_path / "dns.out"
    netns.start([sys.executable, str(TINYDNS), "--listen", f"{LOOPBACK}:53",
                 "--record", str(tmp_path / "dns.txt"), "--answer", f"a.test={LOOPBACK}",
                 "--answer", f"b.test={LOOPBACK}", "--lifetime", "60"],
                dns_out, tmp_path / "dns.err")
    netns.start([sys.executable, "-u", "-m", "http.server", "80", "--bind", LOOPBACK,
                 "--directory", str(Path(__file__).parent)],
                tmp_path / "http.out", tmp_path / "http.err")
    netns.start([sys.executable, "-u", "-c", ECHO_SERVER, "443"],
                tmp_path / "echo.out", tmp_path / "echo.err")
    for out, what in ((dns_out, "listening"), (tmp_path / "http.out", "Serving HTTP"),
                      (tmp_path / "echo.out", "listening")):
        wait_for(lambda o=out, w=what: w in o.read_text(), f"{out.name}")

    squid = SquidProxy()
    state = reload_state(unprivileged)
    try:
        placement = dataclasses.replace(
            make_placement(state, egress_port=3128, ingress=(8080, 80)),
            unprivileged=unprivileged)

        def policy(host: str) -> Policy:  # without address denials: upstreams are loopback
            pattern = (parse_host_pattern(host),)
            return Policy(hosts=pattern, inbound_hosts=pattern, denied=())

        first, second = squid.setup(policy("a.test"), placement), squid.setup(
            policy("b.test"), placement)
        write_as_fence(first, state, unprivileged)
        user = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")
        procs = []
        for spec in first.processes:
            netns.start([*(user if unprivileged else ()), *spec.argv], spec.stdout,
                        spec.stderr)
            procs.append(netns.procs[-1])
        wait_for(lambda: squid.settled(first), "Squid to serve its first config")
        proxy = f"{LOOPBACK}:3128"
        assert curl(netns, "http://a.test/", proxy=proxy)[0] == 200
        assert curl(netns, "http://b.test/", proxy=proxy)[0] == 403
        assert curl(netns, f"http://{LOOPBACK}:8080/", "-H", "Host: a.test")[0] == 200
        tunnel = Tunnel(netns, 3128, "a.test:443")
        assert tunnel.status == "HTTP/1.1 200 Connection established"
        assert tunnel.echo("before") == "before"

        changed = write_as_fence(second, state, unprivileged, old=first)
        assert {p.name for p in changed} >= {"squid-egress.conf", "squid-ingress.conf"}
        assert not squid.settled(second)  # the files alone change nothing
        started = time.monotonic()
        for spec, proc in zip(second.processes, procs, strict=True):
            assert spec.reload is not None and spec.reload.signal is not None
            assert set(changed) & set(spec.reads)
            proc.send_signal(spec.reload.signal)
        wait_for(lambda: squid.settled(second), "Squid to serve the new config", timeout=10)
        took = time.monotonic() - started
        assert all(proc.poll() is None for proc in procs)  # reconfigured, not restarted
        assert not squid.settled(first)

        assert curl(netns, "http://b.test/", proxy=proxy)[0] == 200
        code, body = curl(netns, "http://a.test/", proxy=proxy)
        assert code == 403 and "not_allowlisted" in body
        assert curl(netns, f"http://{LOOPBACK}:8080/", "-H", "Host: b.test")[0] == 200
        assert curl(netns, f"http://{LOOPBACK}:8080/", "-H", "Host: a.test")[0] == 403
        # Decided once, when it was opened: the tunnel outlives its host's allowance.
        assert tunnel.echo("after") == "after"
        print(f"Squid ({'rootless' if unprivileged else 'root'}) served the new config "
              f"{took * 1000:.0f} ms after SIGHUP")
    finally:
        stop(*netns.procs, timeout=10)  # Squid first: it holds files in the state dir
        shutil.rmtree(state, ignore_errors=True)
