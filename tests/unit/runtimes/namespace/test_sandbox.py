"""The workload's user: never root, never in root's group."""

from __future__ import annotations

import pwd

import pytest

from netfence.errors import UsageError
from netfence.runtimes.namespace import sandbox


def entry(uid: int, gid: int, name: str = "someone") -> pwd.struct_passwd:
    return pwd.struct_passwd((name, "x", uid, gid, "", f"/home/{name}", "/bin/sh"))


@pytest.mark.parametrize(("uid", "gid", "refused"), [
    (0, 0, "must not run as root"),
    (1000, 0, "primary group is root"),
])
def test_root_and_roots_group_are_refused(monkeypatch: pytest.MonkeyPatch, uid: int, gid: int,
                                          refused: str) -> None:
    monkeypatch.setattr(pwd, "getpwnam", lambda _name: entry(uid, gid))
    with pytest.raises(UsageError, match=refused):
        sandbox.resolve_user("someone")


def test_an_ordinary_user_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: entry(uid, 1000))
    user = sandbox.resolve_user("1000")
    assert (user.uid, user.gid, user.name, user.home) == (1000, 1000, "someone", "/home/someone")
