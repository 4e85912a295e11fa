"""`netfence update`: a running workload's policy replaced without a restart, end to end
(real namespaces, Envoy, Squid and dnsmasq, the simulated internet), as root and rootless.

The workload is a probe driven line by line over its stdin: it keeps an HTTPS tunnel
through the egress proxy open across the changes, and opens new connections on request.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.fakenet import FakeNet
from tests.support.fence import fence_process, netfence, netfence_argv

pytestmark = [pytest.mark.integration,
              pytest.mark.usefixtures("nothing_left_behind", "privilege")]

# Commands: `open` a tunnel (CONNECT, then TLS) and GET through it; `again` on that
# tunnel; `get URL` on a new connection through the proxy; `direct HOST` a new TLS
# connection to HOST's address, ignoring the proxy (the transparent path); `resolve HOST`.
# Each prints one JSON line: {"ok": ..., "status"/"error": ...}.
PROBE = r"""
import http.client, json, os, socket, ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[1])
proxy = os.environ["http_proxy"].removeprefix("http://")
phost, pport = proxy.rsplit(":", 1)
tunnel = None
def get(conn, host):
    conn.request("GET", "/probe", headers={"Host": host})
    r = conn.getresponse(); r.read()
    return r.status
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    try:
        if cmd == "open":
            tunnel = http.client.HTTPSConnection(phost, int(pport), context=ctx, timeout=10)
            tunnel.set_tunnel(arg, 443)
            out = {"ok": True, "status": get(tunnel, arg)}
        elif cmd == "again":
            out = {"ok": True, "status": get(tunnel, arg)}
        elif cmd == "get":
            try:
                with urllib.request.urlopen(arg, timeout=10) as r:
                    out = {"ok": True, "status": r.status}
            except urllib.error.HTTPError as e:
                out = {"ok": True, "status": e.code}
        elif cmd == "direct":
            addr = socket.getaddrinfo(arg, 443, socket.AF_INET)[0][4][0]
            with socket.create_connection((addr, 443), timeout=10) as raw:
                with ctx.wrap_socket(raw, server_hostname=arg) as tls:
                    tls.sendall(f"GET / HTTP/1.0\r\nHost: {arg}\r\n\r\n".encode())
                    out = {"ok": True, "status": int(tls.recv(100).split()[1])}
        elif cmd == "resolve":
            out = {"ok": True, "status": socket.gethostbyname(arg)}
        else:
            out = {"ok": False, "error": "unknown command"}
    except Exception as exc:
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(out), flush=True)
"""


class Probe:
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.stderr = b""  # netfence's, once the probe has ended

    def __call__(self, command: str) -> dict[str, object]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()  # the probe's own timeouts bound it
        assert line, f"the probe ended: {self.proc.stderr.read() if self.proc.stderr else ''}"
        reply = json.loads(line)
        assert isinstance(reply, dict)
        return reply

    def status(self, command: str) -> object:
        reply = self(command)
        return reply["status"] if reply["ok"] else reply["error"]


@contextmanager
def probe(proxy: str, name: str, fakenet: FakeNet, allow: list[str]) -> Iterator[Probe]:
    args = ["run", "--proxy", proxy, "--name", name, "--dns-upstream", fakenet.dns,
            "--read", str(fakenet.ca_pem_path), *_allow(fakenet, allow)]
    proc = subprocess.Popen(
        netfence_argv(*args, "--", "python3", "-c", PROBE, str(fakenet.ca_pem_path)),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    running = Probe(proc)
    try:
        yield running
    finally:
        assert proc.stdin is not None
        proc.stdin.close()  # the probe ends, and the fence with it
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None and proc.stderr is not None
        running.stderr = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()


@contextmanager
def profile_file(text: str) -> Iterator[Path]:
    """A profile any user can read (the rootless test user reads it as the caller)."""
    directory = Path(tempfile.mkdtemp(prefix="nf-update-"))
    try:
        directory.chmod(0o755)
        path = directory / "profile.yaml"
        path.write_text(text)
        path.chmod(0o644)
        yield path
    finally:
        shutil.rmtree(directory)


def _allow(fakenet: FakeNet, hosts: list[str]) -> list[str]:
    out = ["--allow-cidr", fakenet.cidr]  # the simulated internet's private range
    for host in hosts:
        out += ["--allow-host", host]
    return out


def update(name: str, fakenet: FakeNet, hosts: list[str]) -> subprocess.CompletedProcess[bytes]:
    return netfence("update", name, *_allow(fakenet, hosts))


def _running(name: str, timeout: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for workload in json.loads(netfence("ps", "--json").stdout):
            if workload["name"] == name:
                return dict(workload)
        time.sleep(0.1)
    raise AssertionError(f"{name} not listed")


# Rootless with Envoy: dnsmasq's SIGHUP (as root it restarts) and the rootless relays;
# Squid's reconfigure as a plain user is tested with the real Squid in test_squid_validate.
@pytest.mark.parametrize(("proxy", "privilege"), [
    ("envoy", "root"), ("squid", "root"), ("envoy", "rootless")], indirect=["privilege"])
def test_update_changes_the_policy_of_a_running_workload(proxy: str, fakenet: FakeNet) -> None:
    name = f"nf-update-{proxy}"
    with probe(proxy, name, fakenet, ["allowed.test"]) as run:
        assert run.status("open allowed.test") == 200
        assert run.status("get http://other.test/") == 403
        assert "gaierror" in str(run.status("resolve other.test"))  # DNS: not allowed
        assert _running(name)["policy"] == (f"none --allow-host allowed.test "
                                            f"--allow-cidr {fakenet.cidr}")

        done = update(name, fakenet, ["allowed.test", "other.test"])
        assert done.returncode == 0, done.stderr
        assert b"policy now" in done.stderr and b"+host other.test" in done.stderr, done.stderr
        # New connections follow the new policy at once; DNS too.
        assert run.status("get http://other.test/") == 200
        assert run.status("resolve other.test") == "10.203.0.3"
        # The tunnel opened before the change is still up.
        assert run.status("again allowed.test") == 200
        if proxy == "envoy":  # the transparent path follows as well (Squid has none)
            assert run.status("direct other.test") == 200

        done = update(name, fakenet, ["other.test"])
        assert done.returncode == 0, done.stderr
        assert b"-host allowed.test" in done.stderr, done.stderr
        assert run.status("get http://allowed.test/") == 403
        assert "gaierror" in str(run.status("resolve allowed.test"))
        assert run.status("get http://other.test/") == 200
        if proxy == "envoy":
            assert run.status("direct allowed.test") != 200

        # A bad profile: one line, exit 2, and the policy in force stays.
        bad = netfence("update", name, "--profile", "/nonexistent/profile.yaml")
        assert bad.returncode == 2, bad.stderr
        assert len(bad.stderr.decode().strip().splitlines()) == 1, bad.stderr
        assert run.status("get http://other.test/") == 200
        # A profile asking for file grants: the network part applies, the grants do not,
        # and the command says so.
        with profile_file("read: [/srv]\nnetwork: {outbound: {allow_host: [other.test]}}\n"
                          ) as path:
            done = netfence("update", name, "--profile", str(path),
                            "--allow-cidr", fakenet.cidr)
        assert done.returncode == 0, done.stderr
        assert b"read grants are not applied" in done.stderr, done.stderr

        listed = _running(name)
        assert listed["policy"] == f"{path} --allow-cidr {fakenet.cidr}"
        deadline = time.monotonic() + 10  # Envoy writes its log out every second
        while True:
            events = [json.loads(line) for line in
                      netfence("logs", name, "--json").stdout.decode().splitlines()]
            order = [e.get("event") or f"{e['decision']} {e['host']}" for e in events]
            if {"deny other.test", "allow other.test"} <= set(order) or \
                    time.monotonic() > deadline:
                break
            time.sleep(0.2)
        changes = [e for e in events if e.get("event") == "policy"]
        assert [c["added"] for c in changes] == [["host other.test"], [], []]
        assert [c["removed"] for c in changes] == [[], ["host allowed.test"], []]
        # Among the decisions in time order: the denial of other.test came before the
        # first change, its allowance after it.
        assert order.index("deny other.test") < order.index("policy") < order.index(
            "allow other.test"), order

        # A proxy that dies is started again, from the files of the policy now in force
        # (killed last: what it had not written of its log yet dies with it);
        # the workload never notices but for the refused connections meanwhile.
        first = fence_process(name, proxy)
        os.kill(first, signal.SIGKILL)  # recorded by the fence this test started
        deadline = time.monotonic() + 20
        while run.status("get http://other.test/") != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert run.status("get http://other.test/") == 200
        assert run.status("get http://allowed.test/") == 403
        assert fence_process(name, proxy) != first
        assert run.proc.poll() is None
    assert b"exited (status -9); starting it again" in run.stderr, run.stderr


def test_update_of_no_running_workload_is_one_line(fakenet: FakeNet) -> None:
    done = netfence("update", "nf-nobody", "--allow-host", "a.test")
    assert done.returncode == 2
    assert done.stderr.decode().strip().splitlines() == [
        "netfence: error: no running workload named 'nf-nobody' (see `netfence ps`)"]
