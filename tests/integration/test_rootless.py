"""What holds only for a rootless fence (issue 17): netfence run by the session's
unprivileged test user, no sudo. The guarantees shared with root's fence are the other
integration tests' rootless cases (tests/support/fence.py, `both_privileges`)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.support.fence import acting_as, acting_as_root, netfence, netfence_argv
from tests.support.rootless import RootlessUser

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("nothing_left_behind")]


@pytest.fixture(autouse=True)
def user(rootless_user: RootlessUser) -> Iterator[RootlessUser]:
    with acting_as(rootless_user):
        yield rootless_user


def one_line(done: subprocess.CompletedProcess[bytes]) -> str:
    text = done.stderr.decode()
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def curl(*args: str) -> tuple[str, ...]:
    return ("curl", "-sS", "-m", "10", *args)


# --- the workload is the caller ------------------------------------------------------


def test_the_workload_runs_as_the_caller(user: RootlessUser, net_args: list[str]) -> None:
    for extra in ((), ("--user", user.name), ("--user", str(user.uid))):
        done = netfence("run", *net_args, *extra, "--", "id", "-u")
        assert done.stdout == f"{user.uid}\n".encode(), (extra, done.stderr)


@pytest.mark.parametrize("other", ["nobody", "root", "0", "no-such-user-xyz"])
def test_another_user_is_refused_in_one_line(user: RootlessUser, net_args: list[str],
                                             other: str) -> None:
    done = netfence("run", *net_args, "--user", other, "--", "true")
    assert done.returncode == 2
    line = one_line(done)
    assert f"--user {other}" in line and user.name in line and "sudo" in line, line


# --- where user namespaces are not allowed ---------------------------------------------


def test_no_user_namespaces_is_one_line_exit_2(user: RootlessUser, net_args: list[str]
                                               ) -> None:
    """Inside `bwrap --disable-userns` any new user namespace fails with ENOSPC, as where
    user.max_user_namespaces is 0: `run` says so before anything starts, and doctor too."""
    def without_userns(*args: str) -> subprocess.CompletedProcess[bytes]:
        return user.run("bwrap", "--dev-bind", "/", "/", "--unshare-user", "--disable-userns",
                        "--", user.python, "-m", "netfence", *args)

    done = without_userns("run", *net_args, "--", "true")
    assert done.returncode == 2, done.stderr
    line = one_line(done)
    assert "user namespaces" in line and "max_user_namespaces" in line, line
    assert "sudo" in line, line  # the other remedy
    doctor = without_userns("doctor")
    assert doctor.returncode != 0, doctor.stdout + doctor.stderr
    line = privileges_line(doctor)
    assert line.startswith("MISSING") and "max_user_namespaces" in line, line
    assert list(user.state_root.glob("*")) == []  # nothing was claimed


# --- doctor and mcp-config -------------------------------------------------------------


def privileges_line(done: subprocess.CompletedProcess[bytes]) -> str:
    text = (done.stdout + done.stderr).decode()
    found = [line.strip() for line in text.splitlines() if "privileges:" in line]
    assert len(found) == 1, text
    return found[0]


def test_doctor_says_rootless(user: RootlessUser) -> None:
    """As the user, with a login's PATH (no sbin): every check passes (the container
    engine is optional), the privileges line says rootless."""
    done = netfence("doctor")
    line = privileges_line(done)
    assert line.startswith("ok") and "rootless" in line and f"uid {user.uid}" in line, line
    assert done.returncode == 0, (done.stdout + done.stderr).decode()


def _entry(done: subprocess.CompletedProcess[bytes]) -> dict[str, object]:
    assert done.returncode == 0, done.stderr
    servers = json.loads(done.stdout)["mcpServers"]
    entry: dict[str, object] = servers["fenced"]
    return entry


def test_mcp_config_needs_no_sudo_rootless(user: RootlessUser) -> None:
    args = ("mcp-config", "--name", "fenced", "--profile", "none", "--", "/bin/cat")
    theirs = _entry(netfence(*args))
    assert theirs["command"] != "sudo" and "sudo" not in theirs.get("args", []), theirs
    assert "/bin/cat" in theirs.get("args", []), theirs
    with acting_as_root():
        roots = _entry(netfence(*args))
    assert roots["command"] == "sudo", roots  # root's entry is for a client run as a user


# --- a supervisor killed outright ------------------------------------------------------


def _record(user: RootlessUser, name: str) -> dict[str, object] | None:
    try:
        found: dict[str, object] = json.loads(
            (user.state_root / name / "workload.json").read_text())
    except (OSError, ValueError):
        return None
    return found


@pytest.mark.parametrize("proxy", ["envoy", "squid"])
def test_a_killed_supervisor_leaves_no_process(user: RootlessUser, net_args: list[str],
                                               proxy: str) -> None:
    """SIGKILL allows no teardown; rootless, every process of the fence dies with the
    supervisor all the same (parent-death signals; no privilege was dropped, which would
    clear them). The stale record goes at the next command."""
    name = f"nf-rl-killed-{proxy}"
    proc = subprocess.Popen(netfence_argv("run", "--proxy", proxy, *net_args, "--name", name,
                                          "--", "sleep", "60"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not any(cmd.startswith("sleep 60") for _, cmd in user.processes()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
            time.sleep(0.05)
        running = user.processes()
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    commands = " | ".join(cmd for _, cmd in running)
    for part in ("bwrap", "dnsmasq", proxy, "sleep 60"):
        assert part in commands, commands  # what must die, seen running
    deadline = time.monotonic() + 5
    while (left := user.processes()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == [], left
    assert _record(user, name) is not None  # the stale record, for the next command
    assert netfence("ps").returncode == 0
    assert not (user.state_root / name).exists()


# --- the workload holds nothing over the fence ------------------------------------------

ESCAPES = {
    "nsenter": "nsenter --net=/proc/1/ns/net true",
    "unshare-n": "unshare -n true",
    "unshare-rn": "unshare -rn true",
    "route": "/usr/sbin/ip route del default",
    "nft": "/usr/sbin/nft flush ruleset",
    "lo-down": "/usr/sbin/ip link set lo down",
    "sysctl": "echo 0 > /proc/sys/net/ipv4/ip_unprivileged_port_start",
}


@pytest.mark.parametrize("proxy", ["envoy", "squid"])
def test_the_workload_cannot_change_or_leave_its_network(
        user: RootlessUser, net_args: list[str], proxy: str) -> None:
    """Root in the holder's user namespace is the fence's, never the workload's: it can
    neither leave the network namespace nor change its routes and rules, and the fence
    works as before after it tried."""
    tries = "; ".join(f"{cmd} 2>/dev/null; echo {key}=$?" for key, cmd in ESCAPES.items())
    script = (f"{tries}; /usr/sbin/ip route show default; "
              "curl -sS -m 10 http://allowed.test/; echo; "
              "curl -sS -m 10 --noproxy '*' http://other.test/ >/dev/null; echo direct=$?")
    done = netfence("run", "--proxy", proxy, *net_args, "--allow-host", "allowed.test",
                    "--", "sh", "-c", script)
    out = done.stdout.decode()
    for key in ESCAPES:
        assert f"{key}=" in out and f"{key}=0" not in out, out + done.stderr.decode()
    assert "default dev lo" in out, out  # the route to the fence, still there
    assert "fakenet ok" in out, out + done.stderr.decode()
    assert "direct=0" not in out, out


def test_the_fence_processes_cannot_be_signalled_by_pid(user: RootlessUser,
                                                        net_args: list[str]) -> None:
    """Same uid, other PID namespace: not one of the fence's host PIDs names a process
    the workload can signal (nor sees in /proc)."""
    name = "nf-rl-signal"
    started = netfence("run", *net_args, "--name", name, "--detach", "--", "sleep", "60")
    assert started.returncode == 0, started.stderr
    try:
        pids = [pid for pid, _ in user.processes()]
        assert pids and min(pids) > 100, pids  # none of them a PID of the sandbox's own
        code = ("import os, sys\nfor pid in map(int, sys.argv[1:]):\n"
                " try:\n  os.kill(pid, 0); print(pid, 'SIGNALABLE')\n"
                " except OSError as e:\n  print(pid, 'errno', e.errno)\n"
                "print('proc', sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))")
        done = netfence("run", *net_args, "--", "python3", "-c", code, *map(str, pids))
        out = done.stdout.decode()
        assert all(f"{pid} errno 3" in out for pid in pids), out + done.stderr.decode()
        assert max(int(p) for p in out.split("proc [")[1].split("]")[0].split(", ")) < 20, out
        assert all(pid in [p for p, _ in user.processes()] for pid in pids)  # all still up
    finally:
        assert netfence("stop", name).returncode == 0


# --- ps, logs and stop: each sees only their own ----------------------------------------


def test_root_and_the_user_see_only_their_own_workloads(user: RootlessUser,
                                                        net_args: list[str]) -> None:
    mine, roots = "nf-rl-mine", "nf-rl-roots"
    started = netfence("run", *net_args, "--name", mine, "--detach", "--", "sleep", "60")
    assert started.returncode == 0, started.stderr
    try:
        with acting_as_root():
            started = netfence("run", *net_args, "--name", roots, "--detach", "--",
                               "sleep", "60")
            assert started.returncode == 0, started.stderr
        try:
            listed = netfence("ps", "--json").stdout.decode()
            assert mine in listed and roots not in listed, listed
            assert netfence("stop", roots).returncode != 0
            assert netfence("logs", roots).returncode != 0
            with acting_as_root():
                listed = netfence("ps", "--json").stdout.decode()
                assert roots in listed and mine not in listed, listed
                assert netfence("stop", mine).returncode != 0
            assert mine in netfence("ps", "--json").stdout.decode()  # untouched by root's stop
        finally:
            with acting_as_root():
                assert netfence("stop", roots).returncode == 0
    finally:
        assert netfence("stop", mine).returncode == 0
    assert mine not in netfence("ps", "--json").stdout.decode()


# --- one fence's state out of another's reach ------------------------------------------


def test_every_state_root_of_the_user_is_hidden_from_a_home_grant(
        user: RootlessUser, net_args: list[str]) -> None:
    """A run from a session without XDG_RUNTIME_DIR (su, cron, ssh without logind) keeps
    its state in ~/.local/state/netfence: a workload of a normal session granted the home
    must not see that fence's configs or its Envoy admin socket, even one started later
    (the directory is made and covered at every start)."""
    elsewhere = user.home / ".local" / "state" / "netfence"
    done = netfence("run", *net_args, "--read", str(user.home), "--", "sh", "-c",
                    f"ls -A {elsewhere} {user.state_root}; echo listed")
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().split() == [f"{elsewhere}:", f"{user.state_root}:",
                                            "listed"], done.stdout
    assert elsewhere.is_dir()  # made, so that a later fence's state lands under the cover
    # One that exists already (another fence's) is covered too.
    probe = elsewhere / "other-fence"
    assert user.run("mkdir", "-p", str(probe)).returncode == 0
    try:
        done = netfence("run", *net_args, "--read", str(user.home), "--", "ls", "-A",
                        str(elsewhere))
        assert done.returncode == 0 and done.stdout == b"", done.stdout + done.stderr
    finally:
        user.run("rmdir", str(probe))
