"""The real Envoy binary: generated bootstraps validate, and traffic on loopback obeys them.

Everything here stays on 127.0.0.1: the proxy, an HTTP upstream and a stub DNS server that
answers every A query with 127.0.0.1 (so no query ever leaves the machine).
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import ipaddress
import json
import socket
import ssl
import struct
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from netfence.backends.base import (
    DecisionRecord,
    Endpoint,
    FileSpec,
    Placement,
    ProxySetup,
    write_setup,
)
from netfence.backends.envoy import TUNNEL_ESTABLISHED_LOG_TYPE, EnvoyProxy
from netfence.policy import Policy, compile_policy
from netfence.profile import parse_host_pattern
from netfence.profile.loader import parse_profile
from tests.support.processes import stop

pytestmark = pytest.mark.integration

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def make_placement(
    state_dir: Path,
    *,
    egress_port: int = 3128,
    resolver_port: int = 5353,
    ingress: tuple[int, int] | None = None,
    netns: Path | None = None,
    transparent: tuple[Endpoint, ...] = (),
) -> Placement:
    return Placement(
        state_dir=state_dir,
        egress_listen=Endpoint(LOOPBACK, egress_port, netns),
        workload_proxy=f"{LOOPBACK}:{egress_port}",
        # No dnsmasq here: the stub DNS also stands in for the fence's DNS, through which
        # Envoy's dial view resolves.
        dns_listen=Endpoint(LOOPBACK, resolver_port),
        upstream_resolver=Endpoint(LOOPBACK, resolver_port),
        ingress_listen=Endpoint(LOOPBACK, ingress[0]) if ingress else None,
        ingress_upstream=Endpoint(LOOPBACK, ingress[1]) if ingress else None,
        transparent_listen=transparent,
    )


def profile_policy(network: dict[str, object]) -> Policy:
    return compile_policy(
        parse_profile({"network": network}, "test"),
        host_addresses=[ipaddress.ip_address("192.0.2.10")],
    )


# --- validation of a range of profiles ---------------------------------------------------

PROFILES: dict[str, dict[str, object]] = {
    "deny_all": {},
    "none_mode": {"mode": "none", "outbound": {"allow_host": ["example.com"]}},
    "allow_all": {"outbound": {"insecure_allow_all": True}},
    "allow_all_custom_ports": {"outbound": {"insecure_allow_all": True, "allow_port": [8443]}},
    "wildcards": {"outbound": {"allow_host": ["*.example.com", ".example.org", "pypi.org"]}},
    "custom_ports": {"outbound": {"allow_host": ["example.com"], "allow_port": [22, 8080]}},
    "no_ports": {"outbound": {"allow_host": ["example.com"], "allow_port": []}},
    "cidrs": {
        "outbound": {
            "allow_host": ["example.com"],
            "allow_cidr": ["10.0.0.0/8", "192.168.1.0/24", "fd00::/8", "100.64.0.0/10"],
        }
    },
    "ip_literals": {"outbound": {"allow_host": ["192.0.2.1", "2001:db8::1", "[::1]"]}},
    "denied_names_allowlisted": {
        "outbound": {"allow_host": ["localhost", "*.localhost", "host.docker.internal", "a.b"]}
    },
    "inbound_hosts": {
        "outbound": {"allow_host": ["example.com"]},
        "inbound": {"allow_host": ["mcp.example.com", "*.internal.test", "10.1.2.3", "::1"]},
    },
    "thousand_hosts": {
        "outbound": {
            "allow_host": [f"host{i}.example.com" for i in range(500)]
            + [f"*.zone{i}.example.net" for i in range(500)]
        }
    },
}


@pytest.fixture(scope="module")
def proxy() -> EnvoyProxy:
    return EnvoyProxy()


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_bootstrap_validates(proxy: EnvoyProxy, tmp_path: Path, name: str) -> None:
    policy = profile_policy(PROFILES[name])
    ingress = (8080, 9090) if name in ("inbound_hosts", "deny_all") else None
    setup = proxy.setup(policy, make_placement(tmp_path / "state", ingress=ingress))
    write_setup(setup, tmp_path / "state")
    commands = proxy.validate_command(setup)
    assert len(commands) == 1
    for argv in commands:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_bootstrap_with_netns_listener_validates(proxy: EnvoyProxy, tmp_path: Path) -> None:
    # validate mode opens no sockets, so the (absent) namespace file is not touched.
    placement = make_placement(tmp_path / "state", netns=Path("/run/netns/netfence-test"))
    setup = proxy.setup(profile_policy({"outbound": {"allow_host": ["a.test"]}}), placement)
    write_setup(setup, tmp_path / "state")
    (argv,) = proxy.validate_command(setup)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-2000:]


NETNS = Path("/run/netns/netfence-test")
# Where the namespace runtime lands redirected connections: both loopbacks of the workload's
# namespace (IPv6 redirects land on ::1).
TRANSPARENT = (Endpoint(LOOPBACK, 15001, NETNS), Endpoint("::1", 15001, NETNS))


@pytest.mark.parametrize("learn", [False, True], ids=["enforce", "learn"])
@pytest.mark.parametrize("name", sorted(PROFILES))
def test_transparent_bootstrap_validates(
    proxy: EnvoyProxy, tmp_path: Path, name: str, learn: bool
) -> None:
    # Every kind of policy: allowlists with names, literals and ports, every name
    # (insecure_allow_all), learn mode (every name and port), deny-all.
    policy = compile_policy(parse_profile({"network": PROFILES[name]}, "test"),
                            host_addresses=[ipaddress.ip_address("192.0.2.10")], learn=learn)
    _validates(proxy, tmp_path, policy)


def test_transparent_bootstrap_validates_for_any_port_allowlist(
    proxy: EnvoyProxy, tmp_path: Path
) -> None:
    # Every port but not every name: no profile compiles to it, the listener handles it.
    policy = profile_policy({"outbound": {"allow_host": ["a.test", "192.0.2.1", "10.0.0.1"]}})
    _validates(proxy, tmp_path, dataclasses.replace(policy, any_port=True))


def _validates(proxy: EnvoyProxy, tmp_path: Path, policy: Policy) -> None:
    placement = make_placement(tmp_path / "state", netns=NETNS, transparent=TRANSPARENT)
    setup = proxy.setup(policy, placement)
    write_setup(setup, tmp_path / "state")
    assert '"transparent"' in _file(setup, "listeners.json").content
    (argv,) = proxy.validate_command(setup)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def _file(setup: ProxySetup, name: str) -> FileSpec:
    (found,) = [f for f in setup.files if f.path.name == name]
    return found


def _rewritten(spec: FileSpec, change: Callable[[dict[str, Any]], None]) -> None:
    body = json.loads(spec.path.read_text())
    change(body["resources"][0])
    spec.path.write_text(json.dumps(body))


def _validate(proxy: EnvoyProxy, setup: ProxySetup) -> subprocess.CompletedProcess[str]:
    (argv,) = proxy.validate_command(setup)
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_validate_rejects_a_broken_route_file(proxy: EnvoyProxy, tmp_path: Path) -> None:
    setup = proxy.setup(Policy(), make_placement(tmp_path / "state"))
    write_setup(setup, tmp_path / "state")
    # A duplicate domain across virtual hosts is exactly what allowed_domains must avoid.
    _rewritten(_file(setup, "routes-egress.json"), lambda route: route["virtual_hosts"].append(
        {"name": "dup", "domains": ["localhost"], "routes": []}))
    result = _validate(proxy, setup)
    assert result.returncode != 0 and "localhost" in result.stdout + result.stderr


def test_validate_rejects_a_broken_listener_file(proxy: EnvoyProxy, tmp_path: Path) -> None:
    # Envoy's own validate mode reads no listener file: this one would pass it.
    setup = proxy.setup(Policy(), make_placement(tmp_path / "state", netns=NETNS,
                                                 transparent=TRANSPARENT))
    write_setup(setup, tmp_path / "state")
    _rewritten(_file(setup, "listeners.json"), lambda listener: listener["address"][
        "socket_address"].update(port_value="not a port"))
    assert _validate(proxy, setup).returncode != 0


def test_validate_rejects_a_route_file_envoy_would_not_take(
    proxy: EnvoyProxy, tmp_path: Path
) -> None:
    setup = proxy.setup(Policy(), make_placement(tmp_path / "state"))
    write_setup(setup, tmp_path / "state")
    _rewritten(_file(setup, "routes-egress.json"), lambda route: route.update(name="other"))
    result = _validate(proxy, setup)
    assert result.returncode == 1 and "route configuration 'egress'" in result.stderr


# --- loopback fixtures: stub DNS, HTTP upstream, a running Envoy -------------------------


class StubDns:
    """A UDP DNS server on loopback: every A query gets 127.0.0.1; records what is asked."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self.queries: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            with contextlib.suppress(IndexError, struct.error, UnicodeDecodeError):
                self.sock.sendto(self._answer(data), peer)

    def _answer(self, query: bytes) -> bytes:
        ident, flags = struct.unpack("!HH", query[:4])
        pos, labels = 12, []
        while query[pos]:
            length = query[pos]
            labels.append(query[pos + 1 : pos + 1 + length].decode("ascii"))
            pos += 1 + length
        qtype = struct.unpack("!H", query[pos + 1 : pos + 3])[0]
        question = query[12 : pos + 5]
        self.queries.append(".".join(labels).lower())
        answer = b""
        if qtype == 1:  # A; anything else (AAAA) gets an empty NOERROR answer
            answer = struct.pack("!HHHIH", 0xC00C, 1, 1, 5, 4) + socket.inet_aton(LOOPBACK)
        header = struct.pack(
            "!HHHHHH", ident, 0x8580 | (flags & 0x0100), 1, 1 if answer else 0, 0, 0
        )
        return header + question + answer

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


