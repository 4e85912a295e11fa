"""A real Docker Engine for the docker runtime's tests, on a private socket, beside Podman.

The session starts Debian's `dockerd` itself, as a user's Docker runs: in the network
namespace netfence and the tests run in (the host's; with no arguments scripts/test runs
the container tests in one of their own), with its iptables rules (NAT for the external
network, its isolation chains for internal networks, DOCKER-USER), since those are what
netfence must work with.
Everything else is private: its data root, exec root, pid file, socket and config file
under a temporary directory, its own containerd under them, no default `docker0` bridge
(`--bridge=none`: the runtime never uses it). It builds the same images as the Podman
engine (tests/support/podman.py), through `netfence images build`.

Docker and Podman share the host's FORWARD chain. Docker adds its own chains and jumps to
them, which match only its own bridges; it sets the FORWARD policy to DROP only when it
has to turn IP forwarding on itself, which would drop the bridged traffic of Podman's
internal networks (br_netfilter sends it through FORWARD, and netavark accepts nothing
there for an internal network). The session refuses to run a Docker that changed the
policy (it restores it and fails), and at the end removes every chain and rule this
daemon added, and the bridges and sysctls, so the host is as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from netfence.runtimes.state import is_running, kill, process_start_time
from tests.support.podman import Engine, wait_for_engine, with_images

# The engines the docker runtime is tested on, each a session fixture of that name.
ENGINES = ("podman", "dockerd")
STOP_TIMEOUT = 30.0
TABLES = ("filter", "nat")
# Host settings dockerd may write; restored to what they were.
SYSCTLS = (Path("/proc/sys/net/ipv4/ip_forward"),
           Path("/proc/sys/net/bridge/bridge-nf-call-iptables"),
           Path("/proc/sys/net/bridge/bridge-nf-call-ip6tables"))
# Docker's user networks get host bridges named br-<network id prefix>.
BRIDGE_PREFIX = "br-"
# Written by containerd (shim sockets) and dockerd outside the paths we give them.
OUTSIDE_DIRS = (Path("/run/containerd"), Path("/run/docker"), Path("/etc/docker"),
                Path("/var/lib/docker"))
# While a session's dockerd runs: what it needs to put the host back, should the session
# be killed before its own cleanup (the next session does it, remove_stale).
MARKER = Path("/run/netfence-test-dockerd.json")


def remove_stale(marker: Path = MARKER) -> None:
    """Put back what the dockerd of a killed test session changed on the host: its
    daemon (by the PID that session recorded, if that very process still runs), its
    chains and rules, bridges, sysctls and FORWARD policy. Otherwise its chains would make
    this session take it for a user's Docker, and a FORWARD policy it left at DROP would
    drop Podman's traffic."""
    try:
        left = json.loads(marker.read_text())
    except (OSError, ValueError):
        return
    pid, started = int(left["pid"]), str(left["started"])
    kill(pid, started)  # through a pidfd, only if that very process still runs
    deadline = time.monotonic() + STOP_TIMEOUT
    while is_running(pid, started) and time.monotonic() < deadline:
        time.sleep(0.1)
    work = Path(left["work"])
    _stop_under(work)
    _restore_host({t: set(c) for t, c in left["chains"].items()}, set(left["links"]),
                  left["policy"], {Path(k): v for k, v in left["sysctls"].items()},
                  {Path(p) for p in left["outside"]})
    _unmount_under(work)
    shutil.rmtree(work, ignore_errors=True)
    marker.unlink(missing_ok=True)


