"""Session-wide fixtures: the simulated internet that integration tests reach through a fence."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.dockerd import ENGINES, docker_engine, docker_missing_reason
from tests.support.dockerd import remove_stale as remove_stale_docker
from tests.support.fakenet import FakeNet
from tests.support.fakenet import fakenet as build_fakenet
from tests.support.fence import register
from tests.support.podman import Engine, podman_engine, podman_missing_reason
from tests.support.rootless import RootlessUser
from tests.support.rootless import missing_reason as rootless_missing_reason
from tests.support.rootless import rootless_user as build_rootless_user

# scripts/test runs the integration and conformance tests in two lanes at once (`--lane`):
# "containers" in a network namespace of its own, with the tests on a container engine
# (marked `containers`: those using these fixtures, and those marked by hand that reach an
# engine another way) and the modules below, whole; "namespaces", in the host's, the rest.
# test_mcp_e2e.py goes whole to the containers lane: its container sessions are there
# anyway, and its namespace-runtime ones even the lanes' times out.
LANES = ("namespaces", "containers")
ENGINE_FIXTURES = frozenset({"podman", "dockerd", "engine"})
CONTAINERS_LANE_MODULES = frozenset({"test_mcp_e2e.py"})


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--lane", choices=LANES,
                     help="only this lane's tests (scripts/test runs both lanes at once)")


def _lane(item: pytest.Item) -> str:
    if item.get_closest_marker("containers") or item.path.name in CONTAINERS_LANE_MODULES:
        return "containers"
    return "namespaces"


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by the marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if ENGINE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.containers)
    lane = config.getoption("lane")
    if lane is not None:
        config.hook.pytest_deselected(items=[i for i in items if _lane(i) != lane])
        items[:] = [i for i in items if _lane(i) == lane]


@pytest.fixture(scope="session")
def fakenet() -> Iterator[FakeNet]:
    if os.geteuid() != 0:
        pytest.skip("the simulated internet needs root (namespaces, veth, routes): "
                    "run scripts/test with sudo")
    with build_fakenet() as net:
        yield net


def _not_in_the_namespaces_lane(config: pytest.Config) -> None:
    """An engine started there would share that lane's network namespace and host."""
    if config.getoption("lane") == "namespaces":
        pytest.fail("a container engine in scripts/test's namespaces lane: mark the test "
                    "`containers` (tests/conftest.py), so that it runs in the containers lane")


def _require_engine(missing: str | None) -> None:
    """Skip the engine's tests where it cannot run; in CI, as root, fail instead."""
    if missing is not None:
        if os.environ.get("CI") and os.geteuid() == 0:
            pytest.fail(f"{missing}: CI must run the container runtime tests")
        pytest.skip(missing)


@pytest.fixture(scope="session")
def podman(fakenet: FakeNet, pytestconfig: pytest.Config) -> Iterator[Engine]:
    """A real Podman engine (Docker API on a private socket) with the images built."""
    _not_in_the_namespaces_lane(pytestconfig)
    _require_engine(podman_missing_reason())
    with podman_engine(fakenet.ca_pem_path) as engine:
        yield engine


@pytest.fixture(scope="session")
def dockerd(fakenet: FakeNet, pytestconfig: pytest.Config) -> Iterator[Engine]:
    """A real Docker Engine (a private dockerd) with the images built."""
    _not_in_the_namespaces_lane(pytestconfig)
    if os.geteuid() == 0:
        remove_stale_docker()  # a killed session's daemon would look like a user's Docker
    _require_engine(docker_missing_reason())
    with docker_engine(fakenet.ca_pem_path) as engine:
        yield engine


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> Engine:
    """Each engine in turn (both session fixtures stay up: their rules meet on one host)."""
    found = request.getfixturevalue(request.param)
    assert isinstance(found, Engine)
    return found


@pytest.fixture(scope="session")
def rootless_user(fakenet: FakeNet) -> Iterator[RootlessUser]:
    """An unprivileged user made for the session, who runs netfence rootless; removed
    with everything of it at the end (and by the next session, if this one is killed)."""
    missing = rootless_missing_reason()
    if missing is not None:
        pytest.skip(missing)
    try:
        with build_rootless_user() as user:
            register(user)
            yield user
    except RuntimeError as exc:
        pytest.fail(f"the rootless test user: {exc}")
