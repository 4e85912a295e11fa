"""The shared gateway (`netfence run --gateway`), end to end: real namespaces, one Envoy,
a dnsmasq per workload, the simulated internet.

Each test starts its own daemon (on demand, by its first run) and stops it at the end,
so nothing is shared between tests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from netfence.backends.envoy._admin import admin_get
from netfence.backends.envoy.gateway import ADMIN_SOCKET_NAME
from tests.integration.test_namespace_run import keys_the_workload_finds
from tests.integration.test_update import PROBE, Probe, _allow, update
from tests.support.fakenet import FakeNet
from tests.support.fence import netfence, netfence_argv, state_root
from tests.support.ingress import ECHO_BODY, echo_server, get, get_when_up

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("nothing_left_behind")]


def gateway_dir() -> Path:
    return state_root() / ".gateway"


def _pid_of(path: Path) -> tuple[int, str] | None:
    try:
        pid, started = path.read_text().split()
    except (OSError, ValueError):
        return None
    return int(pid), started


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


@pytest.fixture
def gateway() -> Iterator[Path]:
    """The gateway's directory; its daemon (started by the test's first run) is stopped
    at the end, by the PID it recorded, and must leave nothing."""
    directory = gateway_dir()
    yield directory
    found = _pid_of(directory / "gateway.pid")
    if found is None:
        return
    pid, started = found
    if _start_time(pid) == started:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while _start_time(pid) == started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _start_time(pid) != started, "the gateway daemon did not stop"


def envoy_pid(directory: Path) -> int:
    """The gateway's Envoy: the daemon's child."""
    found = _pid_of(directory / "gateway.pid")
    assert found is not None, "no gateway daemon"
    pid = found[0]
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for child in children:
        exe = os.readlink(f"/proc/{child}/exe")
        if Path(exe).name.startswith("envoy"):
            return int(child)
    raise AssertionError(f"no envoy among the daemon's children {children}")


def start_probe(name: str, fakenet: FakeNet, allow: list[str],
                *extra: str) -> Probe:
    args = ["run", "--gateway", "--name", name, "--dns-upstream", fakenet.dns,
            "--read", str(fakenet.ca_pem_path), *_allow(fakenet, allow), *extra]
    proc = subprocess.Popen(
        netfence_argv(*args, "--", "python3", "-c", PROBE, str(fakenet.ca_pem_path)),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return Probe(proc)


def end(probe: Probe) -> int:
    assert probe.proc.stdin is not None and probe.proc.stdout is not None
    probe.proc.stdin.close()
    try:
        code = probe.proc.wait(30)
    except subprocess.TimeoutExpired:
        probe.proc.kill()
        code = probe.proc.wait()
    assert probe.proc.stderr is not None
    probe.stderr = probe.proc.stderr.read()
    probe.proc.stdout.close()
    probe.proc.stderr.close()
    return code


def comes_back(probe: Probe, command: str, timeout: float = 20) -> bool:
    """Whether `command` succeeds (200) again within `timeout`."""
    deadline = time.monotonic() + timeout
    while probe.status(command) != 200:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def namespaces_of(name: str) -> list[Path]:
    """The workload's network namespaces: one per run (gateway/member.py: ns_name)."""
    return [p for p in Path("/run/netns").glob(f"netfence-{name}-*")
            if p.name.removeprefix(f"netfence-{name}-").isalnum()]


def gone(name: str, timeout: float = 20) -> bool:
    """Whether the workload's namespace and state are removed within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not namespaces_of(name) and not (state_root() / name).exists():
            return True
        time.sleep(0.05)
    return False


def spare_namespace(timeout: float = 10) -> Path | None:
    """The namespace the gateway made ahead (gateway/spares.py), once it is there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(Path("/run/netns").glob("netfence_spare-*"))
        if found:
            return found[0]
        time.sleep(0.05)
    return None


