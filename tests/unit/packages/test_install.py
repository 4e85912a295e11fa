"""Installing into the cache: the installers' command lines, reading what they installed,
their error messages, and ensure()'s cache hits, with a stand-in npm (no network)."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from netfence.errors import UsageError
from netfence.packages import cache, command_line, ensure, install, prepare
from netfence.packages.refs import parse


@pytest.fixture(autouse=True)
def not_under_sudo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SUDO_UID", raising=False)
    monkeypatch.delenv("SUDO_GID", raising=False)


def test_pip_steps_install_wheels_only_into_a_venv(tmp_path: Path) -> None:
    got = install.steps(parse("uvx://mcp-server-time@1.0"), tmp_path, uv=None,
                        python="/usr/bin/python3", npm="")
    assert got[0] == ["/usr/bin/python3", "-m", "venv", str(tmp_path)]
    assert got[1][:4] == [str(tmp_path / "bin" / "python"), "-m", "pip", "install"]
    assert got[1][-1] == "mcp-server-time==1.0"
    assert "--only-binary" in got[1] and got[1][got[1].index("--only-binary") + 1] == ":all:"


def test_uv_steps_never_build_and_ignore_projects(tmp_path: Path) -> None:
    got = install.steps(parse("uvx://pkg"), tmp_path, uv="/opt/uv", python="/usr/bin/python3",
                        npm="")
    assert got[0] == ["/opt/uv", "venv", "--no-project", "--python", "/usr/bin/python3",
                      str(tmp_path)]
    assert got[1][:3] == ["/opt/uv", "pip", "install"] and "--no-build" in got[1]
    assert got[1][-1] == "pkg"


def test_npm_steps_run_no_install_script(tmp_path: Path) -> None:
    (step,) = install.steps(parse("npx://@s/p@1.2.3"), tmp_path, uv=None, python="",
                            npm="/usr/bin/npm")
    assert step[:4] == ["/usr/bin/npm", "install", "--prefix", str(tmp_path)]
    assert "--ignore-scripts" in step and step[-1] == "@s/p@1.2.3"


@pytest.mark.parametrize(("lines", "want"), [
    (["Collecting nope", "ERROR: Could not find a version that satisfies the requirement nope",
      "ERROR: No matching distribution found for nope"],
     "No matching distribution found for nope"),
    (["npm error code E404", "npm error 404 Not Found - GET https://r.example/nope - Not found",
      "npm error 404", "npm error A complete log of this run can be found in: /x.log"],
     "404 Not Found - GET https://r.example/nope - Not found"),
    (["  \u00d7 No solution found when resolving dependencies:",
      "  ╰─▶ Because nope was not found in the package registry, it cannot be installed."],
     "Because nope was not found in the package registry, it cannot be installed."),
    (["Using CPython 3.11.2", "error: No solution found when resolving dependencies",
      "  cause: Because nope was not found in the package registry, it is unsatisfiable."],
     "No solution found when resolving dependencies: Because nope was not found in the "
     "package registry, it is unsatisfiable."),
    (["error: Failed to spawn: `x`"], "Failed to spawn: `x`"),
    (["something odd", ""], "something odd"),
    ([], "no message"),
])
def test_the_installers_own_message_is_one_line(lines: list[str], want: str) -> None:
    assert install.installer_message(lines) == want


def test_a_venvs_version_and_console_scripts_are_read(tmp_path: Path) -> None:
    site = tmp_path / "lib" / "python3.11" / "site-packages"
    info = site / "Mcp_Server_Time-2.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: Mcp_Server_Time\nVersion: 2.0\n")
    (info / "entry_points.txt").write_text(
        "[console_scripts]\nmcp-server-time = m:main\nmissing-script = m:x\n"
        "[other]\nx = y\n")
    other = site / "dep-1.0.dist-info"  # a dependency's scripts are not the package's
    other.mkdir()
    (other / "METADATA").write_text("Metadata-Version: 2.1\nName: dep\nVersion: 1.0\n")
    (other / "entry_points.txt").write_text("[console_scripts]\ndep = d:main\n")
    (tmp_path / "bin").mkdir()
    for script in ("mcp-server-time", "dep"):
        (tmp_path / "bin" / script).write_text("#!/x/bin/python\n")
    version, commands = install.read_install(parse("uvx://mcp-server-time"), tmp_path)
    assert version == "2.0"
    assert commands == {"mcp-server-time": "bin/mcp-server-time"}


def test_an_npm_bin_outside_its_package_is_not_a_command(tmp_path: Path) -> None:
    package = tmp_path / "node_modules" / "@s" / "p"
    (package / "dist").mkdir(parents=True)
    (package / "dist" / "cli.js").write_text("")
    (package / "package.json").write_text(json.dumps(
        {"version": "1.0.0", "bin": {"p": "./dist/cli.js", "evil": "../../../../etc/passwd"}}))
    version, commands = install.read_install(parse("npx://@s/p"), tmp_path)
    assert version == "1.0.0"
    assert commands == {"p": "node_modules/@s/p/dist/cli.js"}


def test_a_string_bin_is_named_after_the_package(tmp_path: Path) -> None:
    package = tmp_path / "node_modules" / "@s" / "p"
    package.mkdir(parents=True)
    (package / "index.js").write_text("")
    (package / "package.json").write_text(json.dumps({"version": "3.0.0", "bin": "index.js"}))
    assert install.read_install(parse("npx://@s/p"), tmp_path)[1] == {
        "p": "node_modules/@s/p/index.js"}


def test_uv_is_chosen_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    account = install.Account(None, None, (), "me", "/nonexistent")
    monkeypatch.setenv(install.UV_ENV, "none")
    assert install.find_uv(account) is None
    monkeypatch.setenv(install.UV_ENV, "/opt/uv/bin/uv")
    assert install.find_uv(account) == "/opt/uv/bin/uv"


def test_the_installer_gets_the_users_home_and_no_interpreter_override(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", "/evil")
    monkeypatch.setenv("SUDO_COMMAND", "/x")
    env = install.installer_env(install.Account(1000, 1000, (), "me", "/home/me"), "/usr/bin")
    assert env["HOME"] == "/home/me" and env["USER"] == "me" and env["PATH"] == "/usr/bin"
    assert "PYTHONPATH" not in env and "SUDO_COMMAND" not in env


# --- ensure(), end to end with a stand-in npm ----------------------------------------------

FAKE_NPM = """#!{python}
# Stands in for `npm install --prefix DIR ... SPEC`: records the call, makes the package.
import json, os, sys
args = sys.argv[1:]
with open({calls!r}, "a") as fh:
    fh.write(" ".join(args) + "\\n")
