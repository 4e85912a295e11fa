"""Install a package into netfence's cache, outside the fence, as the user who ran sudo.

uvx://: a virtualenv made with `uv` when there is one (else `python3 -m venv` and its
pip) from the system's python3 (which every workload's view shows), the package
installed from wheels only. npx://: `npm install --prefix DIR --ignore-scripts`. Neither
runs any of the package's own code: a source build or an install script would run it
here, unfenced, with the network and the user's files. A package that needs one is not
installed (the installer's message says why).

The installer itself does run unfenced, with the network, as the user: it reaches the
package registries the user's own configuration names. Its output goes to stderr only
(stdout is the MCP channel).
"""

from __future__ import annotations

import collections
import contextlib
import email.parser  # noqa: F401  (importlib.metadata's, else imported lazily: see below)
import importlib.metadata
import json
import os
import pwd
import re
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from netfence.errors import NetfenceError, UsageError
from netfence.packages import cache
from netfence.packages.refs import PackageRef, normalise_pypi
from netfence.runtimes.caller import caller_permissions, sudo_caller

Log = Callable[[str], None]

# The interpreter venvs are made from: a system one, inside every workload's view and
# runnable by any user (NETFENCE_PYTHON overrides it).
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
PYTHON_ENV = "NETFENCE_PYTHON"
# A uv to use ("none": never uv, always pip); else uv on PATH or in the user's own bins.
UV_ENV = "NETFENCE_UV"
INSTALL_TIMEOUT = 600.0
_KEPT_LINES = 200
# Never passed to an installer: they would point its interpreter elsewhere.
_DROPPED_ENV = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "CONDA_PREFIX")


@dataclass(frozen=True)
class Account:
    """Who the installer runs as: the sudo caller (None in `uid`: this process as is)."""

    uid: int | None
    gid: int | None
    groups: tuple[int, ...]
    name: str
    home: str


def installer_account() -> Account:
    caller = sudo_caller()
    if caller is None:
        pw = pwd.getpwuid(os.getuid())
        return Account(None, None, (), pw.pw_name, os.environ.get("HOME") or pw.pw_dir)
    uid, gid = caller
    pw = pwd.getpwuid(uid)
    try:
        groups = tuple(os.getgrouplist(pw.pw_name, gid))
    except KeyError:
        groups = (gid,)
    return Account(uid, gid, groups, pw.pw_name, pw.pw_dir)


