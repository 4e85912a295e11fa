"""An unprivileged test user who runs `netfence` rootless (issue 17), for the session.

The user is created by the test run (`useradd`, named after the test process so that a
killed session's user is recognised) with a home and a 0700 XDG_RUNTIME_DIR of its own
under one temporary directory, and a Python environment it can run netfence from: the
test interpreter's packages and netfence's source, each bind-mounted read-only at a
world-traversable path in that directory. The checkout may sit where the user cannot
enter (a clean clone under /root in CI; pyenv's interpreter under /root is 0700), and a
mount costs nothing where a copy of the packages (hundreds of MiB) would take seconds.
The interpreter is one of the same minor version that the user can execute (Debian's
/usr/bin/python3 here).

At the end, and at the start of the next session if this one was killed: the user's
processes are killed (by PID: every process of that uid is one the tests started), the
mounts are undone before anything is deleted (a tree is never removed while a mount is
under it: that would delete the checkout), then the user, its group, home and files.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import netfence

USER_PREFIX = "nf-rl-"  # + the test process's PID
WORK_PREFIX = "nf-rootless-"  # the same PID: /tmp/nf-rootless-PID
# Where a process of the user may leave files outside its work directory.
SHARED_TMP = (Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"))
USER_PATH = "/usr/local/bin:/usr/bin:/bin"  # a login's PATH: no sbin, as for any user


@dataclass(frozen=True)
class RootlessUser:
    name: str
    uid: int
    gid: int
    home: Path
    runtime_dir: Path  # XDG_RUNTIME_DIR: the user's state root is in it
    python: str
    pythonpath: tuple[str, ...] = field(repr=False)

    @property
    def state_root(self) -> Path:
        return self.runtime_dir / "netfence"

    def env(self) -> dict[str, str]:
        """What the user's login would have, plus the installation's PYTHONPATH."""
        return {"HOME": str(self.home), "USER": self.name, "LOGNAME": self.name,
                "SHELL": "/bin/sh", "PATH": USER_PATH,
                "XDG_RUNTIME_DIR": str(self.runtime_dir),
                "PYTHONPATH": os.pathsep.join(self.pythonpath),
                "PYTHONDONTWRITEBYTECODE": "1"}

    def argv(self, *command: str) -> list[str]:
        """COMMAND as the user, with the user's environment only (nothing of root's: no
        SUDO_*, no virtualenv), and no supplementary group. setpriv and env exec in
        place: a Popen's PID is the command's own, so its signals reach it."""
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups",
                "--reset-env", "env", *(f"{k}={v}" for k, v in self.env().items()),
                *command]

    def netfence_argv(self, *args: str) -> list[str]:
        return self.argv(self.python, "-m", "netfence", *args)

    def run(self, *command: str, timeout: float = 60, input: bytes | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(self.argv(*command), capture_output=True, timeout=timeout,
                              input=input, cwd=cwd or self.home)

    def processes(self) -> list[tuple[int, str]]:
        """(PID, command line) of every live process of this user's."""
        return [(pid, cmd) for pid, uid, cmd in _processes() if uid == self.uid]


def _processes() -> Iterator[tuple[int, int, str]]:
    """(PID, real uid, command line) of each live process (zombies left out: this
    environment's PID 1 reaps orphans late)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            status = (proc / "status").read_text()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("State", "").strip().startswith("Z"):
            continue
        yield int(proc.name), int(fields["Uid"].split()[0]), cmdline.strip()


def _kill_all(uid: int, timeout: float = 10) -> None:
    """SIGKILL every process of `uid` (a test user's: all of them the tests' own), until
    none is left or `timeout`. Repeated: a dying parent may still fork."""
    deadline = time.monotonic() + timeout
    while pids := [pid for pid, owner, _ in _processes() if owner == uid]:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes of uid {uid} survive SIGKILL: {pids}")
        time.sleep(0.05)


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path`, deepest first."""
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as info:
        for line in info:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == str(path) or point.startswith(f"{path}/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def _remove_tree(work: Path) -> None:
    """Unmount everything under `work`, then remove it; never remove through a mount."""
    for point in _mounts_under(work):
        subprocess.run(["umount", "--lazy", point], capture_output=True, timeout=30)
    if left := _mounts_under(work):
        raise RuntimeError(f"cannot unmount {left}: {work} is left in place")
    shutil.rmtree(work, ignore_errors=True)


def _owner_alive(pid: int) -> bool:
    try:
        return b"python" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _remove_user(name: str, work: Path) -> None:
    with contextlib.suppress(KeyError):
        uid = pwd.getpwnam(name).pw_uid
        _kill_all(uid)
        for shared in SHARED_TMP:  # what its processes left there (tmux's socket dir)
            with contextlib.suppress(OSError):
                for entry in shared.iterdir():
                    if entry.lstat().st_uid == uid:
                        if entry.is_dir() and not entry.is_symlink():
                            shutil.rmtree(entry, ignore_errors=True)
                        else:
                            entry.unlink(missing_ok=True)
        done = subprocess.run(["userdel", "--remove", name], capture_output=True, text=True,
                              timeout=30)
        # userdel --remove warns (exit 12) about a home it did not create under /home.
        if done.returncode not in (0, 12):
            raise RuntimeError(f"userdel {name}: {done.stderr.strip()}")
    _remove_tree(work)


def remove_stale() -> None:
    """Remove the user and directory a killed test session left (its PID is in both
    names, and no test process of that PID runs)."""
    names = [pw.pw_name for pw in pwd.getpwall() if pw.pw_name.startswith(USER_PREFIX)]
    works = [p.name for p in Path(tempfile.gettempdir()).glob(f"{WORK_PREFIX}*")]
    pids = {int(m.group(1)) for n in (*names, *works)
            if (m := re.fullmatch(rf"(?:{USER_PREFIX}|{WORK_PREFIX})(\d+)", n))}
    for pid in pids:
        if pid == os.getpid() or _owner_alive(pid):
            continue  # ours, or a session still running (it cleans up after itself)
        _remove_user(f"{USER_PREFIX}{pid}", Path(tempfile.gettempdir(), f"{WORK_PREFIX}{pid}"))


def _interpreter(run_as: RootlessUser) -> str | None:
    """An interpreter of this minor version that the user can execute."""
    want = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [sys.executable, os.path.realpath(sys.executable),
                  *(f"{d}/python{v}" for d in ("/usr/bin", "/usr/local/bin")
                    for v in (want, "3"))]
    for candidate in dict.fromkeys(candidates):
        done = run_as.run(candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])",
                          timeout=30)
        if done.returncode == 0 and done.stdout.decode().strip() == want:
            return candidate
    return None