def test_two_workloads_share_one_envoy_each_with_its_own_policy(
        fakenet: FakeNet, gateway: Path) -> None:
    one = start_probe("nf-gw-one", fakenet, ["allowed.test"])
    two = start_probe("nf-gw-two", fakenet, ["other.test"])
    try:
        assert one.status("open allowed.test") == 200
        assert one.status("get http://other.test/") == 403
        assert "gaierror" in str(one.status("resolve other.test"))  # its own dnsmasq
        assert one.status("direct allowed.test") == 200  # the transparent path
        assert two.status("get http://other.test/") == 200
        assert two.status("get http://allowed.test/") == 403
        assert two.status("resolve other.test") == "10.203.0.3"
        assert two.status("direct allowed.test") != 200

        # One Envoy serves both; no netfence (Python) process stays per workload: the
        # process the client started is now the workload's signal forwarder.
        envoy = envoy_pid(gateway)
        for probe in (one, two):
            exe = Path(os.readlink(f"/proc/{probe.proc.pid}/exe")).name
            assert not exe.startswith("python"), exe
        listed = {w["name"]: w for w in json.loads(netfence("ps", "--json").stdout)}
        assert {"nf-gw-one", "nf-gw-two"} <= set(listed)

        # A policy change through the gateway: new connections follow it, the tunnel
        # opened before stays up, the other workload is untouched.
        done = update("nf-gw-one", fakenet, ["allowed.test", "other.test"])
        assert done.returncode == 0, done.stderr
        assert one.status("get http://other.test/") == 200
        assert one.status("again allowed.test") == 200
        assert two.status("get http://allowed.test/") == 403

        # The second leaves: its fence goes, the first keeps its tunnel and policy.
        assert end(two) == 0
        assert gone("nf-gw-two"), "the second workload's fence was not removed"
        assert one.status("again allowed.test") == 200
        assert one.status("get http://other.test/") == 200
        assert envoy_pid(gateway) == envoy  # never restarted

        deadline = time.monotonic() + 10  # Envoy writes its log out every second
        while time.monotonic() < deadline:
            logged = netfence("logs", "nf-gw-one", "--json").stdout.decode().splitlines()
            hosts = {json.loads(line).get("host") for line in logged}
            if "other.test" in hosts:
                break
            time.sleep(0.2)
        assert "other.test" in hosts, logged
    finally:
        for probe in (one, two):
            if probe.proc.poll() is None:
                end(probe)
    assert gone("nf-gw-one")


def test_a_killed_gateway_envoy_fails_closed_and_comes_back(
        fakenet: FakeNet, gateway: Path) -> None:
    probe = start_probe("nf-gw-kill", fakenet, ["allowed.test"])
    try:
        assert probe.status("get http://allowed.test/") == 200
        assert probe.status("open allowed.test") == 200  # a tunnel, in use
        first = envoy_pid(gateway)
        os.kill(first, signal.SIGKILL)  # the gateway's Envoy, found as the daemon's child
        # Closed meanwhile: the tunnel is cut, nothing listens in the namespace, and
        # nothing else leads out (asked at once: the daemon takes longer than that to start
        # Envoy again).
        assert probe.status("again allowed.test") != 200
        assert probe.status("get http://allowed.test/") != 200
        assert comes_back(probe, "get http://allowed.test/")
        assert probe.status("get http://other.test/") == 403
        assert envoy_pid(gateway) != first
        assert probe.proc.poll() is None  # the workload never noticed but for the outage
    finally:
        end(probe)
    assert gone("nf-gw-kill")


def test_a_killed_daemon_is_started_again_and_takes_its_workloads_over(
        fakenet: FakeNet, gateway: Path) -> None:
    probe = start_probe("nf-gw-adopt", fakenet, ["allowed.test"])
    try:
        assert probe.status("get http://allowed.test/") == 200
        found = _pid_of(gateway / "gateway.pid")
        assert found is not None
        # Its namespace made ahead is left too: the next daemon removes it (at the end,
        # nothing_left_behind).
        assert spare_namespace() is not None
        os.kill(found[0], signal.SIGKILL)  # the daemon this test's run started
        deadline = time.monotonic() + 10
        while _start_time(found[0]) == found[1] and time.monotonic() < deadline:
            time.sleep(0.05)
        # Its Envoy died with it: closed, and the workload runs on.
        assert probe.status("get http://allowed.test/") != 200
        assert probe.proc.poll() is None
        # The next netfence command starts a daemon, which takes the workload over.
        listed = netfence("ps", "--json")
        assert "nf-gw-adopt" in listed.stdout.decode(), listed.stderr
        assert comes_back(probe, "get http://allowed.test/")
        assert probe.status("get http://other.test/") == 403
        assert _pid_of(gateway / "gateway.pid") != found
        # Its policy can change again: the new daemon answers for it.
        done = update("nf-gw-adopt", fakenet, ["allowed.test", "other.test"])
        assert done.returncode == 0, done.stderr
        assert probe.status("get http://other.test/") == 200
    finally:
        end(probe)
    assert gone("nf-gw-adopt")


