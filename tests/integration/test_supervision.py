"""What the shared supervisor promises in every runtime, tested once for each."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.support.fence import acting_as, leftovers, netfence_argv, nothing_new
from tests.support.rootless import RootlessUser

pytestmark = pytest.mark.integration


@dataclass
class Placed:
    """How to run a command in one runtime: netfence's options, the command's prefix (the
    image, for containers) and netfence's environment."""

    options: list[str]
    prefix: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))


# The docker case reaches its engine through getfixturevalue: marked by hand.
@pytest.fixture(params=["namespace", "namespace-rootless",
                        pytest.param("docker", marks=pytest.mark.containers)])
def placed(request: pytest.FixtureRequest, net_args: list[str]) -> Iterator[Placed]:
    name = "nf-sup-" + secrets.token_hex(3)
    if request.param == "namespace":
        with nothing_new(leftovers):
            yield Placed(["--runtime", "namespace", *net_args, "--name", name])
        return
    if request.param == "namespace-rootless":  # as the session's unprivileged test user
        user = request.getfixturevalue("rootless_user")
        assert isinstance(user, RootlessUser)
        with nothing_new(leftovers), acting_as(user):
            yield Placed(["--runtime", "namespace", *net_args, "--name", name])
        return
    engine = request.getfixturevalue("podman")
    with nothing_new(lambda: [*leftovers(), *engine.managed()]):
        yield Placed(["--runtime", "docker", *net_args, "--name", name],
                     [engine.workload_image], engine.env())


def test_sigterm_reaches_the_workload_then_teardown(placed: Placed, proxy: str) -> None:
    # os.write in the handler: print() there could re-enter a print() still flushing.
    code = ("import os, signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: (os.write(1, b'got TERM\\n'),"
            " sys.exit(3)))\nprint('ready', flush=True)\ntime.sleep(60)")
    proc = subprocess.Popen(
        netfence_argv("run", "--proxy", proxy, *placed.options, "--",
                      *placed.prefix, "python3", "-c", code),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=placed.env)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert b"got TERM" in out, (proc.returncode, out, err)
    assert proc.returncode == 3