prefix, spec = args[args.index("--prefix") + 1], args[-1]
versioned = spec.count("@") > spec.startswith("@")
name, _, version = spec.rpartition("@") if versioned else (spec, "", "")
if name.endswith("missing"):
    print("npm error code E404")
    print("npm error 404 Not Found - GET http://127.0.0.1:9/" + name)
    sys.exit(1)
package = os.path.join(prefix, "node_modules", name)
os.makedirs(os.path.join(package, "dist"))
with open(os.path.join(package, "dist", "index.js"), "w") as fh:
    fh.write("")
with open(os.path.join(package, "package.json"), "w") as fh:
    json.dump({{"version": version or {latest!r}, "bin": {{"srv": "dist/index.js"}}}}, fh)
print("added 1 package in 0s")
"""


@pytest.fixture
def fake_npm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH with a stand-in npm and node; the cache in tmp_path/cache. The file the
    calls are recorded in is returned."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls"
    calls.write_text("")
    (bindir / "npm").write_text(FAKE_NPM.format(python=sys.executable, calls=str(calls),
                                                latest="1.0.0"))
    (bindir / "node").write_text("#!/bin/sh\n")
    for tool in ("npm", "node"):
        (bindir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "cache"))
    return calls


def test_first_run_installs_later_runs_use_the_cache(fake_npm: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    first = ensure(parse("npx://@s/srv"), log=lines.append)
    root = tmp_path / "cache"
    assert first.directory == root / "npx" / "@s" / "srv" / "1.0.0"
    assert first.ref.version == "1.0.0"
    assert first.commands == {"srv": "node_modules/@s/srv/dist/index.js"}
    assert any("installing npx://@s/srv with npm" in line for line in lines)
    assert "added 1 package in 0s" in lines  # the installer's output, passed on
    assert cache.latest_version(root, parse("npx://@s/srv")) == "1.0.0"
    mode = stat.S_IMODE(first.directory.stat().st_mode)
    assert mode == 0o755  # a workload user other than the caller can read it

    # Cached: no installer (the latest as recorded, and the exact version).
    again = ensure(parse("npx://@s/srv"))
    exact = ensure(parse("npx://@s/srv@1.0.0"))
    assert again == exact == first
    assert len(fake_npm.read_text().splitlines()) == 1

    ensure(parse("npx://@s/srv"), refresh=True)
    assert len(fake_npm.read_text().splitlines()) == 2
    # Replaced whole: no staging or old copy left beside it.
    assert sorted(p.name for p in (root / "npx" / "@s" / "srv").iterdir()) == [
        "1.0.0", "latest"]


def test_a_pinned_version_is_installed_as_asked(fake_npm: Path) -> None:
    installed = ensure(parse("npx://plain@2.0.0"))
    assert installed.ref.version == "2.0.0"
    assert "plain@2.0.0" in fake_npm.read_text()


def test_a_failed_install_is_one_line_and_leaves_nothing(fake_npm: Path,
                                                         tmp_path: Path) -> None:
    with pytest.raises(UsageError) as caught:
        ensure(parse("npx://@s/missing"))
    message = str(caught.value)
    assert message == ("npx://@s/missing: npm could not install it: 404 Not Found - GET "
                       "http://127.0.0.1:9/@s/missing")
    assert caught.value.exit_code == 2
    assert list((tmp_path / "cache" / "npx").iterdir()) == []


def test_prepare_runs_the_bin_with_node_and_shows_the_install(fake_npm: Path,
                                                              tmp_path: Path) -> None:
    ready = prepare("npx://@s/srv", ("--flag",))
    node = str(tmp_path / "bin" / "node")
    directory = ready.installed.directory
    assert ready.argv == (node, str(directory / "node_modules/@s/srv/dist/index.js"), "--flag")
    assert ready.program_paths == (str(directory),)


def test_a_venv_runs_its_script_through_its_own_interpreter(tmp_path: Path) -> None:
    # The script's #! names the directory the venv was built in, before its rename.
    installed = cache.Installed(ref=parse("uvx://t@1.0"), directory=tmp_path,
                                commands={"t": "bin/t"})
    assert command_line(installed, None) == (str(tmp_path / "bin" / "python"),
                                             str(tmp_path / "bin" / "t"))