def installer_env(account: Account, path: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SUDO_") and k not in _DROPPED_ENV}
    env.update(HOME=account.home, USER=account.name, LOGNAME=account.name, PATH=path)
    env.update(PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               npm_config_update_notifier="false", npm_config_fund="false",
               npm_config_audit="false")
    return env


def venv_python() -> str:
    chosen = os.environ.get(PYTHON_ENV)
    found = chosen or shutil.which("python3", path=SYSTEM_PATH)
    if not found:
        raise UsageError("uvx:// needs a python3 in /usr/bin or /usr/local/bin",
                         remedy=f"install python3 (and python3-venv), or set {PYTHON_ENV}")
    return found


def find_uv(account: Account) -> str | None:
    chosen = os.environ.get(UV_ENV)
    if chosen:
        return None if chosen == "none" else chosen
    candidates = [os.path.join(account.home, ".local", "bin"),
                  os.path.join(account.home, ".cargo", "bin")]
    return shutil.which("uv") or shutil.which("uv", path=os.pathsep.join(candidates))


def find_node(path: str) -> str:
    found = shutil.which("node", path=path)
    if not found:
        raise UsageError("npx:// needs node", remedy="install Node.js and npm")
    return os.path.abspath(found)


def steps(ref: PackageRef, staging: Path, *, uv: str | None, python: str,
          npm: str) -> list[list[str]]:
    """The installer's command lines for `ref`, into `staging`."""
    if ref.kind == "npx":
        spec = f"{ref.name}@{ref.version}" if ref.version else ref.name
        return [[npm, "install", "--prefix", str(staging), "--ignore-scripts", "--no-audit",
                 "--no-fund", "--omit=dev", spec]]
    spec = f"{ref.name}=={ref.version}" if ref.version else ref.name
    venv_py = str(staging / "bin" / "python")
    if uv is not None:
        return [[uv, "venv", "--no-project", "--python", python, str(staging)],
                [uv, "pip", "install", "--python", venv_py, "--no-build", spec]]
    return [[python, "-m", "venv", str(staging)],
            [venv_py, "-m", "pip", "install", "--no-input", "--progress-bar", "off",
             "--only-binary", ":all:", spec]]


_NOISE = re.compile(r"^(npm error (code |A complete log|$)|npm ERR! (code |A complete log))")


def installer_message(lines: Sequence[str]) -> str:
    """The installer's own one-line reason, from its output: pip's last `ERROR:` line,
    npm's first `npm error` line that says more than a code, uv's last `error:` with its
    cause; else the last line it printed."""
    text = [line.strip() for line in lines if line.strip()]
    for line in reversed(text):
        if line.startswith("ERROR: "):
            return line.removeprefix("ERROR: ")
    for line in text:
        if line.startswith(("npm error", "npm ERR!")) and not _NOISE.match(line):
            return re.sub(r"^npm (error|ERR!)\s+", "", line)
    for i in range(len(text) - 1, -1, -1):
        line = text[i]
        if line.startswith("error:"):
            # uv: "error: WHAT", then "cause: WHY" (older: "╰─▶ WHY").
            cause = text[i + 1] if i + 1 < len(text) else ""
            if cause.startswith(("cause:", "╰─▶")):
                why = cause.removeprefix("cause:").removeprefix("╰─▶").strip()
                return f"{line.removeprefix('error:').strip()}: {why}"
            return line.removeprefix("error:").strip()
        if line.startswith("╰─▶"):
            return line.removeprefix("╰─▶").strip()
    return text[-1] if text else "no message"


def _run(argv: list[str], account: Account, env: dict[str, str], cwd: Path,
         log: Log) -> tuple[int, list[str]]:
    """Run one installer step as `account`, its output passed to `log` line by line;
    (exit status, its last lines)."""
    kept: collections.deque[str] = collections.deque(maxlen=_KEPT_LINES)
    as_caller = account.uid is not None
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                user=account.uid, group=account.gid,
                                extra_groups=list(account.groups) if as_caller else None)
    except OSError as exc:
        raise UsageError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    assert proc.stdout is not None
    deadline = time.monotonic() + INSTALL_TIMEOUT
    pending = b""
    try:
        fd = proc.stdout.fileno()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise NetfenceError(f"{Path(argv[0]).name} did not finish within "
                                    f"{INSTALL_TIMEOUT:.0f} s")
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for raw in complete:
                line = raw.decode(errors="replace").rstrip("\r")
                kept.append(line)
                log(line)
        if pending:
            line = pending.decode(errors="replace")
            kept.append(line)
            log(line)
        return proc.wait(timeout=30), list(kept)
    finally:
        if proc.poll() is None:
            proc.kill()  # our own child, by its handle
            proc.wait(timeout=30)
        proc.stdout.close()


def read_install(ref: PackageRef, directory: Path) -> tuple[str, dict[str, str]]:
    """(installed version, commands) of the package installed in `directory`. Called
    with the caller's permissions (their files): every module it needs is imported at
    the top, while root can read netfence's own installation (which may sit where the
    caller cannot, e.g. under /root)."""
    if ref.kind == "npx":
        return _npm_install(ref, directory)
    return _venv_install(ref, directory)


