"""`netfence mcp-config`: the client snippet, and that `netfence run` accepts what it emits."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from netfence.cli.main import cli, run
from tests.support.fence import netfence


def config(*args: str) -> tuple[dict[str, Any], str]:
    result = CliRunner().invoke(cli, ["mcp-config", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result.stderr


def run_args(args: list[str]) -> list[str]:
    """The arguments after `run` in a launcher command line."""
    return args[args.index("run") + 1:]


def test_stdio_entry_runs_netfence_through_sudo() -> None:
    data, stderr = config("--name", "fetch", "--allow-host", "example.com", "--",
                          "/usr/bin/env", "mcp-server-fetch", "--flag")
    entry = data["mcpServers"]["fetch"]
    assert entry["command"] == "sudo"
    args = entry["args"]
    assert args[0] == "-n" and os.path.isabs(args[1])
    assert args[args.index("--") + 1:] == ["/usr/bin/env", "mcp-server-fetch", "--flag"]
    after_run = run_args(args)
    assert after_run[:4] == ["--name", "fetch", "--profile", "none"]
    assert after_run[4:6] == ["--allow-host", "example.com"]
    assert stderr == ""


def test_emitted_arguments_parse_as_netfence_run() -> None:
    data, _ = config("--name", "gh", "--proxy", "squid", "--allow-port", "8443",
                     "--allow-cidr", "10.1.0.0/16", "--env", "TOKEN=abc", "--",
                     "/bin/true")
    ctx = run.make_context("run", run_args(data["mcpServers"]["gh"]["args"]))
    params = ctx.params
    assert params["name"] == "gh" and params["proxy"] == "squid"
    assert params["allow_port"] == (8443,) and params["allow_cidr"] == ("10.1.0.0/16",)
    assert params["env_pairs"] == ("TOKEN=abc",)
    assert params["command"] == ("/bin/true",)


def test_profile_file_becomes_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "p.yaml").write_text("network:\n  outbound:\n    allow_host: [a.example]\n")
    monkeypatch.chdir(tmp_path)
    data, _ = config("--name", "x", "--profile", "p.yaml", "--no-sudo", "--", "/bin/true")
    entry = data["mcpServers"]["x"]
    assert entry["command"] != "sudo"
    args = entry["args"]
    assert args[args.index("--profile") + 1] == str(tmp_path / "p.yaml")


def test_program_found_on_path_is_given_by_absolute_path() -> None:
    data, _ = config("--name", "x", "--", "sh", "-c", "true")
    args = data["mcpServers"]["x"]["args"]
    program = args[args.index("--") + 1]
    assert os.path.isabs(program) and program.endswith("/sh")


def test_vscode_format() -> None:
    data, _ = config("--name", "x", "--format", "vscode", "--", "/bin/true")
    assert data["servers"]["x"]["type"] == "stdio"
    assert "mcpServers" not in data


@pytest.mark.parametrize(("transport", "path", "kind"),
                         [("streamable-http", "/mcp", "http"), ("sse", "/sse", "sse")])
def test_http_server_gets_a_url_and_the_command_to_start_it(transport: str, path: str,
                                                            kind: str) -> None:
    data, stderr = config("--name", "web", "--transport", transport, "--port", "9123",
                          "--target-port", "8080", "--", "/bin/true")
    assert data["mcpServers"]["web"] == {"type": kind, "url": f"http://127.0.0.1:9123{path}"}
    assert "--detach" in stderr and "--target-port 8080" in stderr and "--port 9123" in stderr


@pytest.mark.parametrize("args", [
    ("--name", "Bad Name", "--", "true"),
    ("--name", "x", "--profile", "/nonexistent/p.yaml", "--", "true"),
    ("--name", "x", "--transport", "sse", "--", "true"),
    ("--name", "x", "--port", "9000", "--", "true"),
    ("--name", "x", "--proxy", "haproxy", "--", "true"),
    ("--name", "x", "--env", "NOVALUE", "--", "true"),
])
def test_bad_input_is_one_line_exit_2(args: tuple[str, ...]) -> None:
    done = netfence("mcp-config", *args)
    assert done.returncode == 2, done
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], done.stderr
    assert done.stdout == b""


def test_file_grants_pass_through_absolute(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    data, _ = config("--name", "fs", "--read", "srv", "--write", "/home/me/notes",
                     "--allow-unix-socket", "agent.sock", "--", "/bin/true")
    params = run.make_context("run", run_args(data["mcpServers"]["fs"]["args"])).params
    assert params["read"] == (str(tmp_path / "srv"),)
    assert params["write"] == ("/home/me/notes",)
    assert params["allow_unix_socket"] == (str(tmp_path / "agent.sock"),)


def test_a_registry_entry_keeps_its_own_profile_and_name() -> None:
    data, _ = config("--env", "BRAVE_API_KEY=k", "--", "registry://brave-search")
    args = data["mcpServers"]["brave-search"]["args"]
    assert "--profile" not in args  # `run` then uses the entry's reviewed profile
    assert args[args.index("--") + 1:] == ["registry://brave-search"]
    params = run.make_context("run", run_args(args)).params
    assert params["name"] == "brave-search" and params["env_pairs"] == ("BRAVE_API_KEY=k",)


def test_a_registry_entry_needs_its_variables_now() -> None:
    done = netfence("mcp-config", "--", "registry://brave-search")
    assert done.returncode == 2
    assert "needs BRAVE_API_KEY" in done.stderr.decode() and done.stdout == b""


def test_a_team_registry_passes_through_absolute(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "team.yaml").write_text(
        "servers:\n  ours: {description: x, command: [/opt/ours]}\n")
    monkeypatch.chdir(tmp_path)
    data, _ = config("--registry", "team.yaml", "--", "registry://ours")
    args = data["mcpServers"]["ours"]["args"]
    assert args[args.index("--registry") + 1] == str(tmp_path / "team.yaml")


def test_a_package_passes_unchanged_and_names_the_server() -> None:
    data, _ = config("--", "npx://@modelcontextprotocol/server-everything@2026.8.31", "stdio")
    (name, entry), = data["mcpServers"].items()
    assert name == "server-everything"
    args = entry["args"]
    assert args[args.index("--") + 1:] == [
        "npx://@modelcontextprotocol/server-everything@2026.8.31", "stdio"]
    assert args[args.index("--profile") + 1] == "none"


@pytest.mark.parametrize("args", [
    ("--", "uvx://pkg@>=1"),
    ("--", "/bin/true"),  # no --name, and none to derive
    ("--", "registry://nope"),
])
def test_bad_packages_and_entries_are_one_line(args: tuple[str, ...]) -> None:
    done = netfence("mcp-config", *args)
    assert done.returncode == 2, done
    assert len(done.stderr.decode().strip().splitlines()) == 1
