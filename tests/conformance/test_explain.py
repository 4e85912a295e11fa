"""Explainable denials: the 403 body and the decision-log line of every denial name the
destination, the reason (with the denied range for the address stage) and the remedy."""

from __future__ import annotations

import time

import pytest

from netfence.policy import Reason
from tests.conformance import cases
from tests.conformance.fences import FenceGetter, both_privileges
from tests.conformance.reference import Case, Outcome, observe

# Against root's fences, and again against rootless ones (issue 17).
pytestmark = [pytest.mark.integration, both_privileges]

R = Reason
# (profile, request, host logged, reason, text the body and the log's address must show,
#  text the remedy must show, or None where nothing can allow it)
DENIALS: list[tuple[str, Case, str, Reason, str | None, str | None]] = [
    ("allow", cases.get("x-na", "other.test"), "other.test", R.NOT_ALLOWLISTED, None,
     "--allow-host other.test"),
    ("allow", cases.get("x-port", "allowed.test:8080"), "allowed.test", R.PORT_NOT_ALLOWED,
     None, "--allow-port 8080"),
    ("allow", cases.get("x-priv", "private.test"), "private.test", R.PRIVATE_ADDRESS,
     "10.0.0.0/8", "--allow-cidr"),
    ("allow", cases.get("x-host", "hostaddr.test"), "hostaddr.test", R.HOST_ADDRESS,
     "10.203.0.1/32", None),
    ("allow", cases.get("x-lo", "loopback.test"), "loopback.test", R.LOOPBACK_ADDRESS,
     "127.0.0.0/8", None),
    ("allow", cases.get("x-ll", "metadata.test"), "metadata.test", R.LINK_LOCAL_ADDRESS,
     "169.254.0.0/16", None),
    ("allow", cases.get("x-name", "localhost"), "localhost", R.DENIED_NAME, None, None),
    ("allow", cases.get("x-bad", "-x.wild.test"), "-x.wild.test", R.INVALID_HOST, None, None),
    ("allow", cases.get("x-tls", "allowed.test", scheme="https"), "allowed.test",
     R.UNSUPPORTED_REQUEST, None, "CONNECT"),
    ("network", cases.get("x-lit", "10.203.9.9"), "10.203.9.9", R.PRIVATE_ADDRESS,
     "10.0.0.0/8", "--allow-cidr"),
    ("network", cases.get("x-v6", "[fd00::6]"), "fd00::6", R.PRIVATE_ADDRESS, "fc00::/7",
     "--allow-cidr"),
    ("ports", cases.get("x-dflt", "allowed.test"), "allowed.test", R.PORT_NOT_ALLOWED, None,
     "--allow-port 80"),
]


def test_denials_name_reason_and_remedy(proxy: str, fence: FenceGetter) -> None:
    sent: list[tuple[str, str, Reason, str | None, str | None]] = []
    for profile, case, host, reason, address, remedy in DENIALS:
        running, _ = fence(profile)
        result = running.one(case.wire)
        seen = observe(result)
        body = seen.detail
        assert seen.outcome is Outcome.DENIED and seen.reason == reason.value, (case.id, seen)
        assert body.startswith("netfence: denied ") and "\n" not in body, body
        if address:
            assert f"{reason.value} {address}" in body, body
        if remedy:
            assert "; to allow: " in body and remedy in body, body
        else:
            assert "to allow" not in body, body
        sent.append((profile, host, reason, address, remedy))

    # The same in the decision log (`netfence logs --json`).
    deadline = time.monotonic() + 20
    missing = sent
    while missing and time.monotonic() < deadline:
        records = {p: fence(p)[0].decisions() for p in {s[0] for s in sent}}
        missing = []
        for profile, host, reason, address, remedy in sent:
            found = [r for r in records[profile]
                     if r["host"] == host and r["reason"] == reason.value and not r["allowed"]]
            if not found:
                missing.append((profile, host, reason, address, remedy))
                continue
            record = found[-1]
            if address:
                assert record["address"] == address, record
            if remedy:
                assert remedy in (record["remedy"] or ""), record
            else:
                assert not record["remedy"], record
        if missing:
            time.sleep(0.5)
    assert not missing, missing


def test_mixed_answers_are_explained(proxy: str, fence: FenceGetter) -> None:
    """A name answering [allowed, 127.0.0.1]: Squid names the loopback address; Envoy's dial
    view names the answer (reference.SAFE_DIFFERENCES) and says how to find the address."""
    running, _ = fence("allow")
    seen = observe(running.one(cases.get("x-mixed", "mixed.test").wire))
    assert seen.outcome is Outcome.DENIED
    if proxy == "squid":
        assert seen.reason == R.LOOPBACK_ADDRESS.value and "127.0.0.0/8" in seen.detail
    else:
        assert seen.reason == R.DENIED_ADDRESS_IN_ANSWER.value
        assert "netfence check mixed.test:80" in seen.detail, seen.detail
