"""DNS rebinding: the address checked is the address dialed.

rebind.test answers 10.203.0.2 and 127.0.0.1 in turn, with TTL 0. Over a few seconds
(longer than Envoy's shortest DNS refresh, 5 s) a fence sees both answers. Whatever it
saw, every request must either be denied naming a loopback address, or be answered by the
server at the address the policy allows, and the decision log must show that same
address as the one dialed; a canary on the host's loopback must see no connection.
Squid keeps its first answer (its DNS cache does not honour TTL 0); Envoy re-resolves.
"""

from __future__ import annotations

import time

import pytest

from netfence.policy import Reason
from tests.conformance import cases
from tests.conformance.fences import Canary, FenceGetter, both_privileges
from tests.conformance.reference import Outcome, observe

# Against root's fences, and again against rootless ones (issue 17).
pytestmark = [pytest.mark.integration, both_privileges]

WINDOW = 7.0  # seconds: longer than Envoy's minimum DNS refresh
MAX_REQUESTS = 40
DENIALS = {Reason.LOOPBACK_ADDRESS.value, Reason.DENIED_ADDRESS_IN_ANSWER.value}


def test_rebinding_never_reaches_what_the_fence_did_not_check(
        proxy: str, fence: FenceGetter, canary: Canary) -> None:
    running, policy = fence("allow")
    outcomes: list[tuple[int, str, str | None]] = []
    deadline = time.monotonic() + WINDOW
    i = 0
    while time.monotonic() < deadline and i < MAX_REQUESTS:
        port = 80 if i % 2 == 0 else canary.port
        case = cases.get(f"rebind{i}", f"rebind.test:{port}")
        seen = observe(running.one(case.wire))
        outcomes.append((port, seen.outcome.value, seen.reason or seen.server))
        if seen.outcome is Outcome.ALLOWED:
            # Answered: by the fakenet server at the address the policy allows, nowhere else.
            assert port == 80 and seen.server == "10.203.0.2:80", seen
            assert policy.decide("rebind.test", port, "10.203.0.2").allowed
        elif seen.outcome is Outcome.PASSED:
            # Let through to 10.203.0.2 on a port nothing listens on there: refused.
            assert port == canary.port, seen
        else:
            assert seen.outcome is Outcome.DENIED and seen.reason in DENIALS, seen
        i += 1
        time.sleep(0.25)
    assert canary.hits == [], canary.hits
    kinds = {o[1] for o in outcomes}
    assert kinds & {"allowed", "passed", "denied"}, outcomes

    # The decision log: every request let through dialed 10.203.0.2 (the address the
    # policy allows); every denial names loopback.
    records = [r for r in running.decisions(want=1) if r["host"] == "rebind.test"]
    assert records, "no decisions logged for rebind.test"
    for record in records:
        if record["allowed"]:
            assert record["upstream_ip"] in (None, "10.203.0.2"), record
        else:
            assert record["reason"] in DENIALS, record
            if record["reason"] == Reason.LOOPBACK_ADDRESS.value:
                assert record["address"] == "127.0.0.0/8", record
    dialed = {r["upstream_ip"] for r in records if r["allowed"] and r["upstream_ip"]}
    assert dialed <= {"10.203.0.2"}, dialed
