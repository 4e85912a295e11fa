"""netfence's package cache: where it is, what a complete install is, listing, removal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from netfence.errors import UsageError
from netfence.packages import cache
from netfence.packages.refs import PackageRef, parse


@pytest.fixture(autouse=True)
def not_under_sudo(monkeypatch: pytest.MonkeyPatch) -> None:
    # The cache's files are the sudo caller's; here, this process's.
    monkeypatch.delenv("SUDO_UID", raising=False)
    monkeypatch.delenv("SUDO_GID", raising=False)


def put(root: Path, text: str, commands: dict[str, str] | None = None,
        latest: bool = False) -> cache.Installed:
    ref = parse(text)
    directory = cache.version_dir(root, ref)
    directory.mkdir(parents=True)
    installed = cache.Installed(ref=ref, directory=directory,
                                commands=commands or {ref.default_command: "bin/x"},
                                installer="pip", installed_at=1.0)
    cache.write_manifest(installed, directory)
    if latest:
        cache.record_latest(root, ref, ref.version or "")
    return installed


def test_root_is_the_env_var_else_the_users_cache(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "c"))
    assert cache.cache_root() == tmp_path / "c"
    monkeypatch.delenv(cache.ENV_VAR)
    root = cache.cache_root()
    if cache.cache_user().pw_uid == 0:
        assert root == cache.ROOT_CACHE  # a workload's user can read it
    else:
        assert root == Path(cache.cache_user().pw_dir, ".cache", "netfence", "packages")


def test_a_version_is_found_only_when_complete(tmp_path: Path) -> None:
    put(tmp_path, "uvx://mcp-server-time@1.0")
    found = cache.find(tmp_path, parse("uvx://mcp-server-time@1.0"))
    assert found is not None and found.ref.version == "1.0"
    assert found.commands == {"mcp-server-time": "bin/x"}
    # A directory without its manifest is a half-made install: not there.
    (tmp_path / "uvx" / "mcp-server-time" / "2.0").mkdir()
    assert cache.find(tmp_path, parse("uvx://mcp-server-time@2.0")) is None


def test_no_version_means_the_cached_latest(tmp_path: Path) -> None:
    ref = parse("npx://@scope/srv")
    assert cache.find(tmp_path, ref) is None  # never installed: needs the registry
    put(tmp_path, "npx://@scope/srv@1.0.0")
    assert cache.find(tmp_path, ref) is None  # a pinned install is not "latest"
    put(tmp_path, "npx://@scope/srv@1.1.0", latest=True)
    found = cache.find(tmp_path, ref)
    assert found is not None and found.ref.version == "1.1.0"


def test_all_installed_lists_every_version(tmp_path: Path) -> None:
    put(tmp_path, "uvx://a@1.0")
    put(tmp_path, "uvx://a@2.0", latest=True)
    put(tmp_path, "npx://@s/b@1.0.0")
    (tmp_path / "uvx" / "a" / ".install-x").mkdir()  # an install in progress
    listed = sorted(str(i.ref) for i in cache.all_installed(tmp_path))
    assert listed == ["npx://@s/b@1.0.0", "uvx://a@1.0", "uvx://a@2.0"]


def test_remove_one_version_or_all(tmp_path: Path) -> None:
    put(tmp_path, "uvx://a@1.0")
    put(tmp_path, "uvx://a@2.0", latest=True)
    removed = cache.remove(tmp_path, parse("uvx://a@2.0"))
    assert [str(i.ref) for i in removed] == ["uvx://a@2.0"]
    assert cache.latest_version(tmp_path, parse("uvx://a")) is None  # it pointed there
    assert cache.find(tmp_path, parse("uvx://a@1.0")) is not None
    assert [str(i.ref) for i in cache.remove(tmp_path, parse("uvx://a"))] == ["uvx://a@1.0"]
    assert not (tmp_path / "uvx" / "a").exists()


def test_removing_a_scoped_package_leaves_no_empty_scope(tmp_path: Path) -> None:
    put(tmp_path, "npx://@s/b@1.0.0", latest=True)
    cache.remove(tmp_path, parse("npx://@s/b"))
    assert list((tmp_path / "npx").iterdir()) == []
    assert cache.remove(tmp_path, parse("npx://@s/b")) == []


def test_leftovers_of_interrupted_installs_are_cleared(tmp_path: Path) -> None:
    directory = tmp_path / "pkg"
    for name in (".install-abc", ".old-def", "1.0"):
        (directory / name).mkdir(parents=True)
    cache.clear_leftovers(directory)
    assert [p.name for p in directory.iterdir()] == ["1.0"]


def test_the_manifest_says_what_is_installed(tmp_path: Path) -> None:
    installed = put(tmp_path, "npx://@s/b@1.0.0", {"b": "node_modules/@s/b/cli.js"})
    data = json.loads((installed.directory / cache.MANIFEST).read_text())
    assert data["package"] == "npx://@s/b@1.0.0" and data["version"] == "1.0.0"
    assert data["commands"] == {"b": "node_modules/@s/b/cli.js"}
    (installed.directory / cache.MANIFEST).write_text("{not json")
    assert cache.read_manifest(installed.directory) is None


def _installed(commands: dict[str, str], name: str = "npx://@s/tool@1.0.0") -> cache.Installed:
    return cache.Installed(ref=parse(name), directory=Path("/c"), commands=commands)


def test_the_command_run_is_the_one_named_after_the_package() -> None:
    assert _installed({"tool": "a", "other": "b"}).command(None) == ("tool", "a")
    assert _installed({"only": "a"}).command(None) == ("only", "a")
    assert _installed({"tool": "a", "other": "b"}).command("other") == ("other", "b")


@pytest.mark.parametrize(("commands", "wanted", "words"), [
    ({"a": "x", "b": "y"}, None, "several commands (a, b)"),
    ({}, None, "no command"),
    ({"a": "x"}, "zz", "no command 'zz'"),
])
def test_an_unclear_command_is_one_line(commands: dict[str, str], wanted: str | None,
                                        words: str) -> None:
    with pytest.raises(UsageError) as caught:
        _installed(commands).command(wanted)
    assert words in str(caught.value)


def test_ref_without_version_is_not_a_cache_dir() -> None:
    with pytest.raises(AssertionError):
        cache.version_dir(Path("/c"), PackageRef("uvx", "a"))


def test_a_second_holder_waits_and_says_so(tmp_path: Path) -> None:
    import os
    import threading

    first = cache.open_lock(tmp_path)
    cache.hold(first)
    said: list[str] = []
    second = cache.open_lock(tmp_path)
    held = threading.Event()

    def take() -> None:
        cache.hold(second, lambda: said.append("waiting"))
        held.set()

    thread = threading.Thread(target=take)
    thread.start()
    assert not held.wait(0.3) and said == ["waiting"]
    os.close(first)  # released: the second one gets it
    assert held.wait(5)
    thread.join(5)
    os.close(second)