def _venv_install(ref: PackageRef, directory: Path) -> tuple[str, dict[str, str]]:
    paths = [str(p) for p in sorted(directory.glob("lib/python*/site-packages"))]
    for dist in importlib.metadata.distributions(path=paths):
        if normalise_pypi(dist.metadata["Name"] or "") != ref.name:
            continue
        commands = {ep.name: f"bin/{ep.name}" for ep in dist.entry_points
                    if ep.group == "console_scripts" and (directory / "bin" / ep.name).is_file()}
        return dist.version, commands
    raise NetfenceError(f"{ref}: installed, but its metadata is not in {directory}")


def _npm_install(ref: PackageRef, directory: Path) -> tuple[str, dict[str, str]]:
    package = directory / "node_modules" / ref.name
    try:
        data = json.loads((package / "package.json").read_text(encoding="utf-8"))
        version = str(data["version"])
    except (OSError, ValueError, KeyError, TypeError):
        raise NetfenceError(f"{ref}: installed, but {package}/package.json is not "
                            "readable") from None
    bins = data.get("bin") or {}
    if isinstance(bins, str):
        bins = {ref.default_command: bins}
    commands: dict[str, str] = {}
    if isinstance(bins, dict):
        for name, rel in bins.items():
            target = os.path.normpath(os.path.join("node_modules", ref.name, str(rel)))
            inside = target.startswith(os.path.join("node_modules", ref.name) + os.sep)
            if inside and (directory / target).is_file():
                commands[str(name)] = target
    return version, commands


@contextlib.contextmanager
def _staging(root: Path, ref: PackageRef) -> Iterator[Path]:
    """A fresh directory to install into, beside the final one; removed afterwards (with
    the package's own directory when nothing else is in it: a failed first install)."""
    package_dir = cache.package_dir(root, ref)
    with caller_permissions():
        package_dir.mkdir(parents=True, exist_ok=True)
        cache.clear_leftovers(package_dir)
        staging = Path(tempfile.mkdtemp(prefix=cache.STAGING_PREFIX, dir=package_dir))
    try:
        yield staging
    finally:
        with caller_permissions():
            shutil.rmtree(staging, ignore_errors=True)
            cache.prune(root, ref)


def install(ref: PackageRef, root: Path, log: Log) -> cache.Installed:
    """Install `ref` into the cache at `root` (its lock held); the new Installed."""
    account = installer_account()
    path = os.environ.get("PATH") or SYSTEM_PATH
    if ref.kind == "npx":
        node = find_node(path)
        npm = shutil.which("npm", path=path)
        if npm is None:
            raise UsageError("npx:// needs npm", remedy="install Node.js and npm")
        # npm's own `#!/usr/bin/env node` finds the same node as the workload.
        path = os.pathsep.join([os.path.dirname(node), path])
        uv, python, tool = None, "", "npm"
    else:
        npm = ""
        uv = find_uv(account)
        python = venv_python()
        tool = "uv" if uv else "pip"
    env = installer_env(account, path)
    log(f"netfence: installing {ref} with {tool} as {account.name} (outside the fence)")
    with _staging(root, ref) as staging:
        for argv in steps(ref, staging, uv=uv, python=python, npm=npm):
            code, lines = _run(argv, account, env, staging, log)
            if code != 0:
                raise UsageError(f"{ref}: {tool} could not install it: "
                                 f"{installer_message(lines)}")
        with caller_permissions():
            version, commands = read_install(ref, staging)
            exact = PackageRef(ref.kind, ref.name, ref.version or version)
            final = cache.version_dir(root, exact)
            installed = cache.Installed(ref=exact, directory=final, commands=commands,
                                        installer=tool, installed_at=time.time())
            cache.write_manifest(installed, staging)
            # Readable by a workload user other than the caller (--user).
            os.chmod(staging, 0o755)
            if final.exists():  # --refresh: the new one replaces it whole
                old = Path(tempfile.mkdtemp(prefix=cache.OLD_PREFIX, dir=final.parent))
                final.rename(old / "v")
                staging.rename(final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                staging.rename(final)
            if ref.version is None:
                cache.record_latest(root, ref, exact.version or version)
    log(f"netfence: installed {exact} into {final}")
    return installed
