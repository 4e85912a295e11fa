"""`netfence run` in the namespace runtime, end to end: real namespaces, real Envoy,
Squid and dnsmasq, a simulated internet; every case runs for both backends, and those
marked `both_privileges` again rootless, as the session's unprivileged test user."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from netfence.runtimes import state
from tests.support.fakenet import FakeNet
from tests.support.fence import (
    both_privileges,
    netfence,
    netfence_argv,
    root_only,
    state_root,
)
from tests.support.ingress import ECHO_BODY, echo_server, get, get_when_up

pytestmark = [pytest.mark.integration,
              pytest.mark.usefixtures("nothing_left_behind", "privilege")]


def fenced(proxy: str, net_args: list[str], *command: str, allow: tuple[str, ...] = (),
           extra: tuple[str, ...] = (), input: bytes | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    args = ["run", "--proxy", proxy, *net_args, *extra]
    for host in allow:
        args += ["--allow-host", host]
    return netfence(*args, "--", *command, input=input, timeout=timeout)


def curl(*args: str) -> tuple[str, ...]:
    return ("curl", "-sS", "-m", "10", *args)


def status_of(*args: str) -> tuple[str, ...]:
    """curl printing the body, then the status code on a line of its own."""
    return curl("-w", "\n%{http_code}", *args)


class TestEgressMatrix:
    # Rootless, the decisions are the conformance suite's (tests/conformance: its matrix
    # runs against rootless fences too); what runs again here is what no matrix shows.
    def test_allowed_http(self, proxy: str, net_args: list[str], fakenet: FakeNet) -> None:
        done = fenced(proxy, net_args, *curl("http://allowed.test/hello"),
                      allow=("allowed.test",))
        assert done.returncode == 0, done.stderr
        assert b"fakenet ok" in done.stdout
        assert b"host=allowed.test" in done.stdout

    def test_allowed_https_through_connect(self, proxy: str, net_args: list[str],
                                           fakenet: FakeNet) -> None:
        done = fenced(proxy, net_args, *curl("--cacert", str(fakenet.ca_pem_path),
                                             "https://www.allowed.test/tls"),
                      allow=("*.allowed.test",))
        assert done.returncode == 0, done.stderr
        assert b"fakenet ok" in done.stdout

    def test_not_allowlisted_gets_403_naming_the_reason(self, proxy: str,
                                                        net_args: list[str]) -> None:
        done = fenced(proxy, net_args, *status_of("http://other.test/"),
                      allow=("allowed.test",))
        assert done.stdout.endswith(b"\n403"), done.stdout + done.stderr
        assert b"not_allowlisted" in done.stdout

    def test_connect_to_not_allowlisted_is_refused(self, proxy: str,
                                                   net_args: list[str], fakenet: FakeNet) -> None:
        done = fenced(proxy, net_args, *curl("--cacert", str(fakenet.ca_pem_path),
                                             "https://other.test/"),
                      allow=("allowed.test",))
        assert done.returncode != 0
        assert b"fakenet ok" not in done.stdout

    @pytest.mark.parametrize(("host", "reason"), [
        ("hostaddr.test", "host_address"),
        ("loopback.test", "loopback_address"),
        ("metadata.test", "link_local_address"),
        ("private.test", "private_address"),
    ])
    def test_names_resolving_to_denied_addresses(self, proxy: str, net_args: list[str],
                                                 host: str, reason: str) -> None:
        done = fenced(proxy, net_args, *status_of(f"http://{host}/"), allow=(host,))
        assert done.stdout.endswith(b"\n403"), done.stdout + done.stderr
        assert reason.encode() in done.stdout

    @pytest.mark.parametrize("host", ["localhost", "host.docker.internal",
                                      "gateway.docker.internal", "x.localhost"])
    def test_host_names_denied(self, proxy: str, net_args: list[str], host: str) -> None:
        # NO_PROXY exempts localhost; --noproxy "" sends it to the fence all the same.
        done = fenced(proxy, net_args, *status_of("--noproxy", "", f"http://{host}/"),
                      extra=("--profile", "network"))
        assert done.stdout.endswith(b"\n403"), done.stdout + done.stderr
        assert b"denied_name" in done.stdout

    def test_host_address_literal_denied(self, proxy: str, net_args: list[str],
                                         fakenet: FakeNet) -> None:
        done = fenced(proxy, net_args, *status_of(f"http://{fakenet.host_ip}/"),
                      allow=(fakenet.host_ip,))
        assert done.stdout.endswith(b"\n403"), done.stdout + done.stderr
        assert b"host_address" in done.stdout

    def test_port_not_allowed(self, proxy: str, net_args: list[str]) -> None:
        done = fenced(proxy, net_args, *status_of("http://allowed.test:8080/"),
                      allow=("allowed.test",))
        assert done.stdout.endswith(b"\n403"), done.stdout + done.stderr
        assert b"port_not_allowed" in done.stdout
        opened = fenced(proxy, net_args, *curl("http://allowed.test:8080/"),
                        allow=("allowed.test",), extra=("--allow-port", "8080"))
        assert b"fakenet ok" in opened.stdout, opened.stderr

    @both_privileges
    def test_direct_connection_ignoring_the_proxy(self, proxy: str, net_args: list[str],
                                                  fakenet: FakeNet) -> None:
        # With Envoy such a connection lands at the fence and is decided by the name it
        # carries (tests/integration/test_transparent.py); Squid has no such path.
        done = fenced(proxy, net_args, *curl("--noproxy", "*", "http://allowed.test/"),
                      allow=("allowed.test",))
        assert (b"fakenet ok" in done.stdout) is (proxy == "envoy"), done.stdout + done.stderr
        # Without a name, an allowed server's address is not enough.
        code = (f"import socket\ntry:\n s = socket.create_connection(('{fakenet.dns}', 80), 3)\n"
                " s.settimeout(5)\n s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n"
                " print('answer', s.recv(200))\nexcept OSError as e:\n print('refused', e.errno)")
        done = fenced(proxy, net_args, "python3", "-c", code, allow=("allowed.test",))
        assert done.stdout.startswith(b"answer" if proxy == "envoy" else b"refused"), \
            done.stdout + done.stderr
        assert b"fakenet" not in done.stdout

    @both_privileges
    def test_dns_answers_allowed_names_only(self, proxy: str, net_args: list[str],
                                            fakenet: FakeNet) -> None:
        fakenet.clear_queries()
        done = fenced(proxy, net_args, "sh", "-c",
                      "getent hosts allowed.test; echo rc=$?; getent hosts denied.test; "
                      "echo rc=$?", allow=("allowed.test",))
        out = done.stdout.decode()
        assert "10.203.0.2" in out and "allowed.test" in out, out + done.stderr.decode()
        assert out.strip().endswith("rc=2"), out
        asked = {name.rstrip(".").lower() for name, _ in fakenet.queries()}
        assert "denied.test" not in asked and "allowed.test" in asked, asked


@both_privileges
class TestContainment:
    def test_cannot_enter_the_host_network_namespace(self, proxy: str,
                                                     net_args: list[str]) -> None:
        code = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                "for path in ['/proc/1/ns/net', '/run/netns']:\n"
                "  try:\n    fd = os.open(path, os.O_RDONLY)\n"
                "  except OSError as e:\n    print(path, 'unopenable', e.errno); continue\n"
                "  print(path, 'setns', libc.setns(fd, 0x40000000), ctypes.get_errno())\n")
        done = fenced(proxy, net_args, "python3", "-c", code)
        out = done.stdout.decode()
        assert "/proc/1/ns/net" in out, done.stderr
        assert "setns 0" not in out, out
        done = fenced(proxy, net_args, "nsenter", "--net=/proc/1/ns/net", "true")
        assert done.returncode != 0

    def test_fence_processes_invisible_and_unsignalable(self, proxy: str,
                                                        net_args: list[str]) -> None:
        me = os.getpid()
        code = ("import os\npids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
                "print('pids', pids)\n"
                f"try:\n os.kill({me}, 0)\n print('SIGNALABLE')\n"
                "except OSError as e:\n print('kill', e.errno)\n"
                "print('uid', os.getuid(), 'caps', open('/proc/self/status').read()"
                ".split('CapEff:')[1].split()[0])")
        done = fenced(proxy, net_args, "python3", "-c", code)
        out = done.stdout.decode()
        assert "SIGNALABLE" not in out and "kill 3" in out, out + done.stderr.decode()
        assert "uid 0" not in out
        assert "caps 0000000000000000" in out
        pids = [int(p) for p in out.split("pids [")[1].split("]")[0].split(", ")]
        assert max(pids) < 20, out  # its own PID namespace: only the sandbox's processes

    def test_host_unix_sockets_under_run_are_out_of_reach(self, proxy: str,
                                                          net_args: list[str]) -> None:
        """A Unix socket crosses network namespaces: an engine's, D-Bus's or the user
        session's would be a way out of the fence. A socket any user may connect to, where
        those live, must not be there for the workload."""
        path = Path("/run") / f"nf-test-{os.getpid()}-{proxy}.sock"
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(str(path))
            try:
                path.chmod(0o777)
                listener.listen()
                code = ("import socket\ns = socket.socket(socket.AF_UNIX)\n"
                        f"try:\n s.connect({str(path)!r})\n print('CONNECTED')\n"
                        "except OSError as e:\n print('refused', e.errno)\n"
                        "print(open('/etc/resolv.conf').read())")
                done = fenced(proxy, net_args, "python3", "-c", code)
            finally:
                path.unlink()
        out = done.stdout.decode()
        assert "refused 2" in out and "CONNECTED" not in out, out + done.stderr.decode()
        assert "nameserver 127.0.0.1" in out, out  # the fence's DNS, still in place

    def test_fence_state_cannot_be_read_or_written(self, proxy: str,
                                                   net_args: list[str]) -> None:
        name = f"nf-cfgtest-{proxy}"
        state = state_root() / name
        # The workload tries to overwrite every state file, then reports through a
        # request, which the test waits for in the decision log.
        script = (f"ls -A /run/netfence {state_root()}; cat {state}/* ; "
                  f"for f in {state}/* ; do echo pwned > $f; done; "
                  "curl -s -m 5 http://other.test/ >/dev/null; sleep 60")
        started = netfence("run", "--proxy", proxy, *net_args, "--name", name, "--detach",
                           "--allow-host", "allowed.test", "--", "sh", "-c", script)
        assert started.returncode == 0, started.stderr
        try:
            before = {p.name: p.read_bytes() for p in state.iterdir() if p.is_file()}
            assert before, "no state files to protect"
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if "other.test" in netfence("logs", name, "--json").stdout.decode():
                    break
                time.sleep(0.2)
            else:
                pytest.fail("the workload never reported")
            after = {p.name: p.read_bytes() for p in state.iterdir() if p.is_file()}
            # Logs grow on their own; every other file must be exactly as the fence wrote it.
            changed = [n for n in after if after[n] != before.get(n)
                       and not n.endswith(".log")]
            assert changed == [], changed
        finally:
            netfence("stop", name)

    def test_the_callers_session_keyring_is_not_the_workloads(self, proxy: str,
                                                              net_args: list[str]) -> None:
        """Whoever holds a session keyring may read and write it, across users and user
        namespaces: the caller's (an ssh passphrase, a Kerberos ticket) must not be the
        workload's."""
        assert keys_the_workload_finds("--proxy", proxy, *net_args) == 0


