"""Fixtures shared by the integration tests that run fences."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.fakenet import FakeNet
from tests.support.fence import BACKENDS, acting_as, leftovers, nothing_new
from tests.support.rootless import RootlessUser


@pytest.fixture(params=BACKENDS)
def proxy(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def privilege(request: pytest.FixtureRequest) -> Iterator[str]:
    """"root", or "rootless": netfence() runs as the session's unprivileged test user for
    the test. Root unless parametrized (fence.both_privileges)."""
    param = str(getattr(request, "param", "root"))
    if param == "root":
        yield param
        return
    user = request.getfixturevalue("rootless_user")
    assert isinstance(user, RootlessUser)
    with acting_as(user):
        yield param


@pytest.fixture
def nothing_left_behind() -> Iterator[None]:
    with nothing_new(leftovers):
        yield


@pytest.fixture
def net_args(fakenet: FakeNet) -> list[str]:
    """Options that point a fence at the simulated internet, and show the workload its
    test CA (curl --cacert names it)."""
    return ["--dns-upstream", fakenet.dns, "--allow-cidr", fakenet.cidr,
            "--read", str(fakenet.ca_pem_path)]