def test_an_http_workload_is_reached_through_its_own_ingress(
        net_args: list[str], gateway: Path) -> None:
    started = netfence("run", "--gateway", *net_args, "--name", "nf-gw-http", "--detach",
                       "--transport", "streamable-http", "--target-port", "8000", "--",
                       "python3", "-c", echo_server("127.0.0.1", 8000))
    try:
        assert started.returncode == 0, started.stderr
        err = started.stderr.decode()
        assert "nf-gw-http: clients connect to http://127.0.0.1:" in err, err
        url = err.split("clients connect to ", 1)[1].split()[0]
        assert url.endswith("/mcp"), url
        base = url.removesuffix("/mcp")
        status, body = get_when_up(base + "/index.html", timeout=20)
        assert status == 200 and body == ECHO_BODY, (status, body)
        # The ingress policy: a client naming another host is refused.
        assert get(base + "/index.html", host="evil.example")[0] == 403
        listed = {w["name"]: w for w in json.loads(netfence("ps", "--json").stdout)}
        assert listed["nf-gw-http"]["url"] == url
    finally:
        stopped = netfence("stop", "nf-gw-http")
    assert stopped.returncode == 0, stopped.stderr
    assert gone("nf-gw-http")


def term_reaches_the_workload(name: str) -> None:
    """SIGTERM to the run's process reaches the workload's handler; its status comes back."""
    trap = "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.1; done"
    proc = subprocess.Popen(
        netfence_argv("run", "--gateway", "--name", name, "--", "sh", "-c", trap),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline() == b"ready\n", proc.stderr.read()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 7
    assert proc.stdout.read() == b"got-term\n"
    proc.stdout.close()
    proc.stderr.close()


def test_signals_status_and_a_killed_run_are_as_with_an_own_fence(
        fakenet: FakeNet, gateway: Path) -> None:
    # The first run starts the daemon: no starter yet, the run's own exec.
    assert keys_the_workload_finds("--gateway", "--name", "nf-gw-keys0") == 0
    term_reaches_the_workload("nf-gw-sig")
    assert gone("nf-gw-sig")

    # kill -9 of the process the client started (the forwarder): the sandbox dies with it
    # and the daemon removes the fence.
    code = netfence("run", "--gateway", "--name", "nf-gw-exit", "--", "sh", "-c", "exit 42")
    assert code.returncode == 42, code.stderr
    proc = subprocess.Popen(
        # A duration no other test sleeps: the containers lane's run meanwhile (sleep 60).
        netfence_argv("run", "--gateway", "--name", "nf-gw-nine", "--", "sh", "-c",
                      "echo ready; sleep 60.7"),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline() == b"ready\n", proc.stderr.read()
    proc.kill()
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    assert gone("nf-gw-nine")
    assert not [p for p in Path("/proc").iterdir() if p.name.isdigit()
                and _cmdline(p).startswith("sleep 60.7")]


def _imports(stderr: bytes) -> set[str]:
    """The modules a `python -X importtime` process imported, from its stderr."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.decode().splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


def _starter_answers(directory: Path, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
            try:
                sock.connect(str(directory / "starter.sock"))
                return True
            except OSError:
                time.sleep(0.05)
    return False


def test_a_warm_run_is_the_starters_and_imports_nothing_of_the_cli(
        fakenet: FakeNet, gateway: Path) -> None:
    first = netfence("run", "--gateway", "--detach", "--name", "nf-gw-keep", "--", "sleep", "60")
    assert first.returncode == 0, first.stderr
    try:
        assert _starter_answers(gateway), "the gateway's starter does not answer"
        timed = [sys.executable, "-X", "importtime", "-m", "netfence", "run", "--gateway"]
        # The run's process imports only netfence's handoff; a worker did the rest, the
        # workload is that process (the exit status, signals: the forwarder it became).
        # (Not measured by coverage, whose start-up in the process imports json and more.)
        bare = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_PROCESS")}
        warm = subprocess.run([*timed, "--name", "nf-gw-warm", "--", "sh", "-c", "exit 5"],
                              capture_output=True, timeout=60, env=bare)
        assert warm.returncode == 5, warm.stderr[-2000:]
        netfence_modules = {m for m in _imports(warm.stderr) if m.startswith("netfence")}
        assert netfence_modules <= {"netfence", "netfence.__main__", "netfence.handoff",
                                    "netfence.errors", "netfence.keyring"}, netfence_modules
        assert "pydantic" not in _imports(warm.stderr)
        # Nor the stdlib's wrappers that cost a warm start's time (its C modules instead).
        assert not {"json", "socket", "typing", "re", "threading"} & _imports(warm.stderr)
        term_reaches_the_workload("nf-gw-warmsig")
        # The run's process leaves its caller's session keyring before its exec.
        assert keys_the_workload_finds("--gateway", "--name", "nf-gw-keys") == 0
        # An error is the run's one line and status, as without the starter.
        bad = netfence("run", "--gateway", "--name", "nf-gw-keep", "--", "true")
        assert bad.returncode == 2
        assert bad.stderr.decode().splitlines() == [
            "netfence: error: a workload named 'nf-gw-keep' is already running "
            "(netfence stop nf-gw-keep, or choose another --name)"]
        # What the gateway does not serve, the run's process does itself, said once.
        own = subprocess.run([*timed, "--proxy", "squid", "--name", "nf-gw-own", "--", "true"],
                             capture_output=True, timeout=60)
        assert own.returncode == 0, own.stderr[-2000:]
        assert "netfence.cli.main" in _imports(own.stderr)
        assert own.stderr.decode().count("this workload gets a fence of its own") == 1
    finally:
        netfence("stop", "nf-gw-keep")
    assert gone("nf-gw-warm") and gone("nf-gw-warmsig") and gone("nf-gw-keep")


def test_a_start_takes_the_namespace_made_ahead_and_a_failed_check_leaves_nothing(
        gateway: Path) -> None:
    first = netfence("run", "--gateway", "--detach", "--name", "nf-gw-ahead1", "--",
                     "sleep", "60")
    try:
        assert first.returncode == 0, first.stderr
        spare = spare_namespace()
        assert spare is not None, "the gateway made no namespace ahead"
        made = spare.stat().st_ino
        second = netfence("run", "--gateway", "--detach", "--name", "nf-gw-ahead2", "--",
                          "sleep", "60")
        assert second.returncode == 0, second.stderr
        (taken,) = namespaces_of("nf-gw-ahead2")
        assert taken.stat().st_ino == made and not spare.exists()
        following = spare_namespace()  # and the next one is made
        assert following is not None and following.stat().st_ino != made
        # A check that fails while the daemon builds the fence fails the run as before
        # (one line, its status) and leaves nothing: the daemon removes the fence.
        bad = netfence("run", "--gateway", "--name", "nf-gw-ahead3", "--", "no-such-program")
        assert bad.returncode == 2
        assert bad.stderr.decode().splitlines() == [
            "netfence: error: no-such-program: command not found (give its full path, or "
            "install it)"], bad.stderr
        assert gone("nf-gw-ahead3")
    finally:
        for name in ("nf-gw-ahead1", "nf-gw-ahead2"):
            netfence("stop", name)
    assert gone("nf-gw-ahead1") and gone("nf-gw-ahead2")


def test_a_dnsmasq_that_fails_to_start_fails_the_run_and_leaves_nothing(
        gateway: Path, tmp_path: Path) -> None:
    # The daemon this run starts finds dnsmasq on the run's PATH: a stand-in that fails
    # once the workload's listeners are published (the daemon waits for dnsmasq only
    # then), which must fail the run and take them out again.
    stand_in = tmp_path / "bin" / "dnsmasq"
    stand_in.parent.mkdir()
    stand_in.write_text("#!/bin/sh\nsleep 0.3\necho 'stand-in: no' >&2\nexit 3\n")
    stand_in.chmod(0o755)
    env = {**os.environ, "PATH": f"{stand_in.parent}:{os.environ.get('PATH', '')}"}
    done = subprocess.run(netfence_argv("run", "--gateway", "--name", "nf-gw-nodns", "--",
                                        "true"), env=env, capture_output=True, timeout=60)
    assert done.returncode != 0
    assert b"exited with status 3 while starting: stand-in: no" in done.stderr, done.stderr
    assert gone("nf-gw-nodns")
    # Its listeners were taken, then removed: draining at most, none active or warming.
    dump = json.loads(admin_get(gateway / ADMIN_SOCKET_NAME,
                                "/config_dump?resource=dynamic_listeners"))
    states = {key for listener in dump["configs"]
              if listener["name"].startswith("nf-gw-nodns.")
              for key in listener if key.endswith("_state")}
    assert states == {"draining_state"}, states


def test_a_warm_start_whose_fence_fails_never_runs_the_workload(
        gateway: Path, tmp_path: Path) -> None:
    # A warm run's sandbox is made while the daemon publishes its fence, held before the
    # workload runs: a fence that then fails (dnsmasq, a stand-in failing for this name
    # only, once the listeners are published) must end it unrun, with the run's error.
    stand_in = tmp_path / "bin" / "dnsmasq"
    stand_in.parent.mkdir()
    real = shutil.which("dnsmasq")
    assert real is not None, "dnsmasq is not installed (scripts/install installs it)"
    stand_in.write_text(f"#!/bin/sh\ncase \"$*\" in *nf-gw-held*)\n"
                        "  sleep 0.3; echo 'stand-in: no' >&2; exit 3 ;;\nesac\n"
                        f"exec {real} \"$@\"\n")
    stand_in.chmod(0o755)
    env = {**os.environ, "PATH": f"{stand_in.parent}:{os.environ.get('PATH', '')}"}
    first = subprocess.run(netfence_argv("run", "--gateway", "--detach", "--name",
                                         "nf-gw-keep2", "--", "sleep", "60"),
                           env=env, capture_output=True, timeout=60)
    assert first.returncode == 0, first.stderr
    try:
        assert _starter_answers(gateway), "the gateway's starter does not answer"
        done = subprocess.run(netfence_argv("run", "--gateway", "--name", "nf-gw-held", "--",
                                            "sh", "-c", "echo RAN"),
                              env=env, capture_output=True, timeout=60)
        assert done.stdout == b"", done.stdout  # the workload never ran
        assert done.returncode == 1, done.stderr
        assert done.stderr.decode().splitlines() == [
            "netfence: error: dns exited with status 3 while starting: stand-in: no"], \
            done.stderr
        assert gone("nf-gw-held")
    finally:
        netfence("stop", "nf-gw-keep2")
    assert gone("nf-gw-keep2")


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


COUNT = 20


def test_twenty_workloads_start_together_and_all_tear_down(
        fakenet: FakeNet, gateway: Path) -> None:
    # Each fetches an allowed page through its own fence, prints the status, and waits
    # for its stdin to end.
    script = ("curl -s -o /dev/null -w '%{http_code}\\n' --max-time 10 "
              "http://allowed.test/; read line; exit 0")

    def one(i: int) -> tuple[subprocess.Popen[bytes], bytes]:
        proc = subprocess.Popen(
            netfence_argv("run", "--gateway", "--name", f"nf-gw-{i:02d}",
                          "--dns-upstream", fakenet.dns,
                          *_allow(fakenet, ["allowed.test"]), "--", "sh", "-c", script),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None
        return proc, proc.stdout.readline()

    with ThreadPoolExecutor(COUNT) as pool:
        started = list(pool.map(one, range(COUNT)))
    try:
        answers = [line for _p, line in started]
        errors = [p.stderr.read() if p.stderr and p.poll() is not None else b""
                  for p, _l in started]
        assert answers == [b"200\n"] * COUNT, (answers, errors)
        assert len(json.loads(netfence("ps", "--json").stdout)) >= COUNT
    finally:
        for proc, _line in started:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.close()
        for proc, _line in started:
            proc.wait(30)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
    assert all(proc.returncode == 0 for proc, _l in started)
    assert all(gone(f"nf-gw-{i:02d}") for i in range(COUNT))
