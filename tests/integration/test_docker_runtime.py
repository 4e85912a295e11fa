"""`netfence run --runtime docker` end to end on real engines, Podman (its Docker API) and
Docker Engine, both up for the whole session: real Envoy, Squid and dnsmasq in containers
built from this host's binaries, a workload image built the same way, the simulated
internet reached through the engine's NAT. A case runs for each engine and backend whose
code it reaches (below, `EACH_ONCE` and `only`)."""

from __future__ import annotations

import concurrent.futures
import ipaddress
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from netfence.runtimes import state
from netfence.runtimes.docker.networks import (
    EXTERNAL_NETWORK,
    INTERNAL_POOL,
    bridge_carrying,
    internal_network_name,
)
from tests.support.clients import DNS_ASK, NODE_GET
from tests.support.dockerd import ENGINES
from tests.support.fakenet import FakeNet
from tests.support.fakenet_server import UNASSIGNED_PRIVATE
from tests.support.fence import BACKENDS, leftovers, netfence_argv, nothing_new
from tests.support.ingress import ECHO_BODY, echo_server, get, get_when_up
from tests.support.podman import TEST_PREFIX, WORKLOAD_CA, Engine
from tests.support.processes import stop

pytestmark = pytest.mark.integration

# What this file adds to the backends' own tests (tests/conformance, tests/unit) is
# placement: containers, networks, addresses, DNS, rules, ingress, teardown. The runtime's
# path differs by backend for the transparent path (Envoy's redirect, Squid's reset), the
# egress image, its capabilities and file owners, Squid's separate ingress container; by
# engine for addresses, DNS, routes and FORWARD rules, the bridges, ports, labels and
# capabilities as reported, attach, error texts. A case that reaches both runs for each
# backend and on each engine once (EACH_ONCE: Envoy on Docker Engine, whose rules the
# transparent path crosses); one that reaches only an engine's code, on each engine with
# Envoy; a case that checks one backend's decisions, or nothing a backend or an engine
# changes, runs once.
PODMAN_ONLY = pytest.mark.parametrize("engine", ["podman"], indirect=True)


def only(*cases: str) -> pytest.MarkDecorator:
    """Just these engine-backend pairs, as "podman-envoy"."""
    pairs = [tuple(case.split("-")) for case in cases]
    assert all(e in ENGINES and p in BACKENDS for e, p in pairs), cases
    return pytest.mark.parametrize(("engine", "proxy"), pairs, indirect=True)


# Each backend once and each engine once.
EACH_ONCE = only("podman-squid", "dockerd-envoy")
# Placement only (no backend's code path of its own): Envoy, on each engine.
ENVOY_ON_BOTH = only("podman-envoy", "dockerd-envoy")

STATE_ROOT = state.STATE_ROOT


@pytest.fixture(autouse=True)
def nothing_left_behind(engine: Engine) -> Iterator[None]:
    with nothing_new(lambda: [*leftovers(), *engine.managed()]):
        yield


def new_name() -> str:
    return TEST_PREFIX + secrets.token_hex(4)


