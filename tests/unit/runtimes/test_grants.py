"""File grants: the profile's read/write/allow_unix_socket entries as parsed, merged from
the command line, and checked before a workload starts (on temporary directories)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from netfence.errors import ProfileError, UsageError
from netfence.profile import Profile, with_overrides
from netfence.profile.loader import parse_profile
from netfence.runtimes import grants
from netfence.runtimes.grants import Bind

NEVER = ("/run/netfence", "/run/netns", "/proc", "/sys", "/dev")


# --- the profile -----------------------------------------------------------------------


def test_profile_grants_are_absolute_normalised_and_deduplicated() -> None:
    profile = parse_profile({"read": ["/srv//data/", "/srv/data", "/x/../y"],
                             "write": ["/out:/out"], "allow_unix_socket": ["/run/a.sock"]},
                            "p.yaml")
    assert profile.read == ("/srv/data", "/y")
    assert profile.write == ("/out",)
    assert profile.allow_unix_socket == ("/run/a.sock",)


@pytest.mark.parametrize(("data", "fragment"), [
    ({"read": ["data"]}, "read = [\"data\"]: entry 0 'data': must be an absolute path"),
    ({"write": ["/a:/b"]}, "HOST:CONTAINER with two different paths is not supported"),
    ({"allow_unix_socket": [""]}, "not a path"),
    ({"allow_unix_socket": "/run/a.sock"}, "allow_unix_socket"),
])
def test_bad_grants_name_the_field(data: dict[str, object], fragment: str) -> None:
    with pytest.raises(ProfileError) as err:
        parse_profile(data, "p.yaml")
    assert str(err.value).startswith("p.yaml: ")
    assert fragment in str(err.value), str(err.value)


def test_with_overrides_adds_grants_to_a_new_profile() -> None:
    base = Profile(read=("/srv/a",))
    merged = with_overrides(base, read=["/srv/b", "/srv/a"], write=["/srv/out"],
                            allow_unix_socket=["/run/x.sock"])
    assert merged.read == ("/srv/a", "/srv/b")
    assert merged.write == ("/srv/out",)
    assert merged.allow_unix_socket == ("/run/x.sock",)
    assert base.read == ("/srv/a",) and base.write == ()
    assert with_overrides(base) is base


def test_with_overrides_refuses_a_relative_grant() -> None:
    with pytest.raises(ProfileError, match="command line: read"):
        with_overrides(Profile(), read=["relative"])


# --- paths never granted ---------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/run", "/run/netfence", "/run/netfence/x",
                                  "/run/netns", "/proc", "/proc/1/root", "/sys/kernel",
                                  "/dev", "/dev/shm"])
def test_never_granted(path: str) -> None:
    assert grants.refusal(path, path, NEVER) is not None


@pytest.mark.parametrize("path", ["/srv", "/run/user/1000", "/home/me/notes", "/devices",
                                  "/tmp", "/procfs-data"])
def test_granted(path: str) -> None:
    assert grants.refusal(path, path, NEVER) is None


def test_a_link_to_a_path_never_granted_is_refused() -> None:
    assert grants.refusal("/srv/link", "/proc/1", NEVER) is not None
    assert grants.refusal("/srv/link", "/", NEVER) is not None


# --- sockets inside grants ---------------------------------------------------------------


@pytest.fixture
def listening() -> Iterator[ExitStack]:
    """Bind Unix sockets with stack.enter_context(bound(path)); closed at the end."""
    with ExitStack() as stack:
        yield stack


def bound(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    return sock


def test_find_sockets_finds_them_and_named_pipes_at_any_depth(tmp_path: Path,
                                                              listening: ExitStack) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "file").write_text("x")
    os.mkfifo(tmp_path / "fifo")
    listening.enter_context(bound(tmp_path / "top.sock"))
    listening.enter_context(bound(tmp_path / "a" / "b" / "deep.sock"))
    (tmp_path / "link.sock").symlink_to(tmp_path / "top.sock")  # not followed
    assert grants.find_sockets(str(tmp_path)) == ["a/b/deep.sock", "fifo", "top.sock"]


def test_find_sockets_is_bounded(tmp_path: Path) -> None:
    for i in range(50):
        (tmp_path / f"f{i}").write_text("")
    assert grants.find_sockets(str(tmp_path), max_entries=10) is None
    assert grants.find_sockets(str(tmp_path), max_entries=100) == []


def test_check_masks_sockets_inside_grants_unless_granted(tmp_path: Path,
                                                          listening: ExitStack) -> None:
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    listening.enter_context(bound(work / "sub" / "agent.sock"))
    listening.enter_context(bound(work / "ok.sock"))
    checked = grants.check(Profile(read=(str(work),), allow_unix_socket=(str(work / "ok.sock"),)))
    assert checked.binds == (Bind(str(work), str(work)),)
    assert checked.masked == (Bind(str(work / "sub" / "agent.sock"),
                                   str(work / "sub" / "agent.sock")),)
    assert checked.sockets == (Bind(str(work / "ok.sock"), str(work / "ok.sock")),)


def test_check_orders_parents_first_and_write_wins(tmp_path: Path) -> None:
    (tmp_path / "p" / "out").mkdir(parents=True)
    checked = grants.check(Profile(read=(str(tmp_path / "p" / "out"), str(tmp_path / "p")),
                                   write=(str(tmp_path / "p" / "out"),)))
    assert [(b.path, b.writable) for b in checked.binds] == [
        (str(tmp_path / "p"), False), (str(tmp_path / "p" / "out"), True)]


def test_a_grant_through_a_link_shows_the_target_at_the_granted_path(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    checked = grants.check(Profile(read=(str(tmp_path / "link"),)))
    assert checked.binds == (Bind(str(tmp_path / "link"), str(tmp_path / "real")),)


@pytest.mark.parametrize("field", ["read", "write", "allow_unix_socket"])
def test_a_missing_grant_is_one_line(tmp_path: Path, field: str) -> None:
    with pytest.raises(UsageError) as err:
        grants.check(parse_profile({field: [str(tmp_path / "nope")]}, "test"))
    assert str(tmp_path / "nope") in str(err.value) and "no such file" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_socket_is_granted_by_allow_unix_socket_only(tmp_path: Path,
                                                       listening: ExitStack) -> None:
    listening.enter_context(bound(tmp_path / "s.sock"))
    with pytest.raises(UsageError, match="--allow-unix-socket"):
        grants.check(Profile(read=(str(tmp_path / "s.sock"),)))
    with pytest.raises(UsageError, match="not a Unix socket"):
        grants.check(Profile(allow_unix_socket=(str(tmp_path),)))


def test_engine_sockets_are_never_granted(tmp_path: Path, listening: ExitStack) -> None:
    engine = tmp_path / "engine"
    engine.mkdir()
    listening.enter_context(bound(engine / "podman.sock"))
    with pytest.raises(UsageError, match="container engine"):
        grants.check(Profile(allow_unix_socket=(str(engine / "podman.sock"),)))
    # A container runtime refuses a grant holding one; the namespace runtime hides it.
    with pytest.raises(UsageError, match="container engine"):
        grants.check(Profile(read=(str(engine),)), container=True)
    assert grants.check(Profile(read=(str(engine),))).masked == (
        Bind(str(engine / "podman.sock"), str(engine / "podman.sock")),)


def test_the_engine_in_docker_host_is_never_granted(tmp_path: Path, listening: ExitStack,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    listening.enter_context(bound(tmp_path / "api"))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'api'}")
    with pytest.raises(UsageError, match="container engine"):
        grants.check(Profile(allow_unix_socket=(str(tmp_path / "api"),)))


def test_a_grant_too_large_to_search_is_refused(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(30):
        (tmp_path / f"f{i}").write_text("")
    monkeypatch.setattr(grants, "MAX_ENTRIES", 10)
    # Searched through a descriptor held open (/proc/self/fd/N): compare where it leads.
    monkeypatch.setattr(grants, "find_sockets",
                        lambda root: None if os.path.realpath(root) == str(tmp_path) else [])
    with pytest.raises(UsageError, match="too large to search"):
        grants.check(Profile(read=(str(tmp_path),)))


def test_another_state_root_refuses_grants_inside_it_and_allows_those_holding_it() -> None:
    # A user's other state root (a rootless run from another kind of session): the view
    # covers it inside a grant of the home; a grant of (or inside) it is refused.
    other = ("/home/u/.local/state/netfence",)
    for path in ("/home/u/.local/state/netfence", "/home/u/.local/state/netfence/w1"):
        assert grants.refusal(path, path, NEVER, other) is not None
    assert grants.refusal("/home/u", "/home/u", NEVER, other) is None
