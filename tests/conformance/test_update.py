"""`netfence update` against the request matrix: a fence whose policy was replaced while
it ran decides every case exactly as Policy.decide does for the new policy (as a fence
started with it would), and nothing of the old policy is left: a fence started with no
destination allowed is updated to the broad `allow` profile, then back to none."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conformance.fences import FENCE_PREFIX, Canary, Fences
from tests.conformance.harness import Fenced
from tests.conformance.test_matrix import MATRICES, run_matrix
from tests.support.fence import netfence

pytestmark = pytest.mark.integration


def test_an_updated_fence_decides_as_the_new_policy_says(proxy: str, fences: Fences,
                                                         canary: Canary, ca: Path) -> None:
    net = ["--dns-upstream", fences.fakenet.dns, "--read", str(ca)]
    fence = Fenced(f"{FENCE_PREFIX}update-{proxy}", proxy, [*net, *fences.specs["none"].args()])
    try:
        fence.start()
        for profile in ("allow", "none"):
            spec = fences.specs[profile]
            done = netfence("update", fence.name, *spec.args())
            assert done.returncode == 0, done.stderr
            policy = spec.policy()
            matrix = MATRICES[profile](ca, canary.port)
            failures = run_matrix(proxy, lambda _p, now=policy: (fence, now), profile,
                                  matrix, canary)
            assert not failures, (f"after the update to {profile}: {len(failures)} of "
                                  f"{len(matrix)} cases:\n" + "\n".join(failures))
    finally:
        code = fence.close()
    assert code == 0, fence.stderr()