def nf(engine: Engine, *args: str, input: bytes | None = None, timeout: float = 90,
       **env: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(netfence_argv(*args), input=input, capture_output=True,
                          timeout=timeout, env=engine.env(**env))


def fenced(engine: Engine, proxy: str, net_args: list[str], *command: str,
           allow: tuple[str, ...] = (), extra: tuple[str, ...] = (), name: str | None = None,
           input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    args = ["run", "--proxy", proxy, *net_args, "--name", name or new_name(), *extra]
    for host in allow:
        args += ["--allow-host", host]
    return nf(engine, *args, "--", engine.workload_image, *command, input=input)


def script(engine: Engine, proxy: str, net_args: list[str], text: str,
           allow: tuple[str, ...] = (), extra: tuple[str, ...] = ()) -> str:
    """Run a shell script in the fenced workload; its stdout (stderr on failure)."""
    done = fenced(engine, proxy, net_args, "sh", "-c", text, allow=allow, extra=extra)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.decode()


def status_lines(*urls: str, flags: str = "") -> str:
    """A script printing `URL STATUS BODY` per URL (curl through the proxy env)."""
    return "".join(
        f"printf '%s ' {u}; curl -sS -m 10 {flags} -w ' %{{http_code}}\\n' {u} | tr -d '\\n';"
        " echo;" for u in urls)


def parse_status(out: str) -> dict[str, str]:
    """URL -> `STATUS body` from status_lines output."""
    result: dict[str, str] = {}
    for line in out.splitlines():
        url, _, rest = line.partition(" ")
        if url.startswith("http"):
            body, _, code = rest.rpartition(" ")
            result[url] = f"{code} {body}"
    return result


# --- the egress matrix --------------------------------------------------------------------


class TestEgressMatrix:
    @EACH_ONCE
    def test_allowed_http_and_https(self, engine: Engine, proxy: str,
                                    net_args: list[str]) -> None:
        out = script(engine, proxy, net_args,
                     "curl -sS -m 10 http://allowed.test/hello; "
                     f"curl -sS -m 10 --cacert {WORKLOAD_CA} https://www.allowed.test/tls",
                     allow=(".allowed.test",))
        assert "fakenet ok host=allowed.test path=/hello" in out
        assert "fakenet ok host=www.allowed.test path=/tls" in out

    @only("podman-envoy")
    def test_not_allowlisted_gets_403_and_connect_is_refused(
            self, engine: Engine, proxy: str, net_args: list[str]) -> None:
        out = script(engine, proxy, net_args,
                     status_lines("http://other.test/") +
                     f"curl -sS -m 10 --cacert {WORKLOAD_CA} https://other.test/; "
                     "echo connect_rc=$?", allow=("allowed.test",))
        assert parse_status(out)["http://other.test/"].startswith("403 "), out
        assert "not_allowlisted" in out
        assert "fakenet ok" not in out and "connect_rc=0" not in out, out

    @PODMAN_ONLY
    def test_names_resolving_to_denied_addresses(self, engine: Engine, proxy: str,
                                                 net_args: list[str]) -> None:
        cases = {"hostaddr.test": "host_address", "loopback.test": "loopback_address",
                 "metadata.test": "link_local_address", "private.test": "private_address"}
        urls = [f"http://{host}/" for host in cases]
        out = parse_status(script(engine, proxy, net_args, status_lines(*urls),
                                  allow=tuple(cases)))
        for host, reason in cases.items():
            got = out[f"http://{host}/"]
            assert got.startswith("403 ") and reason in got, (host, got)

    @only("podman-envoy")
    def test_host_names_and_port_denied(self, engine: Engine, proxy: str,
                                        net_args: list[str]) -> None:
        urls = ("http://localhost/", "http://host.containers.internal/",
                "http://host.docker.internal/")
        # NO_PROXY exempts localhost; --noproxy "" sends it to the fence all the same.
        out = parse_status(script(engine, proxy, net_args,
                                  status_lines(*urls, flags="--noproxy ''") +
                                  status_lines("http://allowed.test:8080/"),
                                  extra=("--profile", "network")))
        for url in urls:
            assert out[url].startswith("403 ") and "denied_name" in out[url], (url, out)
        assert "port_not_allowed" in out["http://allowed.test:8080/"], out

    @ENVOY_ON_BOTH
    def test_gateways_and_host_addresses_denied(self, engine: Engine, proxy: str,
                                                net_args: list[str], fakenet: FakeNet) -> None:
        # A first workload keeps the external network up, so its gateway is known.
        holder = new_name()
        started = fenced(engine, proxy, net_args, "sleep", "60", name=holder,
                         extra=("--detach",))
        assert started.returncode == 0, started.stderr
        try:
            external = engine.client.networks.get(EXTERNAL_NETWORK)
            ext_gateway = external.attrs["IPAM"]["Config"][0]["Gateway"]
            # Another workload's fence, on the shared external network: never reachable,
            # whatever --allow-cidr says.
            neighbour = engine.client.containers.get(f"{holder}-dns").attrs[
                "NetworkSettings"]["Networks"][EXTERNAL_NETWORK]["IPAddress"]
            # The workload's own internal gateway: the first address of its subnet (Podman
            # gives each network a /24).
            text = (
                "gw=$(python3 -c \"import socket, ipaddress; a = socket.gethostbyname("
                "socket.gethostname()); print(ipaddress.ip_interface(a + '/24').network[1])\");"
                f" for u in http://$gw/ http://{ext_gateway}/ http://{fakenet.host_ip}/"
                f" http://{neighbour}/; do "
                "printf '%s ' $u; curl -sS -m 10 -w ' %{http_code}' $u | tr -d '\\n'; echo;"
                " done")
            # Lift every private range: the gateways must be denied as host addresses.
            extra = ("--allow-cidr", "10.0.0.0/8", "--allow-cidr", "172.16.0.0/12",
                     "--allow-cidr", "192.168.0.0/16", "--profile", "network")
            out = parse_status(script(engine, proxy, net_args, text, extra=extra))
        finally:
            nf(engine, "stop", holder)
        assert len(out) == 4, out
        for url, got in out.items():
            assert got.startswith("403 ") and "host_address" in got, (url, got)

    @EACH_ONCE
    def test_direct_connections_reach_only_the_fence(self, engine: Engine, proxy: str,
                                                     net_args: list[str],
                                                     fakenet: FakeNet) -> None:
        # A host service on every address: the workload must not reach it through the
        # internal network's bridge (its host address is removed) nor any other way. With
        # Envoy a direct connection lands at the fence, which answers by the Host it names
        # (here an address not allowlisted: 403); with Squid it is reset.
        with socket.create_server(("0.0.0.0", 0)) as listener:
            port = listener.getsockname()[1]
            code = (
                "import socket, ipaddress\n"
                "me = socket.gethostbyname(socket.gethostname())\n"
                "gw = str(ipaddress.ip_interface(me + '/24').network[1])\n"
                f"for host, port in [('{fakenet.dns}', 80), (gw, {port}), (gw, 22)]:\n"
                "    try:\n"
                "        s = socket.create_connection((host, port), 3)\n"
                "        s.settimeout(10)\n"
                "        s.sendall(b'GET / HTTP/1.1\\r\\nHost: ' + host.encode() +\n"
                "                  b'\\r\\nConnection: close\\r\\n\\r\\n')\n"
                "        print('answered', host, port, s.recv(200).split(b' ')[:2])\n"
                "    except OSError as e:\n"
                "        print('refused', host, port, e.errno)\n")
            out = script(engine, proxy, net_args, f"python3 -c \"{code}\"; "
                         "curl -sS -m 5 --noproxy '*' http://allowed.test/; echo curl_rc=$?",
                         allow=("allowed.test",))
            listener.setblocking(False)
            with pytest.raises(BlockingIOError):
                listener.accept()  # never reached
        lines = [line for line in out.splitlines() if line.startswith(("answered", "refused"))]
        assert len(lines) == 3, out
        for line in lines:
            if proxy == "envoy":
                assert line.startswith("refused") or "b'403'" in line, out
            else:
                assert line.startswith("refused"), out
        # An allowed name dialed directly: through the fence with Envoy, nowhere with Squid.
        if proxy == "envoy":
            assert "fakenet ok host=allowed.test" in out and "curl_rc=0" in out, out
        else:
            assert "fakenet ok" not in out and "curl_rc=0" not in out, out

    @ENVOY_ON_BOTH
    def test_dns_answers_allowed_names_only(self, engine: Engine, proxy: str,
                                            net_args: list[str], fakenet: FakeNet) -> None:
        fakenet.clear_queries()
        out = script(engine, proxy, net_args,
                     "getent hosts allowed.test; echo rc=$?; getent hosts denied.test; "
                     "echo rc=$?", allow=("allowed.test",))
        assert "10.203.0.2" in out and "allowed.test" in out, out
        assert out.strip().endswith("rc=2"), out
        asked = {name.rstrip(".").lower() for name, _ in fakenet.queries()}
        assert "denied.test" not in asked and "allowed.test" in asked, asked


# --- programs that ignore the proxy variables ---------------------------------------------

# The environment of a workload running tests/support/clients.py's programs: the scripts
# themselves and the test CA for Node.
CLIENT_ENV = ("--env", f"NODE_GET={NODE_GET}", "--env", f"DNS_ASK={DNS_ASK}",
              "--env", f"NODE_EXTRA_CA_CERTS={WORKLOAD_CA}")
PYTHON_GET = ("import sys, urllib.request\n"
              "opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))\n"
              "with opener.open(sys.argv[1], timeout=10) as r:\n"
              " print('python', r.status, r.headers['X-Fakenet-Server'])")


def node_calls(engine: Engine, net_args: list[str],
               *calls: tuple[str, str, dict[str, object]],
               allow: tuple[str, ...] = ("allowed.test",)) -> list[dict[str, object]]:
    """Node's fetch / http / https in one Envoy-fenced workload: one result per call."""
    text = "".join(f'node -e "$NODE_GET" {kind} {shlex.quote(url)} '
                   f"{shlex.quote(json.dumps(options))}; " for kind, url, options in calls)
    out = script(engine, "envoy", net_args, text, allow=allow, extra=CLIENT_ENV)
    results = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(results) == len(calls), out
    return results


class TestTransparent:
    """With Envoy, the workload's connections to anything but its fence land at the egress
    container's transparent listener and are decided by the name they carry, never by the
    address dialed; DNS to any address is the fence's; other UDP is refused."""

    def test_node_reaches_an_allowed_host(self, engine: Engine, net_args: list[str]) -> None:
        if not shutil.which("node"):
            pytest.skip("node is not installed on this host (the workload image takes it)")
        got = node_calls(engine, net_args, ("fetch", "http://allowed.test/", {}),
                         ("fetch", "https://www.allowed.test/", {}),
                         ("http", "http://allowed.test/", {}),
                         ("https", "https://allowed.test/", {}), allow=(".allowed.test",))
        for result, server in zip(got, ("10.203.0.2:80", "10.203.0.2:443", "10.203.0.2:80",
                                        "10.203.0.2:443"), strict=True):
            assert result.get("status") == 200 and result.get("server") == server, got
        assert "host=allowed.test" in str(got[0].get("body")), got

    @PODMAN_ONLY
    def test_clients_with_their_proxy_turned_off(self, engine: Engine,
                                                 net_args: list[str]) -> None:
        text = "".join(
            f"curl -sS -m 10 --noproxy '*' --cacert {WORKLOAD_CA} -o /dev/null "
            f"-w 'curl %{{http_code}} %{{remote_ip}}\\n' {url}; "
            f"SSL_CERT_FILE={WORKLOAD_CA} python3 -c {shlex.quote(PYTHON_GET)} {url}; "
            for url in ("http://allowed.test/", "https://allowed.test/"))
        out = script(engine, "envoy", net_args, text, allow=("allowed.test",))
        # curl dialed the address it resolved; the fence answered there for the name.
        assert out.splitlines() == ["curl 200 10.203.0.2", "python 200 10.203.0.2:80",
                                    "curl 200 10.203.0.2", "python 200 10.203.0.2:443"], out

    # Envoy's decision by name. That connections to foreign addresses cross Docker
    # Engine's rules to the egress is test_node_reaches_an_allowed_host[dockerd]: the rule
    # letting them (DOCKER-USER) takes the internal bridge's traffic by interface, whatever
    # address was dialed.
    @PODMAN_ONLY
    def test_the_name_decides_not_the_address_dialed(self, engine: Engine,
                                                     net_args: list[str]) -> None:
        if not shutil.which("node"):
            pytest.skip("node is not installed on this host (the workload image takes it)")
        got = node_calls(
            engine, net_args,
            # The allowed name sent to another host's address, and to an address where
            # nothing runs: it reaches the allowed host, never the address dialed.
            ("http", "http://10.203.0.4/", {"headers": {"Host": "allowed.test"}}),
            ("https", f"https://{UNASSIGNED_PRIVATE}/",
             {"servername": "allowed.test", "headers": {"Host": "allowed.test"}}),
            # A name that is not allowed, sent to the allowed host's address.
            ("http", "http://10.203.0.2/", {"headers": {"Host": "denied.test"}}),
            ("https", "https://10.203.0.2/",
             {"servername": "denied.test", "rejectUnauthorized": False}),
        )
        assert got[0].get("status") == 200 and got[0].get("server") == "10.203.0.2:80", got
        assert got[1].get("status") == 200 and got[1].get("server") == "10.203.0.2:443", got
        assert got[2].get("status") == 403 and "not_allowlisted" in str(got[2].get("body")), got
        assert "error" in got[3], got

    @PODMAN_ONLY
    def test_everything_else_is_refused(self, engine: Engine, net_args: list[str],
                                        fakenet: FakeNet) -> None:
        if not shutil.which("node"):
            pytest.skip("node is not installed on this host (the workload image takes it)")
        fakenet.clear_queries()
        got = node_calls(engine, net_args, ("fetch", "http://other.test/", {}),
                         ("http", "http://10.203.0.2/", {"headers": {"Host": "loopback.test"}}),
                         ("http", "http://allowed.test:8080/", {}),
                         ("fetch", "http://loopback.test/", {}),
                         allow=("allowed.test", "loopback.test"))
        # Not allowlisted: the fence's DNS does not even answer the name; nor an allowed
        # name whose address is denied, which the fence itself refuses to dial (a Host).
        assert got[0] == {"error": "ENOTFOUND"} and got[3] == {"error": "ENOTFOUND"}, got
        assert got[1].get("status") == 403 and "loopback_address" in str(got[1].get("body")), got
        assert got[2].get("status") == 403 and "port_not_allowed" in str(got[2].get("body")), got
        assert "other.test" not in {name for name, _ in fakenet.queries()}

    @EACH_ONCE
    def test_dns_to_any_address_is_the_fences(self, engine: Engine, proxy: str,
                                              net_args: list[str], fakenet: FakeNet) -> None:
        # A program with a resolver of its own, asking an address where no DNS server
        # runs: the fence answers, with the same allowlist (Squid's fence too).
        fakenet.clear_queries()
        out = script(engine, proxy, net_args,
                     f'python3 -c "$DNS_ASK" {UNASSIGNED_PRIVATE} allowed.test denied.test',
                     allow=("allowed.test",), extra=CLIENT_ENV)
        lines = out.splitlines()
        assert "allowed.test udp 0 ['10.203.0.2']" in lines, out
        assert "allowed.test tcp 0 ['10.203.0.2']" in lines, out
        denied = [line for line in lines if line.startswith("denied.test")]
        assert len(denied) == 2 and all(line.endswith("[]") for line in denied), out
        assert "denied.test" not in {name for name, _ in fakenet.queries()}

    @only("podman-envoy")
    def test_other_udp_is_refused_at_once(self, engine: Engine, proxy: str,
                                          net_args: list[str]) -> None:
        code = ("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                "try:\n"
                f" s.sendto(b'quic?', ('{UNASSIGNED_PRIVATE}', 443))\n"
                " print('sent')\nexcept OSError as e:\n print('refused', e.errno)")
        out = script(engine, proxy, net_args, f"python3 -c {shlex.quote(code)}")
        assert out.startswith("refused"), out

    @PODMAN_ONLY
    def test_squid_says_programs_ignoring_the_proxy_cannot_connect(
            self, engine: Engine, net_args: list[str]) -> None:
        done = fenced(engine, "squid", net_args, "sh", "-c",
                      "curl -sS -m 10 --noproxy '*' http://allowed.test/; echo rc=$?; "
                      "curl -sS -m 10 http://allowed.test/", allow=("allowed.test",))
        out = done.stdout.decode()
        assert out.count("fakenet ok") == 1 and "rc=0" not in out, out
        notes = [line for line in done.stderr.decode().splitlines() if "transparent" in line]
        assert len(notes) == 1 and "--proxy envoy" in notes[0], done.stderr


# --- ingress, stdio, lifecycle ------------------------------------------------------------


# Each backend's ingress (Envoy's in the egress container, Squid's container of its own) and
# each engine's port publishing (one line for every backend: 127.0.0.1 only). The other two
# pairs' ingress is reached by test_mcp_e2e.py's TestContainerRuntime.test_streamable_http.
@only("podman-envoy", "dockerd-squid")
def test_ingress_reaches_an_http_workload(engine: Engine, proxy: str,
                                          net_args: list[str]) -> None:
    proc = subprocess.Popen(
        netfence_argv("run", "--proxy", proxy, *net_args, "--name", new_name(),
                      "--transport", "streamable-http", "--target-port", "8000", "--",
                      engine.workload_image, "python3", "-c", echo_server("0.0.0.0", 8000)),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=engine.env())
    try:
        assert proc.stderr is not None
        url = ""
        deadline = time.monotonic() + 60
        while not url and time.monotonic() < deadline:
            line = proc.stderr.readline().decode()
            if not line and proc.poll() is not None:
                break
            if "clients connect to " in line:
                url = line.split("clients connect to ")[1].strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/mcp"), url
        base = url.removesuffix("/mcp")
        status, body = get_when_up(f"{base}/index.html", timeout=30)
        assert status == 200 and body == ECHO_BODY, (status, body)
        assert get(f"{base}/index.html", host="evil.example")[0] == 403
        # Published on loopback only: not on the host's other addresses.
        port = int(base.rsplit(":", 1)[1])
        with socket.socket() as probe:
            probe.settimeout(2)
            assert probe.connect_ex(("10.203.0.1", port)) != 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)


@only("podman-squid")
def test_detached_http_workload_is_up_when_run_returns(engine: Engine, proxy: str,
                                                       net_args: list[str]) -> None:
    """`run --detach` returns once the workload and its ingress are up, with the URL."""
    name = new_name()
    started = nf(engine, "run", "--proxy", proxy, *net_args, "--name", name, "--detach",
                 "--transport", "streamable-http", "--target-port", "8000", "--",
                 engine.workload_image, "python3", "-c", echo_server("0.0.0.0", 8000))
    try:
        assert started.returncode == 0, started.stderr
        err = started.stderr.decode()
        assert f"{name}: clients connect to http://127.0.0.1:" in err, err
        base = err.split("clients connect to ", 1)[1].split()[0].removesuffix("/mcp")
        status, body = get_when_up(f"{base}/index.html", timeout=30)
        assert status == 200 and body == ECHO_BODY, (status, body)
    finally:
        stopped = nf(engine, "stop", name)
    assert stopped.returncode == 0, stopped.stderr


@ENVOY_ON_BOTH
def test_stdio_passthrough_is_byte_exact(engine: Engine, proxy: str,
                                         net_args: list[str]) -> None:
    import os

    data = os.urandom(1 << 20) + bytes(range(256))
    done = fenced(engine, proxy, net_args, "cat", input=data)
    assert done.returncode == 0, done.stderr
    assert done.stdout == data
    # netfence's own words go to stderr only; the exit status is the workload's.
    done = fenced(engine, proxy, net_args, "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (done.stdout, done.returncode) == (b"out\n", 7), done
    assert b"err\n" in done.stderr


@EACH_ONCE
def test_detach_ps_logs_stop(engine: Engine, proxy: str, net_args: list[str]) -> None:
    name = new_name()
    started = fenced(engine, proxy, net_args, "sh", "-c",
                     "curl -s -m 5 http://allowed.test/ >/dev/null; "
                     "curl -s -m 5 --noproxy '*' http://allowed.test/ >/dev/null; "
                     "curl -s -m 5 http://other.test/ >/dev/null; exec sleep 60",
                     allow=("allowed.test",), name=name, extra=("--detach",))
    assert started.returncode == 0, started.stderr
    # Without NETFENCE_RUNTIME (as a user types them) ps, logs and stop find the workload
    # by what its supervisor recorded; `ps` with it asks the engine.
    plain = {"NETFENCE_RUNTIME": ""}
    try:
        for env in (plain, {}):
            listed = nf(engine, "ps", "--json", **env).stdout.decode()
            assert name in listed, (env, listed)
        # Labels on everything it owns.
        owned = engine.client.containers.list(
            all=True, filters={"label": f"io.netfence.workload={name}"})
        roles = {c.labels["io.netfence.role"] for c in owned}
        assert roles == {"workload", "net", "dns", "egress"}, roles
        # Every capability dropped but the few each fence process needs; none for the
        # workload and the holder of its network.
        wanted = {"workload": set(), "net": set(),
                  "dns": {"NET_BIND_SERVICE", "SETUID", "SETGID"},
                  "egress": {"NET_BIND_SERVICE"} if proxy == "envoy" else
                  {"CHOWN", "DAC_OVERRIDE", "SETUID", "SETGID", "NET_BIND_SERVICE"}}
        def caps(container: Any, key: str) -> set[str]:
            return {c.removeprefix("CAP_") for c in container.attrs["HostConfig"][key] or []}

        by_role = {c.labels["io.netfence.role"]: c for c in owned}
        # Podman reports its default set minus what it dropped (the workload drops it all);
        # Docker reports ALL dropped plus what it added.
        default = caps(by_role["workload"], "CapDrop")
        for role, container in by_role.items():
            dropped = caps(container, "CapDrop")
            kept = caps(container, "CapAdd") | (set() if "ALL" in dropped else default - dropped)
            assert kept == wanted[role], (role, container.attrs["HostConfig"])
        # The workload is in its holder's network namespace; the holder, read-only and
        # without privileges, is on the internal network alone.
        holder = by_role["net"].attrs
        assert by_role["workload"].attrs["HostConfig"]["NetworkMode"] == \
            f"container:{holder['Id']}"
        assert holder["HostConfig"]["ReadonlyRootfs"] is True
        assert any("no-new-privileges" in opt for opt in holder["HostConfig"]["SecurityOpt"])
        assert set(holder["NetworkSettings"]["Networks"]) == {internal_network_name(name)}
        internal = engine.client.networks.get(internal_network_name(name)).attrs
        assert internal["Labels"]["io.netfence.workload"] == name
        # A subnet of ours, given at creation (Docker Engine needs one for fixed addresses).
        subnet = ipaddress.ip_network(internal["IPAM"]["Config"][0]["Subnet"])
        assert subnet.subnet_of(INTERNAL_POOL), subnet
        # Where Docker's chains exist (the session's dockerd makes them), the internal
        # bridge's own traffic is accepted in DOCKER-USER, on either engine: Docker's
        # isolation rules would drop the transparent path, its DROP policy everything.
        chain = subprocess.run(["iptables", "-w", "10", "-S", "DOCKER-USER"],
                               capture_output=True, text=True, timeout=30)
        if chain.returncode == 0:
            [rule] = [line for line in chain.stdout.splitlines() if f"netfence:{name}" in line]
            assert rule.startswith("-A DOCKER-USER -i ") and rule.endswith("-j ACCEPT"), rule
        deadline = time.monotonic() + 20
        text = ""
        records: list[dict[str, Any]] = []

        def logged() -> bool:
            hosts = {r["host"] for r in records}
            # With Envoy the direct request is a decision too, marked transparent.
            direct = proxy != "envoy" or any(r.get("transparent") for r in records)
            return {"allowed.test", "other.test"} <= hosts and direct

        while time.monotonic() < deadline and not logged():
            text = nf(engine, "logs", name, "--json", **plain).stdout.decode()
            records = [json.loads(line) for line in text.splitlines()]
            time.sleep(0.3)
        assert logged(), text
        denied = nf(engine, "logs", name, "--denied", "--json", **plain).stdout.decode()
        assert "other.test" in denied and "allowed.test" not in denied, denied
    finally:
        stopped = nf(engine, "stop", name, **plain)
    assert stopped.returncode == 0, stopped.stderr
    assert name not in nf(engine, "ps", "--json").stdout.decode()
    assert name not in nf(engine, "ps", "--json", **plain).stdout.decode()
    assert not (STATE_ROOT / name).exists()


@ENVOY_ON_BOTH
def test_two_workloads_at_once(engine: Engine, proxy: str, net_args: list[str]) -> None:
    names = [new_name(), new_name()]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(fenced, engine, proxy, net_args, "curl", "-sS", "-m", "10",
                            f"http://allowed.test/{n}", allow=("allowed.test",), name=n)
                for n in names]
        results = [r.result(timeout=120) for r in runs]
    for name, done in zip(names, results, strict=True):
        assert done.returncode == 0, done.stderr
        assert b"teardown" not in done.stderr, done.stderr  # each removed all it owns
        assert f"path=/{name}".encode() in done.stdout, done.stdout
    if not engine.managed():  # the last one out removed the shared network
        with pytest.raises(docker.errors.NotFound):
            engine.client.networks.get(EXTERNAL_NETWORK)


def _link_address(ifname: str) -> str:
    return Path(f"/sys/class/net/{ifname}/address").read_text().strip()


@ENVOY_ON_BOTH
def test_a_port_joining_the_external_bridge_does_not_stall_egress(
        engine: Engine, proxy: str, net_args: list[str]) -> None:
    """A Linux bridge takes its lowest port's hardware address unless one was set: another
    workload's fence joining the shared external network would change it under a running
    egress proxy, whose cached gateway entry then points nowhere for up to a minute."""
    # Fetch (so the egress proxy has dialed out through the gateway and cached its
    # address), wait for a line on stdin, fetch again. One output line per fetch, always.
    text = ('echo "$(curl -sS -m 5 http://allowed.test/before 2>&1)"; read go; '
            'echo "$(curl -sS -m 5 http://allowed.test/after 2>&1)"; read go; echo done')
    proc = subprocess.Popen(
        netfence_argv("run", "--proxy", proxy, *net_args, "--name", new_name(),
                      "--allow-host", "allowed.test", "--", engine.workload_image,
                      "sh", "-c", text),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=engine.env())
    port = f"nfp{secrets.token_hex(4)}"  # our own veth pair, removed below
    try:
        assert proc.stdin is not None and proc.stdout is not None
        first = proc.stdout.readline().decode()
        assert "fakenet ok host=allowed.test path=/before" in first, first
        gateway = engine.client.networks.get(EXTERNAL_NETWORK).attrs["IPAM"]["Config"][0][
            "Gateway"]
        links = subprocess.run(["ip", "-json", "address", "show"], capture_output=True,
                               text=True, check=True).stdout
        bridge = bridge_carrying(gateway, json.loads(links))
        assert bridge is not None, links
        before = _link_address(bridge)
        # The lowest unicast address a port can have: a bridge that follows its ports takes it.
        subprocess.run(["ip", "link", "add", port, "address", "02:00:00:00:00:01", "type",
                        "veth", "peer", "name", f"{port}p"], check=True)
        subprocess.run(["ip", "link", "set", port, "master", bridge, "up"], check=True)
        subprocess.run(["ip", "link", "set", f"{port}p", "up"], check=True)
        assert _link_address(bridge) == before
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        after = proc.stdout.readline().decode()
        assert "fakenet ok host=allowed.test path=/after" in after, after
        # Gone before the fence is: a bridge with a port left is not removed with its network.
        subprocess.run(["ip", "link", "delete", port], check=True)
        out, err = proc.communicate(b"go\n", timeout=60)
        assert out == b"done\n" and proc.returncode == 0, out + err
    finally:
        subprocess.run(["ip", "link", "delete", port], capture_output=True)
        if proc.poll() is None:
            # Stopped the way a user would, so that its teardown runs: a kill would leave
            # the containers behind.
            proc.terminate()
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --- errors: one line, exit status 2 ------------------------------------------------------


def _one_line_error(done: subprocess.CompletedProcess[bytes]) -> str:
    err = done.stderr.decode().strip()
    assert done.returncode == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@PODMAN_ONLY
def test_no_engine_is_a_clear_error(engine: Engine, tmp_path: Path, net_args: list[str]) -> None:
    done = nf(engine, "run", *net_args, "--name", new_name(), "--", engine.workload_image,
              "true", DOCKER_HOST=f"unix://{tmp_path}/no-such.sock")
    assert "no container engine answers" in _one_line_error(done)


def test_missing_image_is_a_clear_error(engine: Engine, net_args: list[str]) -> None:
    image = "localhost/netfence-test/no-such-image:1"
    done = nf(engine, "run", *net_args, "--name", new_name(), "--", image, "true")
    assert image in _one_line_error(done)
    done = nf(engine, "run", *net_args, "--name", new_name(), "--", engine.workload_image,
              "true", NETFENCE_DNS_IMAGE=image)
    err = _one_line_error(done)
    assert image in err and "netfence images build" in err


def test_taken_name_is_a_clear_error(engine: Engine, net_args: list[str]) -> None:
    name = new_name()
    started = nf(engine, "run", *net_args, "--name", name, "--detach", "--",
                 engine.workload_image, "sleep", "60")
    assert started.returncode == 0, started.stderr
    try:
        again = nf(engine, "run", *net_args, "--name", name, "--", engine.workload_image,
                   "true")
        assert name in _one_line_error(again)
        # A container of that name made outside netfence: the engine's name is taken too.
        other = new_name()
        engine.client.containers.create(engine.workload_image, ["true"], name=other)
        try:
            taken = nf(engine, "run", *net_args, "--name", other, "--",
                       engine.workload_image, "true")
            assert other in _one_line_error(taken)
        finally:
            engine.client.containers.get(other).remove(force=True)
    finally:
        nf(engine, "stop", name)


def test_stop_cleans_up_after_a_killed_supervisor(engine: Engine, net_args: list[str]) -> None:
    name = new_name()
    started = nf(engine, "run", *net_args, "--name", name, "--detach", "--",
                 engine.workload_image, "sleep", "60")
    assert started.returncode == 0, started.stderr
    try:
        [record] = [r for r in json.loads(nf(engine, "ps", "--json").stdout)
                    if r["name"] == name]
        os.kill(record["supervisor_pid"], signal.SIGKILL)  # the supervisor this test started
        deadline = time.monotonic() + 10
        while Path(f"/proc/{record['supervisor_pid']}").exists() and \
                time.monotonic() < deadline:
            time.sleep(0.1)
        # Its containers outlive it; ps still shows the workload, stop finds it by labels.
        assert name in nf(engine, "ps", "--json").stdout.decode()
    finally:
        stopped = nf(engine, "stop", name)
    assert stopped.returncode == 0, stopped.stderr
    assert not engine.client.containers.list(
        all=True, filters={"label": f"io.netfence.workload={name}"})


def test_doctor_names_the_engine_and_its_version(engine: Engine) -> None:
    done = nf(engine, "doctor", timeout=60)
    [line] = [line for line in done.stderr.decode().splitlines() if "container engine" in line]
    product = {"podman": "Podman ", "docker": "Docker Engine "}[engine.kind]
    version = engine.client.version()
    number = version["Version"] if engine.kind == "docker" else next(
        c["Version"] for c in version["Components"] if "Podman" in c["Name"])
    assert line.startswith("ok") and f"{product}{number} " in line, line
    assert line.endswith(f"at {engine.url}"), line


@only("podman-envoy", "podman-squid")
def test_update_changes_a_running_workloads_ports(engine: Engine, proxy: str,
                                                  net_args: list[str], fakenet: FakeNet,
                                                  tmp_path: Path) -> None:
    # The fence containers take the new files from the bind-mounted state directory
    # (Envoy watches them, Squid is signalled through the engine). A change of names would
    # restart the dns container: refused in one line, nothing changed.
    trigger = tmp_path / "go"
    tmp_path.chmod(0o755)
    url = "http://allowed.test:8080/"
    wait = f"i=0; while [ ! -e {trigger} ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done"
    status = f"curl -s -m 5 -o /dev/null -w '%{{http_code}}\\n' {url}"
    name = new_name()
    args = ["run", "--proxy", proxy, *net_args, "--name", name, "--allow-host", "allowed.test",
            "--read", str(tmp_path), "--", engine.workload_image, "sh", "-c",
            f"{status}; {wait}; {status}"]
    proc = subprocess.Popen(netfence_argv(*args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=engine.env())
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"403\n"  # port 8080 not allowed
        names = nf(engine, "update", name, "--allow-cidr", fakenet.cidr,
                   "--allow-host", "allowed.test", "--allow-host", "other.test")
        assert names.returncode == 2, names.stderr
        assert len(names.stderr.decode().strip().splitlines()) == 1, names.stderr
        assert b"needs the fence's dns restarted" in names.stderr, names.stderr
        ports = nf(engine, "update", name, "--allow-cidr", fakenet.cidr,
                   "--allow-host", "allowed.test", "--allow-port", "8080")
        assert ports.returncode == 0, ports.stderr
        assert b"+port 8080" in ports.stderr, ports.stderr
        trigger.write_text("")
        assert proc.stdout.readline() == b"200\n"
        assert proc.wait(60) == 0
    finally:
        stop(proc)
        if proc.stderr is not None:
            proc.stderr.close()
        if proc.stdout is not None:
            proc.stdout.close()
