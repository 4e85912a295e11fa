"""The normalized, immutable egress/ingress policy and its reference decision function."""

from netfence.policy.decision import Decision, Reason
from netfence.policy.denied import (
    ADDRESS_CLASS_ORDER,
    DENIED_NAMES,
    AddressRule,
    DeniedRange,
    denied_ranges,
)
from netfence.policy.policy import LOOPBACK_HOSTS, Policy, compile_policy

__all__ = [
    "ADDRESS_CLASS_ORDER",
    "DENIED_NAMES",
    "LOOPBACK_HOSTS",
    "AddressRule",
    "Decision",
    "DeniedRange",
    "Policy",
    "Reason",
    "compile_policy",
    "denied_ranges",
]