def _bind_read_only(stack: ExitStack, source: Path, target: Path) -> None:
    target.mkdir(mode=0o755)
    subprocess.run(["mount", "--bind", "-o", "ro", str(source), str(target)], check=True,
                   capture_output=True, timeout=30)
    stack.callback(subprocess.run, ["umount", "--lazy", str(target)], capture_output=True,
                   timeout=30)
    # A shared mount would propagate to other mount namespaces (engines'): keep it here.
    subprocess.run(["mount", "--make-private", str(target)], check=True, capture_output=True,
                   timeout=30)


def missing_reason() -> str | None:
    """Why the rootless tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "the rootless tests create their user: run scripts/test with sudo"
    missing = [p for p in ("useradd", "userdel", "setpriv", "mount", "umount")
               if shutil.which(p) is None]
    return f"{', '.join(missing)} not installed" if missing else None


@contextmanager
def rootless_user() -> Iterator[RootlessUser]:
    """Create the user and its environment; remove everything of it on exit."""
    remove_stale()
    pid = os.getpid()
    name = f"{USER_PREFIX}{pid}"
    work = Path(tempfile.gettempdir(), f"{WORK_PREFIX}{pid}")
    work.mkdir(mode=0o755)
    work.chmod(0o755)  # whatever the umask: the user traverses it
    try:
        with ExitStack() as stack:
            home = work / "home"
            subprocess.run(["useradd", "--system", "--create-home", "--home-dir", str(home),
                            "--shell", "/bin/sh", "--user-group", name], check=True,
                           capture_output=True, timeout=30)
            pw = pwd.getpwnam(name)
            home.chmod(0o700)
            runtime_dir = work / "run"
            runtime_dir.mkdir(mode=0o700)
            os.chown(runtime_dir, pw.pw_uid, pw.pw_gid)
            # netfence's source and the packages it imports (the test virtualenv's).
            sources = [Path(netfence.__file__).resolve().parents[1]]
            sources += [Path(p) for p in dict.fromkeys(
                (sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]))]
            pythonpath = []
            for index, source in enumerate(sources):
                target = work / f"py{index}"
                _bind_read_only(stack, source, target)
                pythonpath.append(str(target))
            user = RootlessUser(name, pw.pw_uid, pw.pw_gid, home, runtime_dir, "",
                                tuple(pythonpath))
            python = _interpreter(user)
            if python is None:
                raise RuntimeError(f"no Python {sys.version_info.major}."
                                   f"{sys.version_info.minor} that {name} can execute: "
                                   "install the distribution's python3")
            user = RootlessUser(name, pw.pw_uid, pw.pw_gid, home, runtime_dir, python,
                                tuple(pythonpath))
            check = user.run(python, "-c", "import netfence.cli, envoy, mcp", timeout=60)
            if check.returncode != 0:
                raise RuntimeError(f"{name} cannot import netfence with {python}: "
                                   f"{check.stderr.decode()[-500:]}")
            # Undone first (last in): nothing may run from the mounts when they go.
            stack.callback(_kill_all, pw.pw_uid)
            yield user
    finally:
        _remove_user(name, work)
