"""A simulated internet for tests and the demo: a network namespace joined to the host's by a
veth, with HTTP, HTTPS (a throw-away test CA) and DNS servers on addresses of its own.

The whole test range 10.203.0.0/16 is made `unreachable` in the host namespace while the
simulated internet exists, so a proxy or resolver that outlives it sends nothing to the
default gateway; the veth's /24 route is more specific and wins while it is up.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import trustme

from tests.support.fakenet_server import ANSWERS, HOST_IP, SERVER_IPS

TEST_RANGE = "10.203.0.0/16"
REPO = Path(__file__).resolve().parents[2]
NETNS_PREFIX = "nft-inet-"


@dataclass(frozen=True)
class FakeNet:
    netns: str
    host_ip: str  # the host's end of the veth (so also one of the host's own addresses)
    dns: str  # the DNS server, also the first HTTP(S) server
    cidr: str  # the servers' range: what a fenced workload needs in --allow-cidr
    ca_pem_path: Path  # readable by any user: workloads run unprivileged
    dns_log: Path

    def queries(self) -> list[tuple[str, str]]:
        """Every (name, type) the DNS server was asked since the last clear."""
        lines = self.dns_log.read_text(encoding="utf-8").splitlines()
        return [(name, qtype) for name, _, qtype in (line.partition(" ") for line in lines)]

    def clear_queries(self) -> None:
        self.dns_log.write_text("", encoding="utf-8")

    @property
    def names(self) -> dict[str, tuple[str, ...]]:
        return dict(ANSWERS)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _wait_ready(proc: subprocess.Popen[bytes], timeout: float) -> None:
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    deadline = time.monotonic() + timeout
    seen = b""
    while time.monotonic() < deadline and proc.poll() is None:
        seen += proc.stdout.read() or b""
        if b"ready" in seen:
            return
        time.sleep(0.05)
    raise RuntimeError(f"fakenet servers did not start (exit {proc.poll()}): {seen!r}")


def _owner_alive(pid: int) -> bool:
    """Whether the test process that built a simulated internet still runs (a reused PID
    that is not a Python process does not count)."""
    try:
        return b"python" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def remove_stale() -> None:
    """Remove what a killed test run left of its simulated internet. Its namespace and
    veth outlive its server, and the kernel keeps routing the servers' addresses through
    the older veth: every later run would send its traffic to a dead end."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            check=True, timeout=10).stdout
    for name in re.findall(rf"^{NETNS_PREFIX}(\d+)", listed, flags=re.MULTILINE):
        if int(name) == os.getpid():
            continue  # ours
        if _owner_alive(int(name)):
            raise RuntimeError(
                f"another simulated internet is up ({NETNS_PREFIX}{name}, test process "
                f"{name}): it holds {TEST_RANGE}; wait for that run to end")
        subprocess.run(["ip", "netns", "del", f"{NETNS_PREFIX}{name}"], capture_output=True,
                       timeout=10)
        subprocess.run(["ip", "link", "del", f"nfth{name}"], capture_output=True, timeout=10)


def _check_reachable(host_if: str) -> None:
    """Fail at once, not in every test after a timeout, if the servers' addresses do not
    route through this veth."""
    for ip in SERVER_IPS:
        route = subprocess.run(["ip", "route", "get", ip], capture_output=True, text=True,
                               check=True, timeout=10).stdout
        if f" dev {host_if} " not in route:
            raise RuntimeError(f"{ip} does not route through the simulated internet's veth "
                               f"{host_if}: {route.strip()!r} (a leftover route?)")


@contextmanager
def fakenet(lifetime: float = 3600.0) -> Iterator[FakeNet]:
    """Build the simulated internet; remove every piece of it on exit, also on failure."""
    tag = str(os.getpid())
    netns, host_if, ns_if = f"{NETNS_PREFIX}{tag}", f"nfth{tag}", f"nftn{tag}"
    remove_stale()
    with ExitStack() as cleanup:
        work = Path(tempfile.mkdtemp(prefix="nf-fakenet-"))
        cleanup.callback(shutil.rmtree, work, ignore_errors=True)
        work.chmod(0o755)  # the CA must be readable by the unprivileged workload

        ca = trustme.CA()
        ca_pem = work / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_pem))
        ca_pem.chmod(0o644)
        server_pem = work / "server.pem"
        ca.issue_cert(*ANSWERS, "*.allowed.test", *SERVER_IPS).private_key_and_cert_chain_pem \
            .write_to_path(str(server_pem))

        _ip("route", "replace", "unreachable", TEST_RANGE)
        cleanup.callback(subprocess.run, ["ip", "route", "del", "unreachable", TEST_RANGE],
                         capture_output=True, timeout=10)
        _ip("netns", "add", netns)
        cleanup.callback(subprocess.run, ["ip", "netns", "del", netns], capture_output=True,
                         timeout=10)
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", netns)
        # Deleting the namespace destroys both ends; this covers a failure before that.
        cleanup.callback(subprocess.run, ["ip", "link", "del", host_if], capture_output=True,
                         timeout=10)
        _ip("addr", "add", f"{HOST_IP}/24", "dev", host_if)
        _ip("link", "set", host_if, "up")
        for ip in SERVER_IPS:
            _ip("-n", netns, "addr", "add", f"{ip}/24", "dev", ns_if)
        _ip("-n", netns, "link", "set", ns_if, "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        _check_reachable(host_if)

        dns_log = work / "dns.log"
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-m", "tests.support.fakenet_server",
             "--cert", str(server_pem), "--dns-log", str(dns_log),
             "--lifetime", str(lifetime)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

        def stop() -> None:
            proc.kill()  # our own child (ip netns exec execs the server in place)
            proc.wait(timeout=10)
            if proc.stdout:
                proc.stdout.close()

        cleanup.callback(stop)
        _wait_ready(proc, timeout=15)
        yield FakeNet(netns=netns, host_ip=HOST_IP, dns=SERVER_IPS[0],
                      cidr=f"{SERVER_IPS[0].rsplit('.', 1)[0]}.0/24", ca_pem_path=ca_pem,
                      dns_log=dns_log)
