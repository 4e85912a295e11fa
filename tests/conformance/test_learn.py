"""Learn mode: `netfence run --learn FILE` lets the workload reach public destinations it is
not allowed yet (the always-denied set stays denied) and writes a profile that, used without
--learn, lets the same workload run unchanged."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from netfence.profile import load_profile
from tests.conformance.fences import both_privileges
from tests.support.fakenet import FakeNet
from tests.support.fence import acting_as, leftovers, netfence
from tests.support.rootless import RootlessUser

pytestmark = pytest.mark.integration


def workload(ca: Path) -> str:
    """Status codes of a few requests: new hosts, a new port, an IP literal, TLS through
    CONNECT, and a name resolving to loopback (denied in every mode)."""
    urls = ["http://allowed.test/a", "http://other.test:8080/b", "http://10.203.0.4/c",
            "http://loopback.test/d", "http://allowed.test/again"]
    script = " ".join(f"curl -s -o /dev/null -m 5 -w '%{{http_code}} ' {u};" for u in urls)
    script += (f" curl -s -o /dev/null -m 5 --cacert {ca} -w '%{{http_code}}\\n' "
               "https://www.allowed.test/e")
    return script


def run(proxy: str, fakenet: FakeNet, *args: str, script: str) -> subprocess.CompletedProcess[
        bytes]:
    name = f"nfc-learn-{proxy}"
    done = netfence("run", "--proxy", proxy, "--name", name, "--dns-upstream", fakenet.dns,
                    "--read", str(fakenet.ca_pem_path), *args, "--", "sh", "-c", script, timeout=90)
    left = [x for x in leftovers() if name in x]
    assert not left, left  # the run removed everything it made, the learn file written
    return done


@both_privileges
@pytest.mark.parametrize("proxy", ["envoy", "squid"])
def test_learned_profile_runs_the_workload_unchanged(proxy: str, fakenet: FakeNet,
                                                     tmp_path: Path,
                                                     fence_user: RootlessUser | None) -> None:
    if fence_user is None:
        learn_and_rerun(proxy, fakenet, tmp_path / "learned.yaml")
        return
    # Rootless: run by the user, the profile written where the user may write.
    learned = fence_user.home / f"learned-{proxy}.yaml"
    try:
        with acting_as(fence_user):
            learn_and_rerun(proxy, fakenet, learned)
    finally:
        learned.unlink(missing_ok=True)


def learn_and_rerun(proxy: str, fakenet: FakeNet, learned: Path) -> None:
    script = workload(fakenet.ca_pem_path)

    first = run(proxy, fakenet, "--allow-cidr", fakenet.cidr, "--learn", str(learned),
                script=script)
    assert first.returncode == 0, first.stderr
    # Learn mode lets the new destinations through; loopback stays denied.
    assert first.stdout.decode().split() == ["200", "200", "200", "403", "200", "200"], first
    assert b"suggested profile written to" in first.stderr, first.stderr

    data = yaml.safe_load(learned.read_text())
    outbound = data["network"]["outbound"]
    assert outbound["allow_host"] == ["10.203.0.4", "allowed.test", "other.test",
                                      "www.allowed.test"]
    assert outbound["allow_port"] == [80, 443, 8080]
    assert outbound["allow_cidr"] == [fakenet.cidr]
    assert "loopback.test:80  loopback_address" in learned.read_text()
    load_profile(str(learned))  # a valid profile for netfence itself

    second = run(proxy, fakenet, "--profile", str(learned), script=script)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout, (first.stdout, second.stdout, second.stderr)

    # Without the learned profile (nor --learn) the same workload is refused: the
    # profile is what made the difference.
    control = run(proxy, fakenet, "--allow-cidr", fakenet.cidr, script=script)
    # (curl prints 000 for a refused CONNECT: no HTTP response from the server.)
    assert control.stdout.decode().split() == ["403"] * 5 + ["000"], control
