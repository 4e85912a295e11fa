"""The conformance judge itself: a backend that serves the wrong destination, or names an
address reason where the policy denies by name, must be reported, never excused."""

from __future__ import annotations

from netfence.policy import Reason, compile_policy
from netfence.profile.loader import parse_profile
from tests.conformance.reference import Case, Observed, Outcome, Target, judge

POLICY = compile_policy(parse_profile(
    {"network": {"outbound": {"allow_host": ["allowed.test"], "allow_cidr": ["10.203.0.0/24"]}}},
    "test"))


def verdict(target: Target, seen: Observed, backend: str = "envoy") -> tuple[bool, bool]:
    got = judge(backend, POLICY, Case("t", {}, [target]), 0, seen)
    return got.ok, got.bypass


def test_served_by_the_destination_is_fine() -> None:
    seen = Observed(Outcome.ALLOWED, server="10.203.0.2:80")
    assert verdict(Target("allowed.test", 80), seen) == (True, False)


def test_served_by_another_allowed_address_is_a_bypass() -> None:
    # allow_cidr covers every fakenet server: the policy alone would accept any of them,
    # e.g. the one a Host header or userinfo named.
    for server in ("10.203.0.3:80", "10.203.0.4:80"):
        seen = Observed(Outcome.ALLOWED, server=server)
        assert verdict(Target("allowed.test", 80), seen) == (False, True), server


def test_an_address_reason_for_a_name_denial_is_not_excused() -> None:
    # mixed-host.test has several answers, but the policy denies it by name: a backend
    # that reports an address reason has resolved a name it must not.
    seen = Observed(Outcome.DENIED, reason=Reason.DENIED_ADDRESS_IN_ANSWER.value)
    assert verdict(Target("mixed-host.test", 80), seen)[0] is False
    # For an allowed name with a denied answer the same words are a documented difference.
    wide = compile_policy(parse_profile(
        {"network": {"outbound": {"allow_host": ["mixed.test"]}}}, "test"))
    got = judge("envoy", wide, Case("t", {}, [Target("mixed.test", 80)]), 0, seen)
    assert got.ok and got.rule