def keys_the_workload_finds(*run_options: str) -> int:
    """How many keys a workload run with these options finds in its session keyring, when
    the `netfence run` starts in a session keyring of the test's own holding one key."""
    wrap = ("import ctypes, os, sys\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "assert libc.syscall(250, 1, None) > 0\n"  # KEYCTL_JOIN_SESSION_KEYRING
            "key = libc.syscall(248, b'user', b'nf-secret', b'hunter2', 7, -3)\n"  # add_key
            "assert key > 0, ctypes.get_errno()\n"
            "os.execvp(sys.argv[1], sys.argv[1:])\n")
    # KEYCTL_READ of the session keyring: 4 bytes a key.
    look = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "buf = ctypes.create_string_buffer(4096)\n"
            "print('keys', libc.syscall(250, 11, -3, buf, 4096) // 4)\n")
    argv = netfence_argv("run", *run_options, "--", "python3", "-c", look)
    done = subprocess.run([sys.executable, "-c", wrap, *argv], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    word, count = done.stdout.decode().split()
    assert word == "keys", done.stdout + done.stderr
    return int(count)


class TestProcessContract:
    @both_privileges
    def test_stdio_passthrough_is_byte_exact(self, proxy: str, net_args: list[str]) -> None:
        data = os.urandom(1 << 20) + bytes(range(256))
        done = fenced(proxy, net_args, "cat", input=data)
        assert done.returncode == 0, done.stderr
        assert done.stdout == data

    @both_privileges
    def test_exit_code_is_the_workloads(self, proxy: str, net_args: list[str]) -> None:
        assert fenced(proxy, net_args, "sh", "-c", "exit 7").returncode == 7

    @both_privileges
    def test_crashing_workload_is_cleaned_up(self, proxy: str, net_args: list[str]) -> None:
        done = fenced(proxy, net_args, "sh", "-c", "kill -SEGV $$")
        assert done.returncode == 128 + signal.SIGSEGV

    @both_privileges
    def test_a_supervisor_killed_outright_is_cleaned_up_by_the_next_command(
            self, proxy: str, net_args: list[str]) -> None:
        root_only("rootless, nothing outlives a killed supervisor (no privilege is dropped, "
                  "so every parent-death signal holds): test_rootless.py tests that")
        # SIGKILL allows no teardown. dnsmasq dropped its privileges (which clears the
        # parent-death signal) and the sandbox has none: they outlive the supervisor until
        # the next netfence command finds its record and stops them.
        name = f"nf-killed-{proxy}"
        # The proxy and dnsmasq (stdio: no ingress), then bwrap and its init; Squid's
        # egress and DNS come through a relay of their own (an Envoy), Envoy's own carries
        # its DNS.
        expected = 5 if proxy == "squid" else 4
        # No pipe: the sandbox may outlive the supervisor holding it (a wait for its end
        # would wait for `sleep 60`).
        proc = subprocess.Popen(netfence_argv("run", "--proxy", proxy, *net_args, "--name",
                                              name, "--", "sleep", "60"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            record = state.load(name)
            while (record is None or len(record.processes) < expected) and \
                    time.monotonic() < deadline:
                time.sleep(0.05)
                record = state.load(name)
            assert record is not None and len(record.processes) == expected, record
        finally:
            proc.kill()
            proc.wait(30)
        owned = [(int(pid), str(start)) for pid, start in record.processes]
        survivors = [pid for pid, start in owned if state.process_start_time(pid) == start]
        assert survivors, "nothing outlived the supervisor: this test would prove nothing"
        assert netfence("ps").returncode == 0
        deadline = time.monotonic() + 5
        while any(state.process_start_time(p) == s for p, s in owned) and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p, s in owned if state.process_start_time(p) == s]
        assert not state.state_dir(name).exists()
        assert not Path(f"/run/netns/netfence-{name}").exists()

    @pytest.mark.parametrize(("privilege", "delay"), [
        *(("root", delay) for delay in (0.1, 0.25, 0.4)),
        ("rootless", 0.1), ("rootless", 0.3)], indirect=["privilege"])
    def test_sigterm_while_the_fence_starts_tears_everything_down(
            self, proxy: str, net_args: list[str], delay: float) -> None:
        # Delays straddle the start: before the proxies, while they start, around the
        # moment the sandbox appears. Whatever the moment, nothing may be left behind.
        proc = subprocess.Popen(netfence_argv("run", "--proxy", proxy, *net_args, "--",
                                              "sleep", "30"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            time.sleep(delay)
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode in (130, 128 + signal.SIGTERM, -signal.SIGTERM), proc.returncode


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


@pytest.mark.parametrize("failure", ["stop signal", "Envoy exits"])
def test_a_fence_that_fails_ends_its_held_sandbox_unrun(net_args: list[str], tmp_path: Path,
                                                        failure: str) -> None:
    """The sandbox is made while the proxies start, its workload held until the fence is
    up: a fence that fails never runs it. Envoy with 100,000 names takes half a second
    after the sandbox is held (a gate opened early has let the workload print by the time
    the fence fails); Squid, which starts while the DNS config is written, is up within
    a tenth of one, too soon to fail it there."""
    profile = tmp_path / "long.json"
    hosts = [f"h{i}.example{i % 97}.com" for i in range(100_000)]
    profile.write_text(json.dumps({"name": "long", "network": {"outbound": {
        "allow_host": hosts}}}))
    proc = subprocess.Popen(netfence_argv("run", "--proxy", "envoy", *net_args, "--profile",
                                          str(profile), "--", "echo", "ran"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not any(_comm(c) == "bwrap" for c in _children(proc.pid)):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
            time.sleep(0.002)
        time.sleep(0.1)
        if failure == "stop signal":
            proc.send_signal(signal.SIGTERM)
        else:
            (envoy,) = [c for c in _children(proc.pid) if _comm(c) == "envoy"]
            os.kill(envoy, signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert out == b"", err
    if failure == "stop signal":
        assert proc.returncode == 128 + signal.SIGTERM, err
    else:
        assert proc.returncode == 1 and b"exited" in err, err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@both_privileges
def test_ingress_reaches_an_http_server_inside(proxy: str, net_args: list[str]) -> None:
    port = _free_port()
    server = echo_server("127.0.0.1", 8000)
    proc = subprocess.Popen(
        netfence_argv("run", "--proxy", proxy, *net_args, "--transport", "streamable-http",
                      "--target-port", "8000", "--port", str(port), "--", "python3", "-c",
                      server),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        status, body = get_when_up(f"http://127.0.0.1:{port}/index.html", timeout=20)
        assert status == 200 and body == ECHO_BODY, (status, body)
        status, _ = get(f"http://127.0.0.1:{port}/index.html", host="evil.example")
        assert status == 403
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/mcp".encode() in err


def test_detached_http_workload_prints_its_url(proxy: str, net_args: list[str]) -> None:
    name = f"nf-detach-url-{proxy}"
    started = netfence("run", "--proxy", proxy, *net_args, "--name", name, "--detach",
                       "--transport", "sse", "--target-port", "8000", "--", "python3", "-c",
                       echo_server("127.0.0.1", 8000))
    try:
        assert started.returncode == 0, started.stderr
        err = started.stderr.decode()
        assert f"{name}: clients connect to http://127.0.0.1:" in err, err
        url = err.split("clients connect to ", 1)[1].split()[0]
        assert url.endswith("/sse"), url
        status, body = get_when_up(url.removesuffix("/sse") + "/index.html", timeout=20)
        assert status == 200 and body == ECHO_BODY, (status, body)
    finally:
        stopped = netfence("stop", name)
    assert stopped.returncode == 0, stopped.stderr


@both_privileges
def test_detach_ps_logs_stop(proxy: str, net_args: list[str]) -> None:
    name = f"nf-detach-{proxy}"
    started = netfence("run", "--proxy", proxy, *net_args, "--allow-host", "allowed.test",
                       "--name", name, "--detach", "--", "sh", "-c",
                       "curl -s -m 5 http://allowed.test/ >/dev/null; "
                       "curl -s -m 5 http://other.test/ >/dev/null; sleep 60")
    assert started.returncode == 0, started.stderr
    try:
        listed = netfence("ps", "--json")
        assert name in listed.stdout.decode()
        deadline = time.monotonic() + 20
        lines: list[str] = []
        while time.monotonic() < deadline and len(lines) < 2:
            lines = netfence("logs", name, "--json").stdout.decode().splitlines()
            time.sleep(0.3)
        text = "\n".join(lines)
        assert "allowed.test" in text and "other.test" in text, text
        denied = netfence("logs", name, "--denied", "--json").stdout.decode()
        assert "other.test" in denied and "allowed.test" not in denied, denied
        # The text form names the reason and the remedy on the denial's line.
        (line,) = netfence("logs", name, "--denied").stdout.decode().splitlines()
        assert "deny" in line and "other.test:80" in line and "not_allowlisted" in line, line
        assert line.endswith("to allow: add it to network.outbound.allow_host or pass "
                             "--allow-host other.test"), line
    finally:
        stopped = netfence("stop", name)
    assert stopped.returncode == 0, stopped.stderr
    assert name not in netfence("ps", "--json").stdout.decode()


@both_privileges
def test_squid_itself_listens_on_the_workloads_proxy_port(net_args: list[str]) -> None:
    # No relay between the workload and Squid (runtimes/namespace/bindshim.py): the socket
    # listening on 127.0.0.1:3128 in the workload's namespace is one Squid holds.
    assert _proxy_port_holder("nf-squid-listens", netfence_argv(), net_args) == "squid"


def test_without_the_bind_shim_squid_is_reached_through_a_relay(net_args: list[str]) -> None:
    # An install that could not build the shim (no C compiler) relays, as before it.
    unbuilt = ("import sys; import netfence.runtimes.namespace.bindshim as b\n"
               "b.library = lambda: None\n"
               "sys.argv[0] = 'netfence'; from netfence.cli.main import main; main()")
    holder = _proxy_port_holder("nf-squid-relayed", [sys.executable, "-c", unbuilt], net_args)
    assert holder == "envoy"


def _proxy_port_holder(name: str, argv: list[str], net_args: list[str]) -> str:
    """Which fence process holds the socket listening on 127.0.0.1:3128 in the namespace
    of a detached Squid fence started with `argv`, once its workload reached an allowed
    host through it."""
    started = subprocess.run(
        [*argv, "run", "--proxy", "squid", *net_args, "--allow-host", "allowed.test",
         "--name", name, "--detach", "--", "sh", "-c",
         "curl -sS -m 10 http://allowed.test/hello; cat /proc/net/tcp; sleep 60"],
        capture_output=True, timeout=60)
    assert started.returncode == 0, started.stderr
    try:
        log = state_root() / name / "workload.log"
        deadline = time.monotonic() + 15
        while "local_address" not in _text(log) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "fakenet ok" in _text(log), _text(log)
        # /proc/net/tcp: "sl local rem st ... uid timeout inode"; 127.0.0.1:3128 listening.
        listening = [line.split() for line in _text(log).splitlines() if ":" in line]
        (inode,) = [f[9] for f in listening if f[1] == "0100007F:0C38" and f[3] == "0A"]
        record = json.loads((state_root() / name / "workload.json").read_text())
        for pid, _started in record["processes"]:
            with contextlib.suppress(OSError):
                fds = Path(f"/proc/{pid}/fd").iterdir()
                if f"socket:[{inode}]" in (os.readlink(fd) for fd in fds):
                    program = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
                    return Path(program.decode()).name
        return "none of the fence's processes"
    finally:
        stopped = netfence("stop", name)
        assert stopped.returncode == 0, stopped.stderr


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


class TestUsers:
    @both_privileges
    @pytest.mark.parametrize(("extra", "env", "uid"), [
        ((), {}, "65534"),  # root started it directly: nobody
        (("--user", "daemon"), {}, "1"),
        ((), {"SUDO_UID": "2"}, "2"),  # started through sudo: the caller (bin)
    ])
    def test_workload_user(self, proxy: str, net_args: list[str], extra: tuple[str, ...],
                           env: dict[str, str], uid: str) -> None:
        root_only("rootless, the workload is the caller and --user another is refused "
                  "(test_rootless.py tests that)")
        done = subprocess.run(
            netfence_argv("run", "--proxy", proxy, *net_args, *extra, "--", "id", "-u"),
            capture_output=True, timeout=60, env={**os.environ, **env})
        assert done.stdout == f"{uid}\n".encode(), done.stderr

    @both_privileges
    def test_paths_are_opened_with_the_sudo_callers_permissions(
            self, proxy: str, net_args: list[str]) -> None:
        """Through sudo, --profile and --learn are the caller's files: a root-only file is
        neither read (its text must not reach an error) nor overwritten."""
        root_only("sudo's caller: rootless, netfence has no permission but the caller's")
        caller = {**os.environ, "SUDO_UID": "65534", "SUDO_GID": "65534"}  # nobody
        private = Path(tempfile.mkdtemp(prefix="nf-root-only-"))  # 0700, root's
        theirs = Path(tempfile.mkdtemp(prefix="nf-caller-"))
        try:
            os.chown(theirs, 65534, 65534)
            secret = private / "shadow"
            secret.write_text("root:SECRET-HASH:19000\n")
            read = subprocess.run(netfence_argv("check", "--profile", str(secret), "x.test"),
                                  capture_output=True, timeout=60, env=caller)
            assert read.returncode == 2 and b"Permission denied" in read.stderr, read.stderr
            assert b"SECRET" not in read.stderr

            def learn(target: Path) -> subprocess.CompletedProcess[bytes]:
                return subprocess.run(
                    netfence_argv("run", "--proxy", proxy, *net_args, "--learn", str(target),
                                  "--", "true"), capture_output=True, timeout=60, env=caller)

            refused = learn(secret)
            assert refused.returncode == 0 and b"cannot write" in refused.stderr, refused.stderr
            assert secret.read_text() == "root:SECRET-HASH:19000\n"
            assert secret.stat().st_uid == 0
            written = learn(theirs / "learned.yaml")
            assert written.returncode == 0, written.stderr
            info = (theirs / "learned.yaml").stat()
            assert (info.st_uid, info.st_mode & 0o777) == (65534, 0o644)
        finally:
            shutil.rmtree(private)
            shutil.rmtree(theirs)

    def test_the_callers_environment_does_not_reach_the_root_launcher(
            self, proxy: str, net_args: list[str]) -> None:
        """--env is for the workload: nsenter still runs as root, and a PATH (or
        LD_PRELOAD) of the caller's choosing must not pick what it runs."""
        bait = Path(tempfile.mkdtemp(prefix="nf-path-"))
        try:
            fake = bait / "nsenter"
            fake.write_text(f"#!/bin/sh\ntouch {bait}/RAN-AS-ROOT\nexec /usr/bin/nsenter \"$@\"\n")
            fake.chmod(0o755)
            done = fenced(proxy, net_args, "sh", "-c", "echo \"$PATH\"",
                          extra=("--env", f"PATH={bait}:/usr/bin:/bin"))
            assert done.returncode == 0, done.stderr
            assert not (bait / "RAN-AS-ROOT").exists()
            assert done.stdout.decode().strip() == f"{bait}:/usr/bin:/bin"  # still the workload's
        finally:
            shutil.rmtree(bait)

    @pytest.mark.parametrize("user", ["root", "0", "no-such-user-xyz"])
    def test_refused_users_fail_before_the_fence_is_built(self, proxy: str,
                                                          net_args: list[str],
                                                          user: str) -> None:
        done = fenced(proxy, net_args, "true", extra=("--user", user))
        assert done.returncode == 2
        assert len(done.stderr.decode().strip().splitlines()) == 1, done.stderr
        assert b"Traceback" not in done.stderr


def test_logs_follow_streams_new_decisions(proxy: str, net_args: list[str]) -> None:
    name = f"nf-follow-{proxy}"
    started = netfence("run", "--proxy", proxy, *net_args, "--name", name, "--detach",
                       "--allow-host", "allowed.test", "--", "sh", "-c",
                       "sleep 1; curl -s -m 5 http://other.test/ >/dev/null; sleep 60")
    assert started.returncode == 0, started.stderr
    follower = subprocess.Popen(netfence_argv("logs", name, "--follow", "--json"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert follower.stdout is not None
        os.set_blocking(follower.stdout.fileno(), False)
        seen = b""
        deadline = time.monotonic() + 20
        while b"other.test" not in seen and time.monotonic() < deadline:
            seen += follower.stdout.read() or b""
            time.sleep(0.1)
        assert b"other.test" in seen, seen
        assert follower.poll() is None, "--follow returned while the workload runs"
        assert netfence("stop", name).returncode == 0
        follower.wait(timeout=15)  # the workload is gone: following ends by itself
    finally:
        netfence("stop", name)
        if follower.poll() is None:
            follower.kill()
            follower.wait()
