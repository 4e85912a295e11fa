"""Fixtures of the conformance suite: one long-lived fence per backend and profile, the
policy each was compiled from, and a canary listening on the host where no fence may go.

Fences start on first use and stay up until the suite's last test (a batch of requests
costs milliseconds; starting a fence costs up to a second, stopping Squid two). Then
everything they own is removed, and the suite checks that nothing is left: their proxies
refresh cached names, which must not reach the DNS logs of the tests that come after.

A test marked fences.both_privileges (the `fence_user` fixture) runs against root's
fences and again against rootless ones, started by the session's unprivileged test user.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conformance.fences import (
    BACKENDS,
    FENCE_PREFIX,
    Canary,
    FenceGetter,
    Fences,
    profile_specs,
)
from tests.support.fakenet import FakeNet
from tests.support.fence import leftovers
from tests.support.rootless import RootlessUser


@pytest.fixture(scope="session")
def canary(fakenet: FakeNet) -> Iterator[Canary]:
    watch = Canary()
    yield watch
    watch.close()


@pytest.fixture(scope="package")
def fences(fakenet: FakeNet, canary: Canary) -> Iterator[Fences]:
    before = set(leftovers())
    pool = Fences(fakenet, canary, specs=profile_specs(fakenet, canary.port))
    try:
        yield pool
    finally:
        problems = pool.close()
        deadline = time.monotonic() + 10
        # Only this suite's own fences (named nfc-*): others may run on the machine.
        while (new := {x for x in set(leftovers()) - before if FENCE_PREFIX in x}) and \
                time.monotonic() < deadline:
            time.sleep(0.1)
        assert not problems, problems
        assert new == set(), f"left behind: {sorted(new)}"


@pytest.fixture(params=BACKENDS)
def proxy(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def ca(fakenet: FakeNet) -> Path:
    return fakenet.ca_pem_path


@pytest.fixture
def fence_user(request: pytest.FixtureRequest) -> RootlessUser | None:
    """Who runs the test's fences: root (None) unless parametrized "rootless"."""
    if getattr(request, "param", "root") == "root":
        return None
    user = request.getfixturevalue("rootless_user")
    assert isinstance(user, RootlessUser)
    return user


@pytest.fixture
def fence(fences: Fences, proxy: str, fence_user: RootlessUser | None) -> FenceGetter:
    """fence(profile) -> (the running fence for this backend and profile, its policy)."""
    return lambda profile: fences.get(proxy, profile, fence_user)