class _Upstream(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"upstream saw host {self.headers.get('Host')}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def dns() -> Iterator[StubDns]:
    stub = StubDns()
    try:
        yield stub
    finally:
        stub.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), _Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=2)


def _wait_listening(port: int, proc: subprocess.Popen[bytes], stderr: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"envoy exited {proc.returncode}: {stderr.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.2):
            return
        time.sleep(0.05)
    raise AssertionError(f"envoy did not listen on {port}")


class RunningEnvoy:
    def __init__(self, proxy: EnvoyProxy, setup: ProxySetup, placement: Placement) -> None:
        self.proxy = proxy
        self.setup = setup
        self.port = placement.egress_listen.port
        self.ingress_port = placement.ingress_listen.port if placement.ingress_listen else None
        self.log = setup.decision_logs[0]

    def records(
        self, want: Callable[[DecisionRecord], bool], at_least: int = 1
    ) -> list[DecisionRecord]:
        """Decision records that satisfy `want`, waiting out the access log's flush."""
        deadline = time.monotonic() + 5
        while True:
            found: list[DecisionRecord] = []
            if self.log.exists():
                for line in self.log.read_text().splitlines():
                    record = self.proxy.parse_decision(line)
                    if record is not None and want(record):
                        found.append(record)
            if len(found) >= at_least or time.monotonic() > deadline:
                return found
            time.sleep(0.1)


@pytest.fixture
def start_envoy(
    proxy: EnvoyProxy, tmp_path: Path, dns: StubDns
) -> Iterator[Callable[..., RunningEnvoy]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(policy: Policy, ingress_upstream: int | None = None,
              transparent_port: int | None = None) -> RunningEnvoy:
        state = tmp_path / f"state{len(procs)}"
        ingress = (free_port(), ingress_upstream) if ingress_upstream else None
        transparent = (Endpoint(LOOPBACK, transparent_port),) if transparent_port else ()
        placement = make_placement(
            state, egress_port=free_port(), resolver_port=dns.port, ingress=ingress,
            transparent=transparent,
        )
        setup = proxy.setup(policy, placement)
        write_setup(setup, state)
        (spec,) = setup.processes
        with spec.stdout.open("wb") as out, spec.stderr.open("wb") as err:
            proc = subprocess.Popen(spec.argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        procs.append(proc)
        for endpoint in (*spec.ready, *transparent):
            _wait_listening(endpoint.port, proc, spec.stderr)
        return RunningEnvoy(proxy, setup, placement)

    try:
        yield start
    finally:
        stop(*procs)


def read_head(sock: socket.socket) -> tuple[int, int | None]:
    """Status and Content-Length of an HTTP/1 response, reading no byte past the head."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            break
        head += chunk
    status_line, *lines = head.decode("latin-1").split("\r\n")
    length: int | None = None
    for line in lines:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return int(status_line.split()[1]), length


def read_body(sock: socket.socket, length: int | None) -> str:
    """A body read by Content-Length (to EOF only without one).

    Reading to EOF regardless would wait out Envoy's delayed close (1 s) on local replies.
    """
    data = b""
    while length is None or len(data) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")


def read_response(sock: socket.socket) -> tuple[int, str]:
    status, length = read_head(sock)
    return status, read_body(sock, length)


def http_via(proxy_port: int, request: str) -> tuple[int, str]:
    """Send raw request text to the proxy; the status and the body of the answer."""
    with socket.create_connection((LOOPBACK, proxy_port), timeout=5) as sock:
        sock.sendall(request.encode())
        return read_response(sock)


def get_via(proxy_port: int, url_host: str, path: str = "/") -> tuple[int, str]:
    return http_via(
        proxy_port,
        f"GET http://{url_host}{path} HTTP/1.1\r\nHost: {url_host}\r\nConnection: close\r\n\r\n",
    )


def connect_via(proxy_port: int, authority: str, host_header: str) -> tuple[int, str]:
    """CONNECT (HTTP/1.0, as urllib sends it), then a GET through the tunnel if it opens."""
    with socket.create_connection((LOOPBACK, proxy_port), timeout=5) as sock:
        sock.sendall(f"CONNECT {authority} HTTP/1.0\r\n\r\n".encode())
        status, length = read_head(sock)
        if status != 200:
            return status, read_body(sock, length or 0)
        request = f"GET / HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n\r\n"
        sock.sendall(request.encode())
        return read_response(sock)


# --- traffic ----------------------------------------------------------------------------


def test_names_are_decided_before_anything_resolves_them(
    start_envoy: Callable[..., RunningEnvoy], dns: StubDns, upstream: int
) -> None:
    envoy = start_envoy(profile_policy({"outbound": {"allow_host": ["allowed.test"]}}))
    status, body = get_via(envoy.port, "blocked.test")
    assert status == 403
    assert "not_allowlisted" in body and "--allow-host" in body
    status, body = connect_via(envoy.port, "blocked.test:443", "blocked.test")
    assert status == 403 and "not_allowlisted" in body
    status, body = get_via(envoy.port, "sub.localhost")
    assert status == 403 and "denied_name" in body
    # An allowlisted name on a port outside allow_port: denied before resolution too.
    status, body = connect_via(envoy.port, "allowed.test:22", "allowed.test")
    assert status == 403 and "port_not_allowed" in body
    assert not {"blocked.test", "sub.localhost", "allowed.test"} & set(dns.queries)

    records = envoy.records(lambda r: r.host == "blocked.test" and r.method == "GET")
    assert records and records[0].reason == "not_allowlisted" and not records[0].allowed
    assert records[0].status == 403 and records[0].port == 80
    (denied,) = envoy.records(lambda r: r.host == "sub.localhost")
    assert denied.reason == "denied_name"
    (port,) = envoy.records(lambda r: r.host == "allowed.test")
    assert port.reason == "port_not_allowed" and port.port == 22


# Authorities the policy cannot read as a host: each would match `*.wild.test`, a denied
# name or the catch-all, and the stub DNS answers anything (with 127.0.0.1): a check that
# let one through would show as a query and a loopback_address denial.
INVALID_HOSTS = ("-x.wild.test", "x-.wild.test", "x" * 64 + ".wild.test", "a..wild.test",
                 ".".join(["x" * 62] * 4) + ".wild.test", "-x.localhost", "-x.other.test")


@pytest.mark.parametrize("network", [
    {"outbound": {"allow_host": ["allowed.test", "*.wild.test"]}},
    {"outbound": {"insecure_allow_all": True}},
], ids=["wildcard", "allow_all"])
def test_invalid_hosts_are_refused_before_anything_resolves_them(
    start_envoy: Callable[..., RunningEnvoy], dns: StubDns, network: dict[str, Any]
) -> None:
    # The transparent port must be an allowed one, or port_not_allowed would not tell.
    port = free_port()
    outbound = {**network["outbound"], "allow_port": [80, 443, port]}
    envoy = start_envoy(profile_policy({"outbound": outbound}), transparent_port=port)
    dns.queries.clear()
    plain = "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n"
    for host in INVALID_HOSTS:
        for via, request, authority in (
            (envoy.port, plain.format(f"http://{host}/", host), host),
            (envoy.port, f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n",
             f"{host}:443"),
            (port, plain.format("/", host), host),  # transparent, by the Host header
        ):
            status, body = http_via(via, request)
            assert (status, body) == (403, f"netfence: denied {authority}: invalid_host\n"), (
                request)
    # Another scheme is refused as such first, as it was when the check was routes.
    status, body = http_via(envoy.port, plain.format("https://-x.wild.test/", "-x.wild.test"))
    assert status == 403 and "unsupported_request" in body
    # A valid name under the wildcard still resolves: the stub DNS does answer.
    status, body = http_via(port, plain.format("/", "ok.wild.test"))
    assert status == 403 and "loopback_address" in body
    records = envoy.records(lambda r: r.host != "ok.wild.test", at_least=3 * len(INVALID_HOSTS) + 1)
    got = [(r.host, r.reason, r.status, r.allowed, r.upstream_ip) for r in records
           if r.reason != "unsupported_request"]
    assert sorted(got) == sorted(
        (h, "invalid_host", 403, False, None) for h in INVALID_HOSTS for _ in range(3)), got
    assert "ok.wild.test" in dns.queries
    assert not {q for q in dns.queries if q != "ok.wild.test"}, dns.queries


def test_dialed_loopback_address_is_denied(
    start_envoy: Callable[..., RunningEnvoy], dns: StubDns, upstream: int
) -> None:
    # Allowed by name and port, but the address actually dialed is loopback; allow_cidr
    # cannot lift loopback. 127.0.0.2 plays the host's own address.
    profile = parse_profile(
        {
            "network": {
                "outbound": {
                    "allow_host": ["127.0.0.1", "127.0.0.2", "::1", "rebind.test"],
                    "allow_port": [upstream],
                    "allow_cidr": ["127.0.0.0/8"],
                }
            }
        },
        "test",
    )
    policy = compile_policy(profile, host_addresses=[ipaddress.ip_address("127.0.0.2")])
    envoy = start_envoy(policy)
    status, body = get_via(envoy.port, f"127.0.0.1:{upstream}")
    assert status == 403 and "loopback_address" in body
    status, body = connect_via(envoy.port, f"127.0.0.1:{upstream}", "127.0.0.1")
    assert status == 403 and "loopback_address" in body
    status, body = connect_via(envoy.port, f"[::1]:{upstream}", "[::1]")
    assert status == 403 and "loopback_address" in body
    # A name that resolves to loopback (DNS rebinding) is caught at the same stage, on the
    # first lookup and again when the answer comes from the DFP's cache.
    for _ in range(2):
        status, body = get_via(envoy.port, f"rebind.test:{upstream}")
        assert status == 403 and "loopback_address" in body
    assert "rebind.test" in dns.queries
    # A host address inside loopback keeps the precise reason (host_address proper is
    # covered with a real host address in test_namespace_run).
    status, body = get_via(envoy.port, f"127.0.0.2:{upstream}")
    assert status == 403 and "loopback_address" in body

    loopback = ("127.0.0.1", "::1", "rebind.test")
    records = envoy.records(lambda r: r.host in loopback, at_least=5)
    assert len(records) == 5
    for record in records:
        assert record.reason == "loopback_address" and not record.allowed
        assert record.status == 403 and record.port == upstream
    (host,) = envoy.records(lambda r: r.host == "127.0.0.2")
    assert host.reason == "loopback_address" and host.upstream_ip is None
    # Envoy agrees with the reference decision.
    for record in [*records, host]:
        dialed = LOOPBACK if record.host == "rebind.test" else record.host
        assert policy.decide(record.host, upstream, dialed).reason == record.reason


def test_allowed_requests_are_proxied(
    start_envoy: Callable[..., RunningEnvoy], dns: StubDns, upstream: int
) -> None:
    # A fake for this test only: no denied ranges, so loopback stands in for the internet.
    policy = Policy(
        hosts=(parse_host_pattern("*.upstream.test"), parse_host_pattern("127.0.0.1")),
        ports=(upstream,),
        denied=(),
    )
    envoy = start_envoy(policy)
    status, body = get_via(envoy.port, f"api.upstream.test:{upstream}")
    assert status == 200 and "upstream saw host api.upstream.test" in body
    # Names match case-insensitively and with a trailing dot, as Policy.decide's do.
    status, body = get_via(envoy.port, f"API.Upstream.Test.:{upstream}")
    assert status == 200
    status, body = connect_via(envoy.port, f"upstream.test:{upstream}", "tunnelled.test")
    assert status == 200 and "upstream saw host tunnelled.test" in body
    status, body = connect_via(envoy.port, f"127.0.0.1:{upstream}", "literal.test")
    assert status == 200 and "upstream saw host literal.test" in body
    status, body = get_via(envoy.port, "upstream.test:1")
    assert status == 403 and "port_not_allowed" in body
    # A stock client configured with the proxy, as a workload would be.
    proxies = urllib.request.ProxyHandler({"http": f"http://{LOOPBACK}:{envoy.port}"})
    opener = urllib.request.build_opener(proxies)
    with opener.open(f"http://www.upstream.test:{upstream}/", timeout=5) as response:
        assert response.status == 200
        assert b"upstream saw host www.upstream.test" in response.read()

    records = envoy.records(lambda r: r.allowed and r.method == "CONNECT", at_least=2)
    # flush_log_on_tunnel_successfully_established: Envoy writes a line when a tunnel
    # opens and one when it ends; the decision log counts the tunnel once, at its end.
    assert len(records) == 2
    opened = [line for line in envoy.log.read_text().splitlines()
              if json.loads(line).get("type") == TUNNEL_ESTABLISHED_LOG_TYPE]
    assert len(opened) == 2
    assert all(r.reason == "allowed" and r.upstream_ip == "127.0.0.1" for r in records)
    get, upper = envoy.records(lambda r: r.host == "api.upstream.test", at_least=2)
    assert get.allowed and get.status == 200 and get.port == upstream and get.bytes_down > 0

    # The same decision for the upper-case, trailing-dot spelling of the name.
    def key(r: DecisionRecord) -> tuple[object, ...]:
        return (r.host, r.port, r.reason, r.upstream_ip)

    assert key(upper) == key(get)


def test_ingress_gates_on_host(start_envoy: Callable[..., RunningEnvoy], upstream: int) -> None:
    envoy = start_envoy(Policy(), ingress_upstream=upstream)
    assert envoy.ingress_port is not None
    req = "GET /mcp HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n"
    status, body = http_via(envoy.ingress_port, req.format(f"localhost:{envoy.ingress_port}"))
    assert status == 200 and "upstream saw host" in body
    status, _ = http_via(envoy.ingress_port, req.format("[::1]"))
    assert status == 200
    status, body = http_via(envoy.ingress_port, req.format("evil.example"))
    assert status == 403 and "inbound" in body


def test_ingress_reaches_an_upstream_by_name(tmp_path: Path, proxy: EnvoyProxy,
                                            dns: StubDns, upstream: int) -> None:
    # A cluster's Service name (the kubernetes target's placement): resolved at the
    # upstream resolver, here the stub that answers 127.0.0.1.
    state = tmp_path / "state"
    placement = dataclasses.replace(
        make_placement(state, egress_port=free_port(), resolver_port=dns.port,
                       ingress=(free_port(), upstream)),
        ingress_upstream=Endpoint("web.default.svc.cluster.local", upstream))
    setup = proxy.setup(Policy(), placement)
    write_setup(setup, state)
    (spec,) = setup.processes
    assert placement.ingress_listen is not None
    with spec.stdout.open("wb") as out, spec.stderr.open("wb") as err:
        proc = subprocess.Popen(spec.argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    try:
        _wait_listening(placement.ingress_listen.port, proc, spec.stderr)
        req = "GET /mcp HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        deadline = time.monotonic() + 10  # the first resolution may still be under way
        while True:
            status, body = http_via(placement.ingress_listen.port, req)
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert status == 200 and "upstream saw host" in body
        assert "web.default.svc.cluster.local" in dns.queries
    finally:
        proc.terminate()
        proc.wait(10)


def test_two_envoys_run_side_by_side(
    start_envoy: Callable[..., RunningEnvoy], upstream: int
) -> None:
    first, second = start_envoy(Policy()), start_envoy(Policy())
    for envoy in (first, second):
        status, body = get_via(envoy.port, "example.test")
        assert status == 403 and "not_allowlisted" in body
        admin = envoy.setup.files[0].path.parent / "envoy-admin.sock"
        assert admin.is_socket() and (admin.stat().st_mode & 0o777) == 0o600


def tls_refused(port: int, sni: str | None) -> None:
    """A TLS handshake to a loopback port that the fence closes without a byte."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((LOOPBACK, port), timeout=5) as sock, \
            pytest.raises((ssl.SSLError, ConnectionError)):
        context.wrap_socket(sock, server_hostname=sni)


def test_transparent_listener_decides_by_the_name_carried(
    start_envoy: Callable[..., RunningEnvoy], dns: StubDns
) -> None:
    # Connections straight to the listener: their original destination is the listener's
    # own address (127.0.0.1:port, an address no name or literal may reach), the port one
    # the policy allows. The traffic the redirect brings is the namespace runtime's test.
    port = free_port()
    policy = profile_policy({"outbound": {"allow_host": ["allowed.test"], "allow_port": [port]}})
    envoy = start_envoy(policy, transparent_port=port)
    request = "GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n"
    status, body = http_via(port, request.format("other.test"))
    assert status == 403 and body.endswith("--allow-host other.test\n"), body
    status, body = http_via(port, request.format("allowed.test:1"))
    assert status == 403 and "invalid_host" in body
    status, body = http_via(port, request.format("allowed.test"))  # resolves to 127.0.0.1
    assert status == 403 and "loopback_address 127.0.0.0/8" in body
    for sni in ("other.test", "allowed.test", None):
        tls_refused(port, sni)
    with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
        sock.sendall(b"SSH-2.0-netfence-test\r\n")
        # Closed unread: a reset.
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(100) == b""
    assert "other.test" not in dns.queries  # the name first, before anything resolves

    # Every decision is one line of the one decision log, marked transparent.
    records = envoy.records(lambda r: r.transparent, at_least=7)
    got = sorted((r.method, r.host, r.port, r.reason, r.address) for r in records)
    assert got == sorted([
        ("GET", "other.test", port, "not_allowlisted", None),
        ("GET", "allowed.test", port, "invalid_host", None),
        ("GET", "allowed.test", port, "loopback_address", "127.0.0.0/8"),
        ("TLS", "other.test", port, "not_allowlisted", None),
        ("TLS", "allowed.test", port, "loopback_address", "127.0.0.0/8"),
        ("TLS", LOOPBACK, port, "not_allowlisted", None),
        ("TCP", LOOPBACK, port, "not_allowlisted", None),
    ]), got
    assert all(not r.allowed and r.upstream_ip is None for r in records)
