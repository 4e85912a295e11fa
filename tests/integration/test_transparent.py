"""Programs that ignore the proxy variables, behind the fence: Node's fetch and http
modules, curl and Python with their proxies off. With Envoy their connections land at the
fence's transparent listener and are decided by the name they carry (TLS SNI, HTTP Host),
never by the address they dialed; Squid has no such path and says so. Every case runs as
root and again rootless (the relay hands the dialed address to Envoy in a PROXY header).
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.support.clients import DNS_ASK, NODE_GET
from tests.support.fakenet import FakeNet
from tests.support.fakenet_server import UNASSIGNED_PRIVATE
from tests.support.fence import both_privileges, netfence

pytestmark = [pytest.mark.integration,
              pytest.mark.usefixtures("nothing_left_behind", "privilege"), both_privileges]

def fenced(proxy: str, net_args: list[str], fakenet: FakeNet, *command: str,
           allow: tuple[str, ...] = (".allowed.test",), extra: tuple[str, ...] = (),
           timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    args = ["run", "--proxy", proxy, *net_args, *extra,
            "--env", f"NODE_EXTRA_CA_CERTS={fakenet.ca_pem_path}",
            "--env", f"SSL_CERT_FILE={fakenet.ca_pem_path}"]
    for host in allow:
        args += ["--allow-host", host]
    return netfence(*args, "--", *command, timeout=timeout)


def node(proxy: str, net_args: list[str], fakenet: FakeNet, kind: str, url: str,
         options: dict[str, object] | None = None, **kw: tuple[str, ...]) -> dict[str, object]:
    done = fenced(proxy, net_args, fakenet, "node", "-e", NODE_GET, kind, url,
                  json.dumps(options or {}), **kw)
    assert done.returncode == 0, done.stderr.decode()
    result: dict[str, object] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


# --- Envoy: the transparent path ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["fetch", "http"])
def test_node_reaches_an_allowed_host_over_http(net_args: list[str], fakenet: FakeNet,
                                                kind: str) -> None:
    got = node("envoy", net_args, fakenet, kind, "http://allowed.test/")
    assert got["status"] == 200, got
    assert got["server"] == "10.203.0.2:80" and "host=allowed.test" in str(got["body"]), got


@pytest.mark.parametrize("kind", ["fetch", "https"])
def test_node_reaches_an_allowed_host_over_https(net_args: list[str], fakenet: FakeNet,
                                                 kind: str) -> None:
    got = node("envoy", net_args, fakenet, kind, "https://www.allowed.test/")
    assert got["status"] == 200, got
    assert got["server"] == "10.203.0.2:443", got


def test_node_is_refused_everything_else(net_args: list[str], fakenet: FakeNet) -> None:
    fakenet.clear_queries()
    # Not allowlisted: the fence's DNS does not even answer the name.
    assert node("envoy", net_args, fakenet, "fetch", "http://other.test/") == \
        {"error": "ENOTFOUND"}
    # A name resolving to a denied address: the fence's DNS keeps the address from the
    # workload, and naming it in a Host sent elsewhere gets the address stage's 403.
    assert node("envoy", net_args, fakenet, "http", "http://loopback.test/",
                allow=("loopback.test",)) == {"error": "ENOTFOUND"}
    got = node("envoy", net_args, fakenet, "http", "http://10.203.0.2/",
               {"headers": {"Host": "loopback.test"}}, allow=("loopback.test",))
    assert got["status"] == 403 and "loopback_address" in str(got["body"]), got
    # A port the profile does not allow.
    got = node("envoy", net_args, fakenet, "http", "http://allowed.test:8080/")
    assert got["status"] == 403 and "port_not_allowed" in str(got["body"]), got
    assert "--allow-port 8080" in str(got["body"]), got
    asked = {name for name, _ in fakenet.queries()}
    assert "other.test" not in asked, asked


def test_the_name_decides_not_the_address_dialed(net_args: list[str], fakenet: FakeNet) -> None:
    # A Host naming a host that is not allowed, sent to an allowed host's address.
    got = node("envoy", net_args, fakenet, "http", "http://10.203.0.2/",
               {"headers": {"Host": "denied.test"}})
    assert got["status"] == 403 and "not_allowlisted" in str(got["body"]), got
    # The allowed name, sent to another (denied) host's address: it reaches the allowed
    # host, never the address the client dialed. The same for TLS with its SNI.
    got = node("envoy", net_args, fakenet, "http", "http://10.203.0.4/",
               {"headers": {"Host": "allowed.test"}})
    assert got["status"] == 200 and got["server"] == "10.203.0.2:80", got
    got = node("envoy", net_args, fakenet, "https", f"https://{UNASSIGNED_PRIVATE}/",
               {"servername": "allowed.test", "headers": {"Host": "allowed.test"}})
    assert got["status"] == 200 and got["server"] == "10.203.0.2:443", got
    # An SNI that is not allowed, sent to the allowed host's own address: closed.
    got = node("envoy", net_args, fakenet, "https", "https://10.203.0.2/",
               {"servername": "denied.test", "rejectUnauthorized": False})
    assert "error" in got, got
    # An https:// URL in plain text to an allowed host: the fence originates no TLS, so
    # it is refused as on the proxy path (not sent on in plain text).
    got = node("envoy", net_args, fakenet, "http", "http://allowed.test/",
               {"path": "https://allowed.test/secret"})
    assert got["status"] == 403 and "unsupported_request" in str(got["body"]), got


@pytest.mark.parametrize("url", ["http://allowed.test/", "https://allowed.test/"])
def test_clients_with_their_proxy_turned_off(net_args: list[str], fakenet: FakeNet,
                                             url: str) -> None:
    done = fenced("envoy", net_args, fakenet, "curl", "-sS", "-m", "10", "--noproxy", "*",
                  "--cacert", str(fakenet.ca_pem_path), "-o", "/dev/null",
                  "-w", "%{http_code} %{remote_ip}", url)
    # curl dialed the address it resolved; the fence answered there for the name.
    assert done.stdout == b"200 10.203.0.2", done.stdout + done.stderr
    code = ("import json, urllib.request, sys\n"
            "opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))\n"
            "with opener.open(sys.argv[1], timeout=10) as r:\n"
            " print(r.status, r.headers['X-Fakenet-Server'])")
    done = fenced("envoy", net_args, fakenet, "python3", "-c", code, url)
    port = 443 if url.startswith("https") else 80
    assert done.stdout.decode().strip() == f"200 10.203.0.2:{port}", done.stderr.decode()


def test_raw_tcp_to_an_address_not_allowed_gets_nothing(net_args: list[str],
                                                        fakenet: FakeNet) -> None:
    code = ("import socket\n"
            "s = socket.create_connection(('10.203.0.2', 80), 5)\n"
            "s.settimeout(10)\n"
            "s.sendall(b'\\x16\\x03\\x01 not tls, not http\\r\\n\\r\\n')\n"
            "try:\n data = s.recv(100)\nexcept OSError as e:\n data = repr(e).encode()\n"
            "print('got', data[:60])")
    done = fenced("envoy", net_args, fakenet, "python3", "-c", code)
    assert b"fakenet" not in done.stdout and b"got" in done.stdout, done.stdout + done.stderr


def test_dns_to_any_address_is_the_fences(net_args: list[str], fakenet: FakeNet) -> None:
    # A program with a resolver of its own, asking an address of the test range where no
    # DNS server runs: the fence answers, with the same allowlist.
    fakenet.clear_queries()
    done = fenced("envoy", net_args, fakenet, "python3", "-c", DNS_ASK, UNASSIGNED_PRIVATE,
                  "allowed.test", "denied.test")
    lines = done.stdout.decode().splitlines()
    assert "allowed.test udp 0 ['10.203.0.2']" in lines, done.stdout + done.stderr
    assert "allowed.test tcp 0 ['10.203.0.2']" in lines, lines
    denied = [line for line in lines if line.startswith("denied.test")]
    assert len(denied) == 2 and all(line.endswith("[]") for line in denied), lines
    assert "denied.test" not in {name for name, _ in fakenet.queries()}


def test_other_udp_is_refused_at_once(net_args: list[str], fakenet: FakeNet) -> None:
    code = ("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "try:\n"
            f" s.sendto(b'quic?', ('{UNASSIGNED_PRIVATE}', 443))\n"
            " print('sent')\nexcept OSError as e:\n print('refused', e.errno)")
    done = fenced("envoy", net_args, fakenet, "python3", "-c", code)
    assert done.stdout.startswith(b"refused"), done.stdout + done.stderr


def test_transparent_decisions_are_logged(net_args: list[str], fakenet: FakeNet) -> None:
    name = "nf-transp-log"
    script = ("curl -s -o /dev/null --noproxy '*' http://allowed.test/; "
              "curl -s -o /dev/null --noproxy '*' --resolve denied.test:80:10.203.0.2 "
              "http://denied.test/; sleep 2")
    started = fenced("envoy", net_args, fakenet, "sh", "-c", script,
                     extra=("--name", name, "--detach"))
    assert started.returncode == 0, started.stderr
    try:
        records: list[dict[str, object]] = []
        for _ in range(50):
            done = netfence("logs", name, "--json")
            records = [json.loads(line) for line in done.stdout.decode().splitlines()]
            if len(records) >= 2:
                break
            time.sleep(0.2)
    finally:
        netfence("stop", name)
    by_host = {r["host"]: r for r in records}
    assert by_host["allowed.test"]["decision"] == "allow", records
    assert by_host["allowed.test"]["transparent"] is True
    assert by_host["denied.test"]["decision"] == "deny"
    assert by_host["denied.test"]["reason"] == "not_allowlisted"
    assert "--allow-host denied.test" in str(by_host["denied.test"]["remedy"])


# --- Squid: no transparent path ----------------------------------------------------------


def test_squid_says_programs_ignoring_the_proxy_cannot_connect(net_args: list[str],
                                                               fakenet: FakeNet) -> None:
    done = fenced("squid", net_args, fakenet, "curl", "-sS", "-m", "10", "--noproxy", "*",
                  "http://allowed.test/")
    assert done.returncode != 0 and b"fakenet ok" not in done.stdout
    notes = [line for line in done.stderr.decode().splitlines() if "transparent" in line]
    assert len(notes) == 1 and "--proxy envoy" in notes[0], done.stderr
    # Its proxy path works as ever.
    done = fenced("squid", net_args, fakenet, "curl", "-sS", "-m", "10", "http://allowed.test/")
    assert b"fakenet ok" in done.stdout, done.stderr
