"""Fixtures of the conformance suite: one long-lived fence per backend and profile, the
policy each was compiled from, and a canary listening on the host where no fence may go.

Fences start on first use and stay up until the suite's last test (a batch of requests
costs milliseconds; starting a fence costs up to a second, stopping Squid two). Then
everything they own is removed, and the suite checks that nothing is left: their proxies
refresh cached names, which must not reach the DNS logs of the tests that come after.
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
def fence(fences: Fences, proxy: str) -> FenceGetter:
    """fence(profile) -> (the running fence for this backend and profile, its policy)."""
    return lambda profile: fences.get(proxy, profile)