def docker_missing_reason() -> str | None:
    """Why the Docker Engine tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "the Docker Engine tests need root (a rootful dockerd)"
    missing = [p for p in ("dockerd", "containerd", "runc", "iptables") if not shutil.which(p)]
    if missing:
        return f"{', '.join(missing)} not installed (scripts/install installs docker.io)"
    if any(chain.startswith("DOCKER") for chain in _chains("filter")):
        # A second daemon would share (and on exit leave or break) the first one's chains.
        return "a Docker Engine already runs on this host (its DOCKER chains exist)"
    return None


def _iptables(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["iptables", "-w", "10", *args], capture_output=True, text=True,
                          timeout=30)


def _rules(table: str) -> list[str]:
    done = _iptables("-t", table, "-S")
    if done.returncode != 0:
        raise RuntimeError(f"iptables -t {table} -S: {done.stderr.strip()}")
    return done.stdout.splitlines()


def _chains(table: str) -> set[str]:
    out: set[str] = set()
    with contextlib.suppress(OSError, subprocess.TimeoutExpired, RuntimeError):
        for line in _rules(table):
            parts = line.split()
            if parts[:1] in (["-N"], ["-P"]) and len(parts) > 1:
                out.add(parts[1])
    return out


def forward_policy() -> str:
    for line in _rules("filter"):
        parts = line.split()
        if parts[:2] == ["-P", "FORWARD"]:
            return parts[2]
    raise RuntimeError("no FORWARD policy in `iptables -S`")


def _docker_rule(line: str, chains: set[str], bridges: set[str]) -> bool:
    """Whether a rule (an `iptables -S` line) is one of the daemon's: it jumps to one of
    its chains, or names one of its bridges."""
    words = shlex.split(line)
    target = words[words.index("-j") + 1] if "-j" in words[:-1] else ""
    return target in chains or any(w in bridges for w in words)


def remove_docker_rules(chains_before: dict[str, set[str]], bridges: set[str]) -> list[str]:
    """Remove the chains the daemon added (DOCKER*) and every rule that jumps to them or
    names its bridges; what could not be removed."""
    failed: list[str] = []
    for table in TABLES:
        ours = {c for c in _chains(table) - chains_before[table] if c.startswith("DOCKER")}
        for line in _rules(table):
            if not line.startswith("-A ") or not _docker_rule(line, ours, bridges):
                continue
            words = shlex.split(line)
            if words[1] in ours:
                continue  # goes with its chain
            done = _iptables("-t", table, "-D", *words[1:])
            if done.returncode != 0:
                failed.append(f"{table}: {line}: {done.stderr.strip()}")
        for chain in ours:
            _iptables("-t", table, "-F", chain)
        for chain in ours:
            done = _iptables("-t", table, "-X", chain)
            if done.returncode != 0:
                failed.append(f"{table}: chain {chain}: {done.stderr.strip()}")
    return failed


def _links() -> set[str]:
    return {p.name for p in Path("/sys/class/net").iterdir()}


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _restore_host(chains_before: dict[str, set[str]], links_before: set[str],
                  policy: str, sysctls: dict[Path, str | None],
                  outside_before: set[Path]) -> None:
    """Everything the daemon changed outside its own directories, put back."""
    bridges = {name for name in _links() - links_before
               if name.startswith((BRIDGE_PREFIX, "docker"))}
    failed = remove_docker_rules(chains_before, bridges)
    for bridge in bridges:
        subprocess.run(["ip", "link", "delete", bridge], capture_output=True, timeout=10)
    if forward_policy() != policy:
        _iptables("-P", "FORWARD", policy)
    for path, value in sysctls.items():
        if value is not None and _read(path) != value:
            with contextlib.suppress(OSError):
                path.write_text(value)
    for path in OUTSIDE_DIRS:
        if path not in outside_before:
            shutil.rmtree(path, ignore_errors=True)
    if failed:
        raise RuntimeError(f"could not remove Docker's iptables rules: {failed}")


def _stop_daemon(proc: subprocess.Popen[bytes], work: Path) -> None:
    """Stop the dockerd we started (by its PID); then whatever it started under our
    directory (its containerd and shims: their command lines name it)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)
    _stop_under(work)


def _stop_under(work: Path) -> None:
    """The daemon's containerd and shims (their command lines name our directory): given
    time to follow it, then killed."""
    deadline = time.monotonic() + STOP_TIMEOUT
    while _processes_under(work) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in _processes_under(work):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _processes_under(work: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if str(work).encode() in cmdline:
            found.append(int(entry.name))
    return found


def _unmount_under(work: Path) -> None:
    """Mounts the daemon left under its data root (overlay layers, netns bind mounts)."""
    for _ in range(3):
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()
                  if line.split()[1].startswith(str(work))]
        if not mounts:
            return
        for target in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", target], capture_output=True, timeout=10)


@contextlib.contextmanager
def docker_engine(ca_pem: Path) -> Iterator[Engine]:
    """A private Docker Engine with the fence and workload images; all removed at exit."""
    chains_before = {table: _chains(table) for table in TABLES}
    links_before = _links()
    policy = forward_policy()
    sysctls = {path: _read(path) for path in SYSCTLS}
    outside_before = {path for path in OUTSIDE_DIRS if path.exists()}
    work = Path(tempfile.mkdtemp(prefix="nf-docker-"))
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(MARKER.unlink, missing_ok=True)  # last: the host is put back by then
        cleanup.callback(shutil.rmtree, work, ignore_errors=True)
        cleanup.callback(_unmount_under, work)
        cleanup.callback(_restore_host, chains_before, links_before, policy, sysctls,
                         outside_before)
        config = work / "daemon.json"
        config.write_text("{}\n")  # not the host's /etc/docker/daemon.json
        url = f"unix://{work / 'docker.sock'}"
        log = work / "dockerd.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["dockerd", "--config-file", str(config), "--data-root", str(work / "data"),
                 "--exec-root", str(work / "exec"), "--pidfile", str(work / "docker.pid"),
                 "-H", url, "--bridge=none"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        cleanup.callback(_stop_daemon, proc, work)
        MARKER.write_text(json.dumps({
            "pid": proc.pid, "started": process_start_time(proc.pid) or "", "work": str(work),
            "chains": {t: sorted(c) for t, c in chains_before.items()},
            "links": sorted(links_before), "policy": policy,
            "sysctls": {str(k): v for k, v in sysctls.items()},
            "outside": [str(p) for p in outside_before]}))
        MARKER.chmod(0o600)
        client = wait_for_engine(url, proc, log, what="dockerd")
        cleanup.callback(client.close)
        if forward_policy() != policy:
            raise RuntimeError(f"dockerd set the host's FORWARD policy to "
                               f"{forward_policy()} (was {policy}): Podman's internal "
                               "networks would lose their traffic")
        tag = with_images(client, url, ca_pem, cleanup)
        yield Engine(url=url, client=client, workload_image=tag, kind="docker",
                     bridge_prefix=BRIDGE_PREFIX)
