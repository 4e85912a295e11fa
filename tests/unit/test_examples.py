"""Every profile in examples/ loads with netfence's own loader and means what it says."""

from __future__ import annotations

from pathlib import Path

import pytest

from netfence.policy import compile_policy
from netfence.profile import load_profile

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PROFILES = sorted(p for p in EXAMPLES.iterdir() if p.suffix in (".yaml", ".yml", ".json"))


def test_there_are_examples() -> None:
    names = {p.stem for p in PROFILES}
    assert {"fetch", "github", "filesystem"} <= names, names


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.name)
def test_example_loads_and_compiles(path: Path) -> None:
    profile = load_profile(str(path))
    assert profile.name == path.stem
    compile_policy(profile)


def _decide(name: str, host: str, port: int = 443) -> bool:
    policy = compile_policy(load_profile(str(EXAMPLES / f"{name}.yaml")))
    return policy.decide(host, port, "140.82.112.5").allowed


def test_github_reaches_github_only_over_https() -> None:
    assert _decide("github", "api.github.com")
    assert _decide("github", "raw.githubusercontent.com")
    assert not _decide("github", "api.github.com", 80)
    assert not _decide("github", "example.com")


def test_filesystem_has_no_network() -> None:
    assert not _decide("filesystem", "api.github.com")
    assert not _decide("filesystem", "example.com", 80)


def test_fetch_is_an_allowlist() -> None:
    assert _decide("fetch", "en.wikipedia.org")
    assert not _decide("fetch", "example.com")


def test_filesystem_writes_its_workspace() -> None:
    profile = load_profile(str(EXAMPLES / "filesystem.yaml"))
    assert profile.write == ("/home/me/notes",)
    assert profile.read == ()
