"""The registry of known servers: the shipped entries are valid and reviewed (each
profile loads as a profile and compiles), and the rules for variables and grants."""

from __future__ import annotations

from pathlib import Path

import pytest

from netfence import registry
from netfence.errors import UsageError
from netfence.packages.refs import parse
from netfence.policy import compile_policy
from netfence.profile import load_profile
from netfence.profile.loader import parse_profile

SHIPPED = registry.load()
NAMES = sorted(SHIPPED)


def test_the_well_known_servers_are_there() -> None:
    assert {"fetch", "time", "git", "filesystem", "memory", "everything", "github",
            "brave-search", "notion"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_each_profile_loads_as_a_profile_and_compiles(name: str) -> None:
    entry = SHIPPED[name]
    # As `registry show` prints it, through the loader users' profile files go through:
    # the same profile (it can be saved and narrowed with --profile).
    assert parse_profile(registry.profile_data(entry.profile), name) == entry.profile
    assert entry.profile.name == name
    policy = compile_policy(entry.profile)
    # Reviewed: never loopback, private ranges or cloud metadata, whatever it allows.
    assert not policy.decide("metadata.example", 80, "169.254.169.254").allowed
    assert not policy.decide("internal.example", 443, "10.1.2.3").allowed


@pytest.mark.parametrize("name", [n for n in NAMES if SHIPPED[n].server.package])
def test_shipped_packages_are_pinned(name: str) -> None:
    ref = parse(SHIPPED[name].server.package or "")
    assert ref.version is not None, f"{name}: a reviewed profile is for one version"


def _allowed(name: str, host: str, port: int = 443) -> bool:
    return compile_policy(SHIPPED[name].profile).decide(host, port, "93.184.215.14").allowed


def test_profiles_allow_what_the_server_needs_and_no_more() -> None:
    for name in ("time", "git", "filesystem", "memory", "everything", "sequential-thinking"):
        assert not _allowed(name, "example.com"), name
        assert not _allowed(name, "registry.example", 443), name
    assert _allowed("fetch", "example.com", 80) and _allowed("fetch", "example.com")
    assert not _allowed("fetch", "example.com", 22)
    assert _allowed("github", "api.github.com") and not _allowed("github", "api.github.com", 80)
    assert not _allowed("github", "example.com")
    assert _allowed("brave-search", "api.search.brave.com")
    assert not _allowed("brave-search", "search.brave.com")
    assert _allowed("notion", "api.notion.com") and not _allowed("notion", "www.notion.so")


def test_api_servers_need_their_secret() -> None:
    for name, var in (("github", "GITHUB_PERSONAL_ACCESS_TOKEN"),
                      ("brave-search", "BRAVE_API_KEY"), ("notion", "NOTION_TOKEN")):
        (spec,) = [v for v in SHIPPED[name].server.env_vars if v.name == var]
        assert spec.required and spec.secret, name


def test_a_missing_required_variable_is_one_line_naming_it() -> None:
    with pytest.raises(UsageError) as caught:
        registry.resolve(SHIPPED["github"], [], {"GITHUB_TOOLSETS": "repos"}, "/")
    message = str(caught.value)
    assert "registry://github needs GITHUB_PERSONAL_ACCESS_TOKEN" in message
    assert "--env GITHUB_PERSONAL_ACCESS_TOKEN=VALUE" in message and "\n" not in message
    with pytest.raises(UsageError):  # empty is missing
        registry.resolve(SHIPPED["github"], [], {"GITHUB_PERSONAL_ACCESS_TOKEN": ""}, "/")


def test_a_package_entry_runs_its_package_with_the_extra_arguments() -> None:
    resolved = registry.resolve(SHIPPED["time"], ["--local-timezone", "UTC"], {}, "/")
    assert resolved.command == (SHIPPED["time"].server.package, "--local-timezone", "UTC")
    command = registry.resolve(SHIPPED["github"], [], {"GITHUB_PERSONAL_ACCESS_TOKEN": "t"}, "/")
    assert command.command == ("github-mcp-server", "stdio")


def test_path_arguments_are_granted(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "repo").mkdir()
    resolved = registry.resolve(SHIPPED["filesystem"], ["notes", str(tmp_path / "absent")],
                                {}, str(tmp_path))
    assert resolved.write == (str(tmp_path / "notes"),) and resolved.read == ()
    assert resolved.command[-2:] == ("notes", str(tmp_path / "absent"))  # as given
    git = registry.resolve(SHIPPED["git"], [f"--repository={tmp_path / 'repo'}", "-v"], {}, "/")
    assert git.write == (str(tmp_path / "repo"),)


def test_a_variable_naming_a_file_grants_its_directory() -> None:
    resolved = registry.resolve(SHIPPED["memory"], [],
                                {"MEMORY_FILE_PATH": "/home/me/mcp/graph.jsonl"}, "/")
    assert resolved.write == ("/home/me/mcp",)
    with pytest.raises(UsageError, match="absolute path"):
        registry.resolve(SHIPPED["memory"], [], {"MEMORY_FILE_PATH": "graph.jsonl"}, "/")


def test_an_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(UsageError) as caught:
        registry.find("registry://nope", SHIPPED)
    assert "no such server" in str(caught.value) and "fetch" in str(caught.value)


TEAM = """
version: 1
servers:
  fetch:
    description: Our fetch, narrowed to the docs we read.
    package: uvx://mcp-server-fetch@2026.10.24
    permissions:
      network:
        outbound:
          allow_host: [docs.python.org]
  internal:
    description: Our own server.
    command: [/opt/tools/internal-mcp]
    env_vars:
      - {name: INTERNAL_TOKEN, required: true, secret: true}
    permissions:
      name: internal-reviewed
      network:
        outbound:
          allow_host: [api.internal.example]
          allow_cidr: [10.20.0.0/16]
"""


def test_a_team_registry_adds_and_replaces_entries(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    team = tmp_path / "team.yaml"
    team.write_text(TEAM)
    entries = registry.load([str(team)])
    assert entries["fetch"].source == str(team) and entries["time"].source == "built-in"
    assert [str(h) for h in entries["fetch"].profile.network.outbound.allow_host] == [
        "docs.python.org"]
    assert entries["internal"].profile.name == "internal-reviewed"
    monkeypatch.setenv(registry.ENV_VAR, f"{team}:{tmp_path / 'other.yaml'}")
    assert registry.registry_files(["x.yaml"]) == [str(team), str(tmp_path / "other.yaml"),
                                                   "x.yaml"]


@pytest.mark.parametrize(("text", "words"), [
    ("servers: [a]", "servers"),
    ("version: 2\nservers: {}", "version"),
    ("servers:\n  Bad_Name: {description: x, command: [x]}", "1-24 lower-case"),
    ("servers:\n  a: {description: x}", "either package or command"),
    ("servers:\n  a: {description: x, command: [x], package: 'uvx://y@1.0'}",
     "either package or command"),
    ("servers:\n  a: {description: x, package: 'uvx://y@>1'}", "not an exact version"),
    ("servers:\n  a: {description: x, command: [x], transport: sse}", "needs target_port"),
    ("servers:\n  a: {description: x, command: [x], colour: red}", "unknown key"),
    ("servers:\n  a:\n    description: x\n    command: [x]\n    permissions:\n"
     "      network: {outbound: {allow_host: ['exa mple.com']}}", "permissions.network"),
    ("servers:\n  a:\n    description: x\n    command: [x]\n    permissions: {privileged: true}",
     "privileged"),
    ("servers:\n  a:\n    description: x\n    command: [x]\n    env_vars: [{name: 1X}]",
     "not an environment variable name"),
    ("servers: {a: [", "not valid YAML"),
])
def test_a_bad_registry_file_is_one_line_naming_the_field(tmp_path: Path, text: str,
                                                          words: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UsageError) as caught:
        registry.load([str(path)])
    assert words in str(caught.value) and str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_missing_registry_file_names_the_option(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--registry"):
        registry.load([str(tmp_path / "absent.yaml")])


def test_the_example_fetch_profile_is_narrower_than_the_registrys() -> None:
    # examples/fetch.yaml is the narrowed form the registry's fetch entry points to.
    example = Path(__file__).resolve().parents[3] / "examples" / "fetch.yaml"
    narrow = compile_policy(load_profile(str(example)))
    assert not narrow.decide("example.com", 443, "93.184.215.14").allowed
    assert _allowed("fetch", "example.com")
