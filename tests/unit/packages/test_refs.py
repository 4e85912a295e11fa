"""Package references: what `uvx://` and `npx://` accept, and the cache keys they give."""

from __future__ import annotations

import pytest

from netfence.errors import UsageError
from netfence.packages.refs import PackageRef, is_package, parse


@pytest.mark.parametrize(("text", "want"), [
    ("uvx://mcp-server-time", PackageRef("uvx", "mcp-server-time")),
    ("uvx://MCP_Server.Time@2026.10.19", PackageRef("uvx", "mcp-server-time", "2026.10.19")),
    ("uvx://pkg@1!2.0.post1+local.7", PackageRef("uvx", "pkg", "1!2.0.post1+local.7")),
    ("uvx://pkg@1.0rc1", PackageRef("uvx", "pkg", "1.0rc1")),
    ("uvx://pkg@latest", PackageRef("uvx", "pkg")),
    ("uvx://tools@1.0#second", PackageRef("uvx", "tools", "1.0", "second")),
    ("npx://@modelcontextprotocol/server-everything",
     PackageRef("npx", "@modelcontextprotocol/server-everything")),
    ("npx://@scope/name@2.1.4", PackageRef("npx", "@scope/name", "2.1.4")),
    ("npx://tavily-mcp@0.2.22-beta.1", PackageRef("npx", "tavily-mcp", "0.2.22-beta.1")),
    ("npx://name@latest#bin", PackageRef("npx", "name", None, "bin")),
])
def test_parse(text: str, want: PackageRef) -> None:
    assert parse(text) == want


@pytest.mark.parametrize(("text", "words"), [
    ("pip://x", "not a package"),
    ("uvx://", "not a PyPI package name"),
    ("uvx://-bad", "not a PyPI package name"),
    ("uvx://../etc", "not a PyPI package name"),
    ("uvx://pkg@>=1.0", "not an exact version"),
    ("uvx://pkg@1.*", "not an exact version"),
    ("uvx://pkg@", "not an exact version"),
    ("npx://pkg@^1.2.0", "not an exact version"),
    ("npx://pkg@next", "not an exact version"),
    ("npx://pkg@1.2", "not an exact version"),
    ("npx://@scope", "not an npm package name"),
    ("npx://@scope/../x", "not an npm package name"),
    ("npx://Upper", "not an npm package name"),
    ("npx://a/b/c", "not an npm package name"),
    ("npx://pkg#", "not a command name"),
    ("npx://pkg#../x", "not a command name"),
])
def test_bad_references_are_one_line(text: str, words: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse(text)
    assert words in str(caught.value)
    assert "\n" not in str(caught.value)
    assert caught.value.exit_code == 2


def test_cache_keys_are_exact_and_never_escape() -> None:
    assert parse("npx://@scope/name@1.0.0").key == ("npx", "@scope", "name")
    assert parse("uvx://Mcp_Server@1.0").key == ("uvx", "mcp-server")
    assert all(part not in ("", ".", "..") for part in parse("npx://a.b@1.0.0").key)


def test_default_command_leaves_the_scope_out() -> None:
    assert parse("npx://@scope/server-x").default_command == "server-x"
    assert parse("uvx://mcp-server-time").default_command == "mcp-server-time"


def test_str_round_trips() -> None:
    for text in ("uvx://mcp-server-time@2026.10.19", "npx://@a/b@1.0.0#c", "npx://x"):
        assert str(parse(text)) == text
        assert parse(str(parse(text))) == parse(text)


def test_is_package() -> None:
    assert is_package("uvx://x") and is_package("npx://x")
    assert not is_package("uvx") and not is_package("registry://time")
