"""The namespace runtime's file-system view: the bubblewrap arguments for grants, program
binds and hidden sockets (pure), and the helpers that read the host for it (on temporary
directories; no root needed)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from netfence.runtimes.grants import Bind, FileGrants
from netfence.runtimes.namespace import view
from netfence.runtimes.namespace.view import Layout

MERGED = Layout(
    links={"/usr": None, "/etc": None, "/bin": "usr/bin", "/sbin": "usr/sbin",
           "/lib": "usr/lib", "/lib64": "usr/lib64"},
    real={"/usr": "/usr", "/etc": "/etc", "/bin": "/usr/bin", "/sbin": "/usr/sbin",
          "/lib": "/usr/lib", "/lib64": "/usr/lib64"},
)
RESOLV = (7, "/run/systemd/resolve/stub-resolv.conf")
HOME = "/home/alice"
NOTHING = FileGrants()


def plan(files: FileGrants = NOTHING, home: str = HOME,
         hidden: tuple[str, ...] = ()) -> list[str]:
    return view.plan(files, MERGED, home, RESOLV, hidden=hidden)


def steps(args: list[str]) -> list[tuple[str, ...]]:
    """The arguments as (option, operands...) tuples, in order."""
    arity = {"--ro-bind": 2, "--bind": 2, "--ro-bind-fd": 2, "--bind-fd": 2, "--symlink": 2,
             "--ro-bind-data": 2, "--tmpfs": 1, "--dev": 1, "--proc": 1, "--perms": 1,
             "--remount-ro": 1, "--chdir": 1}
    out: list[tuple[str, ...]] = []
    i = 0
    while i < len(args):
        n = arity[args[i]]
        out.append(tuple(args[i:i + n + 1]))
        i += n + 1
    return out


def position(args: list[str], *step: str) -> int:
    return steps(args).index(step)


def test_default_view_is_the_system_and_fresh_directories() -> None:
    got = steps(plan())
    assert ("--ro-bind", "/usr", "/usr") in got and ("--ro-bind", "/etc", "/etc") in got
    assert ("--symlink", "usr/bin", "/bin") in got and ("--symlink", "usr/lib64", "/lib64") in got
    assert ("--dev", "/dev") in got and ("--proc", "/proc") in got
    for fresh in ("/tmp", "/var/tmp", "/dev/shm", "/run", HOME):
        assert ("--tmpfs", fresh) in got, fresh
    # Nothing else of the host: no bind of / or of anything not listed above.
    sources = {s[1] for s in got if s[0] in ("--bind", "--ro-bind")}
    assert sources == {"/usr", "/etc"}
    assert got[-3:] == [("--ro-bind-data", "7", RESOLV[1]), ("--remount-ro", "/"),
                        ("--chdir", HOME)]


def test_shared_temporary_directories_are_sticky_and_home_private() -> None:
    got = steps(plan())
    assert got[got.index(("--tmpfs", "/tmp")) - 1] == ("--perms", "1777")
    assert got[got.index(("--tmpfs", HOME)) - 1] == ("--perms", "0700")


def test_grants_read_only_and_read_write_at_their_own_path() -> None:
    files = FileGrants(binds=(Bind("/srv/data", "/srv/data"),
                              Bind("/srv/out", "/mnt/disk/out", writable=True)))
    got = steps(plan(files))
    assert ("--ro-bind", "/srv/data", "/srv/data") in got
    assert ("--bind", "/mnt/disk/out", "/srv/out") in got


def test_parents_first_so_a_grant_lands_on_the_fresh_directory_it_is_in() -> None:
    files = FileGrants(binds=(Bind(f"{HOME}/project", f"{HOME}/project"),
                              Bind("/tmp/shared", "/tmp/shared", writable=True)))
    args = plan(files)
    assert position(args, "--tmpfs", HOME) < position(
        args, "--ro-bind", f"{HOME}/project", f"{HOME}/project")
    assert position(args, "--tmpfs", "/tmp") < position(
        args, "--bind", "/tmp/shared", "/tmp/shared")


def test_a_fresh_directory_inside_a_grant_stays_fresh() -> None:
    args = plan(FileGrants(binds=(Bind("/var", "/var"), Bind("/home", "/home"))))
    assert position(args, "--ro-bind", "/var", "/var") < position(args, "--tmpfs", "/var/tmp")
    assert position(args, "--ro-bind", "/home", "/home") < position(args, "--tmpfs", HOME)


def test_nested_grants_parent_first() -> None:
    files = FileGrants(binds=(Bind("/srv/p/out", "/srv/p/out", writable=True),
                              Bind("/srv/p", "/srv/p")))
    args = plan(files)
    assert position(args, "--ro-bind", "/srv/p", "/srv/p") < position(
        args, "--bind", "/srv/p/out", "/srv/p/out")


def test_sockets_inside_grants_are_covered_after_every_bind() -> None:
    files = FileGrants(
        binds=(Bind("/srv/p", "/srv/p"), Bind("/srv/p/a/b", "/srv/p/a/b", writable=True)),
        masked=(Bind("/srv/p/agent.sock", "/srv/p/agent.sock"),
                Bind("/srv/p/a/b/c/x.sock", "/srv/p/a/b/c/x.sock")),
        sockets=(Bind("/srv/p/ok.sock", "/srv/p/ok.sock"),))
    args = plan(files)
    for mask in ("/srv/p/agent.sock", "/srv/p/a/b/c/x.sock"):
        assert position(args, "--ro-bind", "/dev/null", mask) > position(
            args, "--ro-bind", "/srv/p", "/srv/p")
    assert position(args, "--ro-bind", "/dev/null", "/srv/p/a/b/c/x.sock") > position(
        args, "--bind", "/srv/p/a/b", "/srv/p/a/b")
    assert ("--ro-bind", "/srv/p/ok.sock", "/srv/p/ok.sock") in steps(args)
    assert position(args, "--ro-bind", "/srv/p/ok.sock", "/srv/p/ok.sock") > position(
        args, "--ro-bind", "/srv/p", "/srv/p")


def test_a_granted_socket_in_a_fresh_directory_is_bound_over_it() -> None:
    files = FileGrants(sockets=(Bind("/tmp/.X11-unix/X0", "/tmp/.X11-unix/X0"),))
    args = plan(files)
    assert position(args, "--tmpfs", "/tmp") < position(
        args, "--ro-bind", "/tmp/.X11-unix/X0", "/tmp/.X11-unix/X0")


def test_program_binds_are_read_only() -> None:
    files = FileGrants(program=(Bind("/opt/tool/venv", "/opt/tool/venv"),))
    assert ("--ro-bind", "/opt/tool/venv", "/opt/tool/venv") in steps(plan(files))


def test_the_fence_state_stays_hidden() -> None:
    args = plan(hidden=("/run/netfence", "/run/netns"))
    assert position(args, "--tmpfs", "/run") < position(args, "--tmpfs", "/run/netfence")


def test_resolv_conf_goes_last_over_a_grant_of_etc() -> None:
    args = plan(FileGrants(binds=(Bind("/etc", "/etc", writable=True),)))
    assert position(args, "--bind", "/etc", "/etc") < position(
        args, "--ro-bind-data", "7", RESOLV[1])


@pytest.mark.parametrize("home", ["/", "/usr/sbin", "/bin", "/usr", "", "relative"])
def test_homes_in_system_directories_are_left_alone(home: str) -> None:
    got = steps(plan(home=home))
    assert ("--tmpfs", home) not in got
    assert ("--perms", "0700") not in got
    assert got[-1] == ("--chdir", "/")


def test_the_command_starts_in_the_callers_directory_when_shown() -> None:
    assert steps(plan(FileGrants(cwd="/srv/p")))[-1] == ("--chdir", "/srv/p")


def test_host_filesystem_is_the_old_view() -> None:
    args = plan(FileGrants(host_filesystem=True), hidden=("/run/netfence",))
    assert args[:3] == ["--bind", "/", "/"]
    assert ("--tmpfs", "/run") in steps(args) and ("--tmpfs", "/run/netfence") in steps(args)


def test_real_host_layout_has_usr_and_etc() -> None:
    layout = view.host_layout()
    assert layout.links["/usr"] is None and layout.links["/etc"] is None
    assert all(os.path.isabs(real) for real in layout.real.values())


# --- what the view shows -------------------------------------------------------------


def shows(path: str, real: str | None = None, files: FileGrants = NOTHING) -> bool:
    return view.shows(path, real or path, files, MERGED, HOME)


def test_shows_system_files_and_grants_only() -> None:
    assert shows("/usr/bin/python3")
    assert shows("/bin/sh", "/usr/bin/dash")
    assert shows("/etc/ssl/certs")
    assert not shows("/srv/mcp/server.py")
    assert not shows("/tmp/x.py")  # the host's /tmp is not the workload's
    assert not shows(f"{HOME}/.ssh/id_rsa")
    granted = FileGrants(binds=(Bind("/srv/mcp", "/data/mcp"),))
    assert shows("/srv/mcp/server.py", "/data/mcp/server.py", granted)
    # A link out of a grant leads nowhere inside.
    assert not shows("/srv/mcp/link.py", "/root/secret.py", granted)


def test_fresh_directories_themselves_are_there() -> None:
    for path in ("/", "/tmp", "/var/tmp", "/run", HOME):
        assert shows(path)


def test_everything_shows_with_the_host_filesystem() -> None:
    assert shows("/srv/x", files=FileGrants(host_filesystem=True))


# --- arguments naming host files --------------------------------------------------------


def test_first_hidden_argument() -> None:
    existing = {"/srv/mcp/server.py": "file", "/srv/data": "dir", "/usr/lib": "dir",
                "/work/server.py": "file", "/tmp/agent.sock": "socket"}

    def lookup(path: str) -> tuple[str, str] | None:
        return (path, existing[path]) if path in existing else None

    def visible(path: str, real: str) -> bool:
        return shows(path, real)

    assert view.first_hidden(["-u", "/usr/lib", "hello"], "/", lookup, visible) is None
    assert view.first_hidden(["/srv/mcp/server.py"], "/", lookup, visible) == (
        "/srv/mcp/server.py", "/srv/mcp/server.py", "file")
    assert view.first_hidden(["server.py"], "/work", lookup, visible) == (
        "server.py", "/work/server.py", "file")
    assert view.first_hidden(["--root=/srv/data"], "/", lookup, visible) == (
        "/srv/data", "/srv/data", "dir")
    assert view.first_hidden(["/tmp/agent.sock"], "/", lookup, visible) == (
        "/tmp/agent.sock", "/tmp/agent.sock", "socket")


def test_grant_hints() -> None:
    assert view.grant_hint("/srv/mcp/server.py", "file") == "--read /srv/mcp"
    assert view.grant_hint("/srv/data", "dir") == "--read /srv/data"
    assert view.grant_hint("/tmp/agent.sock", "socket") == "--allow-unix-socket /tmp/agent.sock"


# --- the program's own files -----------------------------------------------------------


def test_program_outside_the_system_is_bound_with_its_virtualenv(tmp_path: Path) -> None:
    base = tmp_path / "python-install"
    (base / "bin").mkdir(parents=True)
    (base / "bin" / "python3.12").write_text("")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text(f"home = {base}/bin\nversion = 3.12.1\n")
    (venv / "bin" / "python").symlink_to(base / "bin" / "python3.12")
    tool = venv / "bin" / "tool"
    tool.write_text(f"#!{venv}/bin/python\nprint(1)\n")
    link_dir = tmp_path / "local-bin"
    link_dir.mkdir()
    (link_dir / "tool").symlink_to(tool)

    binds = view.program_binds(str(link_dir / "tool"), lambda p: False)
    paths = {b.path for b in binds}
    assert paths == {str(link_dir / "tool"), str(venv), str(base)}, paths
    assert all(not b.writable for b in binds)
    assert [b.source for b in binds if b.path == str(link_dir / "tool")] == [str(tool)]


def test_program_in_the_system_needs_no_bind() -> None:
    assert view.program_binds(sys.executable if sys.executable.startswith("/usr/")
                              else "/usr/bin/env", lambda p: p.startswith("/usr/")) == []


def test_a_plain_program_is_bound_alone(tmp_path: Path) -> None:
    program = tmp_path / "bin" / "server"
    program.parent.mkdir()
    program.write_bytes(b"\x7fELF")
    assert view.program_binds(str(program), lambda p: False) == [
        Bind(str(program), str(program))]


def test_a_scripts_interpreter_outside_the_system_is_bound_too(tmp_path: Path) -> None:
    interpreter = tmp_path / "runtime" / "node"
    interpreter.parent.mkdir()
    interpreter.write_bytes(b"\x7fELF")
    script = tmp_path / "srv" / "server.js"
    script.parent.mkdir()
    script.write_text(f"#!{interpreter} --flag\n")
    paths = {b.path for b in view.program_binds(str(script), lambda p: False)}
    assert paths == {str(script), str(interpreter)}


def test_sockets_are_not_files_to_bind(tmp_path: Path) -> None:
    # find_sockets is in grants.py; the view only covers what it found.
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "s.sock"))
        files = FileGrants(binds=(Bind(str(tmp_path), str(tmp_path)),),
                           masked=(Bind(str(tmp_path / "s.sock"), str(tmp_path / "s.sock")),))
        assert ("--ro-bind", "/dev/null", str(tmp_path / "s.sock")) in steps(plan(files))


def test_extra_program_paths_are_bound_read_only_once(tmp_path: Path) -> None:
    # An npm package's installation: `node` is the program, the install an argument.
    install = tmp_path / "cache" / "npx" / "pkg" / "1.0.0"
    (install / "node_modules" / "pkg").mkdir(parents=True)
    binds = view.program_binds("/usr/bin/env", lambda p: p.startswith("/usr/"),
                               [str(install), str(install / "node_modules")])
    assert binds == [Bind(str(install), str(install))]


def test_pinned_grants_are_bound_by_their_descriptor() -> None:
    """A grant checked through a descriptor is bound through it: a path swapped for a link
    after the check shows nothing else (tests/integration/test_grant_race.py)."""
    files = FileGrants(binds=(Bind("/srv/data", "/srv/data"),
                              Bind("/srv/out", "/srv/out", writable=True)),
                       sockets=(Bind("/srv/a.sock", "/srv/a.sock"),),
                       program=(Bind("/opt/venv", "/opt/venv"),))
    got = steps(view.plan(files, MERGED, HOME, RESOLV,
                          pinned={"/srv/data": 11, "/srv/out": 12, "/srv/a.sock": 13}))
    assert ("--ro-bind-fd", "11", "/srv/data") in got
    assert ("--bind-fd", "12", "/srv/out") in got
    assert ("--ro-bind-fd", "13", "/srv/a.sock") in got
    assert ("--ro-bind", "/opt/venv", "/opt/venv") in got  # not a grant: not pinned


def test_pin_refuses_a_grant_replaced_since_the_check(tmp_path: Path) -> None:
    from netfence.errors import UsageError
    from netfence.profile import Profile
    from netfence.runtimes import grants
    from netfence.runtimes.namespace import sandbox

    docs, other = tmp_path / "docs", tmp_path / "other"
    docs.mkdir()
    other.mkdir()
    files = grants.check(Profile(read=(str(docs),)))
    fds = sandbox.pin(files)  # unchanged: pinned
    try:
        assert os.path.samefile(f"/proc/self/fd/{fds[str(docs)]}", docs)
    finally:
        for fd in fds.values():
            os.close(fd)
    docs.rename(tmp_path / "docs.real")
    docs.symlink_to(other)
    with pytest.raises(UsageError, match="replaced since it was checked"):
        sandbox.pin(files)
