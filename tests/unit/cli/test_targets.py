"""`netfence run` with a package or a registry entry as its command: what reaches the
runtime (a stand-in here), and the one-line refusals before anything is installed."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from netfence import registry
from netfence.backends import DecisionRecord
from netfence.cli import main as cli_main
from netfence.cli import targets
from netfence.cli.main import cli
from netfence.packages import Prepared, cache
from netfence.packages.refs import parse
from netfence.runtimes import WorkloadSpec
from netfence.runtimes.base import Runtime
from netfence.runtimes.state import WorkloadState
from tests.support.fence import netfence


class Recorder(Runtime):
    name = "namespace"

    def __init__(self) -> None:
        self.specs: list[WorkloadSpec] = []

    def run(self, spec: WorkloadSpec) -> int:
        self.specs.append(spec)
        return 0

    def list(self) -> list[WorkloadState]:
        return []

    def stop(self, name: str) -> None:
        raise NotImplementedError

    def decisions(self, name: str, follow: bool = False) -> Iterator[DecisionRecord]:
        return iter(())


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder()
    monkeypatch.setattr(cli_main, "get_runtime", lambda name=None: recorder)
    monkeypatch.delenv("SUDO_UID", raising=False)
    return recorder


@pytest.fixture
def installs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """prepare() without installing: what it was asked for."""
    asked: list[str] = []

    def fake_prepare(text: str, args: tuple[str, ...], **_: Any) -> Prepared:
        asked.append(text)
        ref = parse(text)
        installed = cache.Installed(ref=ref.with_version(ref.version or "9.9.9"),
                                    directory=tmp_path / "install", commands={"x": "bin/x"})
        return Prepared(installed, ("/usr/bin/node", str(tmp_path / "install/x.js"), *args),
                        (str(tmp_path / "install"),))

    monkeypatch.setattr("netfence.packages.prepare", fake_prepare)  # imported when used
    return asked


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_a_registry_entry_runs_with_its_own_profile(runtime: Recorder) -> None:
    result = invoke("run", "--env", "GITHUB_PERSONAL_ACCESS_TOKEN=t", "--allow-host",
                    "extra.example", "--", "registry://github", "--read-only")
    assert result.exit_code == 0, result.output
    (spec,) = runtime.specs
    assert spec.command == ("github-mcp-server", "stdio", "--read-only")
    assert spec.profile.name == "github"
    hosts = [str(h) for h in spec.profile.network.outbound.allow_host]
    assert "api.github.com" in hosts and "extra.example" in hosts  # --allow-host adds
    assert spec.profile.network.outbound.allow_port == (443,)
    assert spec.env == {"GITHUB_PERSONAL_ACCESS_TOKEN": "t"}


def test_a_profile_given_replaces_the_entrys(runtime: Recorder) -> None:
    invoke("run", "--profile", "none", "--env", "GITHUB_PERSONAL_ACCESS_TOKEN=t", "--",
           "registry://github")
    assert runtime.specs[0].profile.name == "none"


def test_a_registry_package_is_installed_and_its_paths_shown(
        runtime: Recorder, installs: list[str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "notes").mkdir()
    monkeypatch.chdir(tmp_path)
    result = invoke("run", "--", "registry://filesystem", "notes")
    assert result.exit_code == 0, result.output
    assert installs == [registry.load()["filesystem"].server.package]
    (spec,) = runtime.specs
    assert spec.command[-1] == "notes" and spec.command[0] == "/usr/bin/node"
    assert spec.program_paths == (str(tmp_path / "install"),)
    assert spec.profile.write == (str(tmp_path / "notes"),)
    assert spec.profile.network.mode == "none"


def test_a_package_runs_under_the_default_profile(runtime: Recorder,
                                                  installs: list[str]) -> None:
    result = invoke("run", "--", "uvx://mcp-server-time", "--local-timezone", "UTC")
    assert result.exit_code == 0, result.output
    assert installs == ["uvx://mcp-server-time"]
    (spec,) = runtime.specs
    assert spec.profile.name == "none" and spec.command[-2:] == ("--local-timezone", "UTC")


@pytest.mark.parametrize(("args", "words"), [
    (("--", "registry://github"), "registry://github needs GITHUB_PERSONAL_ACCESS_TOKEN"),
    (("--", "registry://memory"), "needs MEMORY_FILE_PATH"),
    (("--", "registry://nope"), "no such server in the registry"),
    (("--runtime", "docker", "--", "uvx://mcp-server-time"), "need the namespace runtime"),
    (("--runtime", "docker", "--", "registry://time"), "need the namespace runtime"),
    (("--", "npx://pkg@^1.0.0"), "not an exact version"),
    (("--refresh", "--", "true"), "--refresh is for uvx:// and npx://"),
    (("--registry", "/nonexistent/team.yaml", "--", "registry://time"), "cannot read"),
])
def test_refusals_are_one_line_exit_2_before_any_install(args: tuple[str, ...],
                                                         words: str) -> None:
    done = netfence("run", *args)
    assert done.returncode == 2, done
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and words in lines[0], done.stderr
    assert done.stdout == b""


def test_registry_list_and_show() -> None:
    listed = json.loads(invoke("registry", "list", "--json").stdout)
    assert {"fetch", "time", "memory"} <= {e["name"] for e in listed}
    text = invoke("registry", "list").stdout
    assert text.splitlines()[0].split() == ["NAME", "RUNS", "NETWORK", "NEEDS", "DESCRIPTION"]
    shown = invoke("registry", "show", "memory").stdout
    assert "MEMORY_FILE_PATH (required)" in shown and "mode: none" in shown
    assert "netfence run --env MEMORY_FILE_PATH=... -- registry://memory" in shown
    data = json.loads(invoke("registry", "show", "--json", "registry://github").stdout)
    assert data["permissions"]["network"]["outbound"]["allow_port"] == [443]
    done = netfence("registry", "show", "nope")
    assert done.returncode == 2


def test_packages_list_and_remove_on_an_empty_cache(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "cache"))
    monkeypatch.delenv("SUDO_UID", raising=False)
    assert json.loads(invoke("packages", "list", "--json").stdout) == []
    assert "no packages" in invoke("packages", "list").stderr
    assert invoke("packages", "remove", "uvx://a").exit_code == 0
    done = netfence("packages", "remove")
    assert done.returncode == 2 and b"--all" in done.stderr


def test_the_schemes_told_apart_before_import_are_the_registrys_and_packages() -> None:
    from netfence.packages.refs import SCHEMES

    assert targets.REGISTRY_SCHEME == registry.SCHEME
    assert tuple(SCHEMES) == targets.PACKAGE_SCHEMES


def test_a_plain_run_imports_neither_the_registry_nor_pydantic() -> None:
    # A fresh interpreter: this one has imported everything already.
    code = ("import sys, netfence.cli.main; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pydantic' "
            "or m in ('netfence.registry', 'netfence.packages')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]", done.stdout
