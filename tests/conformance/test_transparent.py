"""The transparent path against Policy.decide: requests sent straight to an address,
ignoring the proxy, naming a host (HTTP Host, TLS SNI) that is not that address's. Envoy
must decide by the name, at the port dialed, and dial the name; Squid, which has no such
path, must let nothing through.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from tests.conformance import cases
from tests.conformance.fences import Canary, FenceGetter, both_privileges
from tests.conformance.harness import dial_case
from tests.conformance.reference import Case, Outcome, observe
from tests.conformance.test_matrix import run_matrix
from tests.support.fakenet_server import HOST_IP

# Against root's fences, and again against rootless ones (issue 17).
pytestmark = [pytest.mark.integration, both_privileges]

PROFILES = ("allow", "network", "ports", "none")


@pytest.mark.parametrize("profile", PROFILES)
def test_transparent_matrix_agrees_with_the_policy(proxy: str, fence: FenceGetter,
                                                   profile: str, ca: Path,
                                                   canary: Canary) -> None:
    matrix = cases.transparent_matrix(ca, canary.port)
    assert len({c.id for c in matrix}) == len(matrix)
    if proxy == "squid":
        _nothing_gets_through(fence(profile)[0].send([c.wire for c in matrix]), matrix)
        assert not canary.hits, canary.hits
        return
    failures = run_matrix(proxy, fence, profile, matrix, canary)
    assert not failures, f"{len(failures)} of {len(matrix)} cases:\n" + "\n".join(failures)


def _nothing_gets_through(results: list[dict[str, object]], matrix: list[Case]) -> None:
    for case, result in zip(matrix, results, strict=True):
        seen = observe(result)
        assert seen.outcome is Outcome.REJECTED, (case.id, seen)
        assert result.get("error") == "oserror 111", (case.id, result)  # reset at once


RAW = b"\x00\x01 neither TLS nor HTTP\r\n\r\n"


@pytest.mark.parametrize(("address", "port", "reached"), [
    ("10.203.0.3", 80, True),  # an allowlisted literal: passed as it is
    ("10.203.0.2", 80, False),  # a server, but not allowlisted as a literal
    (HOST_IP, 0, False),  # the host's address, on the canary's port
    ("fd00::5", 80, False),  # allowlisted, but a private address
])
def test_raw_tcp_passes_only_to_allowed_literals(proxy: str, fence: FenceGetter, address: str,
                                                 port: int, reached: bool,
                                                 canary: Canary) -> None:
    running, _ = fence("allow")
    result = running.one(dial_case(f"raw-{address}", address, port or canary.port,
                                   payload=RAW, timeout=8))
    reply = base64.b64decode(str(result.get("reply", "")))
    # The simulated internet's HTTP servers answer anything (this with an error page); a
    # fence refusing closes without a word.
    assert (b"400" in reply) is (reached and proxy == "envoy"), (result, reply)
    assert bool(reply) is (reached and proxy == "envoy"), (result, reply)
    assert not canary.hits, canary.hits
