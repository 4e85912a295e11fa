"""Session-wide fixtures: the simulated internet that integration tests reach through a fence."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.fakenet import FakeNet
from tests.support.fakenet import fakenet as build_fakenet


@pytest.fixture(scope="session")
def fakenet() -> Iterator[FakeNet]:
    if os.geteuid() != 0:
        pytest.skip("the simulated internet needs root (namespaces, veth, routes): "
                    "run scripts/test with sudo")
    with build_fakenet() as net:
        yield net
