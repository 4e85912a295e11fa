"""The real dnsmasq: generated configs pass `dnsmasq --test`, and a running dnsmasq forwards
allowlisted names only. Everything stays on 127.0.0.1: the upstream is a tiny responder
that records every query it sees.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from netfence.backends.base import (
    Endpoint,
    Placement,
    ProxySetup,
    Reload,
    write_file,
    write_setup,
)
from netfence.backends.dnsmasq import dns_setup, dns_validate_command
from netfence.policy import Policy, compile_policy
from netfence.profile.loader import parse_profile
from tests.support.processes import stop
from tests.support.tinydns import TinyDNS, query

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="dnsmasq is not installed"),
]

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A port free for both UDP and TCP on loopback (dnsmasq listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((LOOPBACK, 0))
            port = int(udp.getsockname()[1])
            with socket.socket() as tcp:
                try:
                    tcp.bind((LOOPBACK, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port on loopback")


def make_placement(state: Path, upstream_port: int, dns_port: int = 5300) -> Placement:
    return Placement(
        state_dir=state,
        egress_listen=Endpoint(LOOPBACK, 3128),
        workload_proxy=f"{LOOPBACK}:3128",
        dns_listen=Endpoint(LOOPBACK, dns_port),
        upstream_resolver=Endpoint(LOOPBACK, upstream_port),
    )


PROFILES: dict[str, dict[str, object]] = {
    "empty": {},
    "allow_all": {"outbound": {"insecure_allow_all": True}},
    "wildcards": {"outbound": {"allow_host": ["*.example.com", ".example.org", "pypi.org",
                                             "a.example.com", "*.x.pypi.org"]}},
    "ports": {"outbound": {"allow_host": ["example.com"], "allow_port": [22, 8443]}},
    "cidrs": {"outbound": {"allow_host": ["example.com"],
                           "allow_cidr": ["10.1.0.0/16", "fd00::/8"]}},
    "ip_literals": {"outbound": {"allow_host": ["192.0.2.1", "[2001:db8::1]", "example.com"]}},
    "underscore_and_idn": {"outbound": {"allow_host": ["_dmarc.example.com", "bücher.example"]}},
    "hosts_1000": {"outbound": {"allow_host": [f"h{i}.svc{i % 13}.example" for i in range(1000)]}},
}


@pytest.mark.parametrize("name", list(PROFILES))
def test_dnsmasq_accepts_config(name: str, tmp_path: Path) -> None:
    policy = compile_policy(parse_profile({"network": PROFILES[name]}, name))
    state = tmp_path / "state"
    setup = dns_setup(policy, make_placement(state, 53))
    write_setup(setup, state)
    (command,) = dns_validate_command(setup)
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_dnsmasq_rejects_a_broken_config(tmp_path: Path) -> None:
    state = tmp_path / "state"
    setup = dns_setup(Policy(), make_placement(state, 53))
    write_setup(setup, state)
    with (state / "dnsmasq.conf").open("a") as fh:
        fh.write("no-such-option\n")
    (command,) = dns_validate_command(setup)
    assert subprocess.run(command, capture_output=True, timeout=30).returncode != 0


@contextmanager
def running(setup: ProxySetup, state: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    write_setup(setup, state)
    (spec,) = setup.processes
    with spec.stdout.open("ab") as out, spec.stderr.open("ab") as err:
        proc = subprocess.Popen(spec.argv, stdout=out, stderr=err)
    try:
        wait_answering(proc, spec.stderr, port)
        yield proc
    finally:
        stop(proc)


# Never dialed, only answered: an address outside every always-denied range (an answer in
# one, like 192.0.2.0/24, the fence's DNS turns into NXDOMAIN).
PUBLIC = "100.128.0.10"
ANSWERS = {name: [PUBLIC] for name in (
    "exact.test", "sub.exact.test", "wild.test", "a.wild.test", "b.a.wild.test",
    "secret.test", "other.test", "localhost", "x.localhost", "host.docker.internal",
)}


def test_only_allowlisted_names_reach_upstream(tmp_path: Path) -> None:
    policy = Policy(hosts=tuple(
        parse_profile({"network": {"outbound": {"allow_host": ["exact.test", "*.wild.test"]}}},
                      "t").network.outbound.allow_host))
    port = free_port()
    state = tmp_path / "state"
    with TinyDNS(ANSWERS) as upstream:
        setup = dns_setup(policy, make_placement(state, upstream.port, port))
        with running(setup, state, port):
            upstream.queries.clear()  # forget the readiness probe (it is never forwarded)

            def ask(name: str) -> tuple[str, list[str]]:
                return query(name, LOOPBACK, port)

            assert ask("exact.test") == ("NOERROR", [PUBLIC])
            assert ask("wild.test") == ("NOERROR", [PUBLIC])
            assert ask("a.wild.test") == ("NOERROR", [PUBLIC])
            assert ask("b.a.wild.test") == ("NOERROR", [PUBLIC])
            for denied in ("sub.exact.test", "secret.test", "localhost", "x.localhost",
                           "host.docker.internal"):
                assert ask(denied)[0] == "NXDOMAIN", denied
            assert query("secret.test", LOOPBACK, port, qtype="TXT")[0] == "NXDOMAIN"
            seen = upstream.names()
        log = setup.processes[0].stderr.read_text()
    assert seen == {"exact.test", "wild.test", "a.wild.test", "b.a.wild.test"}
    assert "query[A] secret.test" in log  # the query log names what was asked


def test_allow_all_forwards_all_but_denied_names(tmp_path: Path) -> None:
    port = free_port()
    state = tmp_path / "state"
    with TinyDNS(ANSWERS) as upstream:
        setup = dns_setup(Policy(allow_all=True), make_placement(state, upstream.port, port))
        with running(setup, state, port):
            upstream.queries.clear()
            assert query("other.test", LOOPBACK, port) == ("NOERROR", [PUBLIC])
            for denied in ("localhost", "x.localhost", "host.docker.internal"):
                assert query(denied, LOOPBACK, port)[0] == "NXDOMAIN", denied
            seen = upstream.names()
    assert seen == {"other.test"}


# --- a running dnsmasq takes a new allowlist (netfence update) ---------------------------

NOBODY = 65534


def as_caller(path: Path) -> None:
    """The rootless layout: everything in the state dir belongs to the user dnsmasq runs
    as (the caller); `nobody` stands for that user here."""
    os.chown(path, NOBODY, NOBODY)


def write_changed(old: ProxySetup, new: ProxySetup) -> list[Path]:
    """What the runtime does on an update: only files whose content changed, each whole."""
    before = {f.path: f.content for f in old.files}
    changed = [f for f in new.files if before.get(f.path) != f.content]
    for spec in changed:
        write_file(spec)
        as_caller(spec.path)
    return [f.path for f in changed]


def reloads(log: Path) -> int:
    """How many times dnsmasq has (re)read its servers: it clears its cache each time."""
    return log.read_text(errors="replace").count("cleared cache")


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root (to run dnsmasq as another user) and setpriv")
def test_sighup_applies_a_new_allowlist_rootless() -> None:
    """Rootless, dnsmasq runs as the caller and re-reads its servers file on SIGHUP: a
    newly allowed name is forwarded, a dropped one is NXDOMAIN at once (the cache goes
    with the reload), a denied name under a newly allowed parent is still never asked."""
    port = free_port()
    # Not under pytest's 0700 root tmp: the unprivileged dnsmasq must reach its state dir.
    state = Path(tempfile.mkdtemp(prefix="nf-dnsmasq-reload-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        as_caller(state)
        with TinyDNS(ANSWERS) as upstream:
            placement = dataclasses.replace(make_placement(state, upstream.port, port),
                                            unprivileged=True)
            first = dns_setup(allowlist_of("exact.test", "other.test"), placement)
            (spec,) = first.processes
            assert spec.reload == Reload(signal=signal.SIGHUP,
                                         restart_for=(state / "dnsmasq.conf",))
            assert spec.reload is not None
            write_setup(first, state)
            for path in state.iterdir():
                as_caller(path)
            with spec.stdout.open("ab") as out, spec.stderr.open("ab") as err:
                proc = subprocess.Popen(
                    ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                     *spec.argv), stdout=out, stderr=err)
            wait_answering(proc, spec.stderr, port)
            assert query("other.test", LOOPBACK, port) == ("NOERROR", [PUBLIC])
            assert query("other.test", LOOPBACK, port) == ("NOERROR", [PUBLIC])  # cached
            assert query("wild.test", LOOPBACK, port)[0] == "NXDOMAIN"
            assert upstream.queries.count(("other.test", "A")) == 1

            second = dns_setup(allowlist_of("exact.test", "*.wild.test"), placement)
            assert write_changed(first, second) == [state / "dnsmasq-servers.conf"]
            upstream.queries.clear()
            count = reloads(spec.stderr)
            started = time.monotonic()
            assert spec.reload.signal is not None
            proc.send_signal(spec.reload.signal)
            deadline = started + 5
            while reloads(spec.stderr) == count:
                assert time.monotonic() < deadline, "dnsmasq did not reload"
                time.sleep(0.001)
            took = time.monotonic() - started
            assert proc.poll() is None  # the same process: no restart
            assert query("other.test", LOOPBACK, port)[0] == "NXDOMAIN"  # not from cache
            assert query("a.wild.test", LOOPBACK, port) == ("NOERROR", [PUBLIC])
            assert query("wild.test", LOOPBACK, port) == ("NOERROR", [PUBLIC])
            assert query("exact.test", LOOPBACK, port) == ("NOERROR", [PUBLIC])
            assert query("sub.exact.test", LOOPBACK, port)[0] == "NXDOMAIN"
            assert query("secret.test", LOOPBACK, port)[0] == "NXDOMAIN"
            assert upstream.names() == {"a.wild.test", "wild.test", "exact.test"}
        print(f"dnsmasq applied the new servers file {took * 1000:.1f} ms after SIGHUP")
    finally:
        if proc is not None:
            stop(proc)
        shutil.rmtree(state, ignore_errors=True)


def test_as_root_dnsmasq_cannot_read_a_servers_file_in_the_state_dir(tmp_path: Path) -> None:
    """Why a root fence restarts dnsmasq instead: it reads a servers file only after it
    dropped to nobody, who cannot pass the 0700 state dir. It then forwards nothing."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    port = free_port()
    state = tmp_path / "state"
    with TinyDNS(ANSWERS) as upstream:
        placement = dataclasses.replace(make_placement(state, upstream.port, port),
                                        unprivileged=True)  # the servers-file layout
        setup = dns_setup(allowlist_of("exact.test"), placement)
        with running(setup, state, port):
            upstream.queries.clear()
            assert query("exact.test", LOOPBACK, port)[0] != "NOERROR"
            assert upstream.queries == []
        log = setup.processes[0].stderr.read_text()
    assert "dnsmasq-servers.conf: Permission denied" in log


def allowlist_of(*hosts: str) -> Policy:
    return Policy(hosts=tuple(
        parse_profile({"network": {"outbound": {"allow_host": list(hosts)}}},
                      "t").network.outbound.allow_host))


def wait_answering(proc: subprocess.Popen[bytes], log: Path, port: int) -> None:
    deadline = time.monotonic() + 10
    while True:  # ready once it answers (a denied name: answered locally)
        try:
            query("ready.invalid", LOOPBACK, port, timeout=0.3)
            return
        except (TimeoutError, OSError):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(log.read_text()) from None
