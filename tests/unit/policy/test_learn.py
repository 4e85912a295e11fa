"""policy/learn.py: the profile `netfence run --learn` writes from what a workload used."""

from __future__ import annotations

import yaml

from netfence.policy import compile_policy
from netfence.policy.learn import Used, learned_profile, summary
from netfence.profile import BUILTIN_PROFILES, with_overrides


def test_learned_profile_allows_exactly_what_was_used() -> None:
    base = with_overrides(BUILTIN_PROFILES["none"], allow_cidr=("10.203.0.0/24",))
    used = [Used("allowed.test", 80, True), Used("Allowed.Test.", 80, True),
            Used("other.test", 8080, True), Used("10.203.0.4", 80, True),
            Used("[::ffff:10.203.0.5]", 443, True),
            Used("loopback.test", 80, False, "loopback_address"),
            Used("", None, False, "invalid_host")]
    text = learned_profile(base, used, now="T")
    data = yaml.safe_load(text)
    assert data["network"]["outbound"] == {
        "allow_host": ["10.203.0.4", "::ffff:acb:5", "allowed.test", "other.test"],
        "allow_port": [80, 443, 8080],
        "allow_cidr": ["10.203.0.0/24"],
    }
    assert "#   allowed.test:80  2" in text
    assert "#   loopback.test:80  loopback_address  1" in text
    assert summary(used) == (5, 2)
    # It is a profile netfence reads, allowing exactly these destinations.
    from netfence.profile.loader import parse_profile
    pol = compile_policy(parse_profile(data, "learned"))
    assert pol.decide("other.test", 8080).allowed and not pol.decide("else.test", 80).allowed
    assert pol.decide("10.203.0.5", 443, None).allowed


def test_nothing_used_learns_an_empty_allowlist() -> None:
    data = yaml.safe_load(learned_profile(BUILTIN_PROFILES["none"], [], now="T"))
    assert data == {"name": "learned", "network": {"outbound": {"allow_host": []}}}
