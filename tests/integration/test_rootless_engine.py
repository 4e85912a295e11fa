"""The docker runtime on a rootless container engine (issue 17): one line, exit 2, before
anything is created. A rootless Podman of the test user's serves the engine API."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.support.rootless import RootlessUser

pytestmark = pytest.mark.integration
# Local names only: were the refusal ever to come too late, a pull would go to loopback.
IMAGES = ("NETFENCE_DNS_IMAGE=localhost/netfence-none/dns:1",
          "NETFENCE_ENVOY_IMAGE=localhost/netfence-none/envoy:1",
          "NETFENCE_SQUID_IMAGE=localhost/netfence-none/squid:1")


@pytest.fixture
def rootless_podman(rootless_user: RootlessUser) -> Iterator[str]:
    """The user's Podman API socket, where netfence looks for a rootless one."""
    sock = rootless_user.runtime_dir / "podman" / "podman.sock"
    assert rootless_user.run("mkdir", "-p", str(sock.parent)).returncode == 0
    service = subprocess.Popen(
        rootless_user.argv("podman", "system", "service", "--time=0", f"unix://{sock}"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() and service.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if not sock.exists():
            assert service.stderr is not None
            pytest.fail(f"rootless podman did not start: {service.stderr.read()!r}")
        yield f"unix://{sock}"
    finally:
        service.terminate()
        try:
            service.wait(10)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait(10)
        # Podman's pause process keeps its user namespace: stopped by the PID it recorded.
        pause = rootless_user.runtime_dir / "libpod" / "tmp" / "pause.pid"
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pause.read_text()), signal.SIGKILL)


def test_the_docker_runtime_refuses_a_rootless_engine_in_one_line(
        rootless_user: RootlessUser, rootless_podman: str) -> None:
    done = rootless_user.run(
        "env", f"DOCKER_HOST={rootless_podman}", *IMAGES, rootless_user.python, "-m",
        "netfence", "run", "--runtime", "docker", "--name", "rl-engine", "--",
        "localhost/netfence-none/workload:1", "true", timeout=60)
    lines = done.stderr.decode().strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and "rootless container engine" in lines[0], lines
    assert "--runtime namespace" in lines[0]
    listed = rootless_user.run("podman", "ps", "-a", "--format", "{{.Names}}")
    assert b"rl-engine" not in listed.stdout  # nothing was created
