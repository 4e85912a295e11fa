"""Policies the policy-layer tests share: built from profile data, as a run compiles them."""

from __future__ import annotations

import ipaddress
from typing import Any

from netfence.policy import Policy, compile_policy
from netfence.profile import BUILTIN_PROFILES, with_overrides
from netfence.profile.loader import parse_profile


def policy_for(outbound: dict[str, Any] | None = None, *, mode: str = "bridge",
               inbound: dict[str, Any] | None = None, host_addresses: tuple[str, ...] = ()
               ) -> Policy:
    data = {"network": {"mode": mode, "outbound": outbound or {}, "inbound": inbound or {}}}
    profile = parse_profile(data, "test")
    return compile_policy(profile, [ipaddress.ip_address(a) for a in host_addresses])


ALLOW_ALL = compile_policy(BUILTIN_PROFILES["network"])
EXAMPLE = policy_for({"allow_host": ["example.com"]})
HOST = ipaddress.ip_address("10.203.0.1")


def allowlist(*hosts: str, cidrs: tuple[str, ...] = (), learn: bool = False) -> Policy:
    profile = with_overrides(BUILTIN_PROFILES["none"], allow_host=hosts, allow_cidr=cidrs)
    return compile_policy(profile, [HOST], learn=learn)
