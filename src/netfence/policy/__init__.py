"""The normalized, immutable egress/ingress policy and its reference decision function."""

from netfence.policy.decision import Decision, Reason
from netfence.policy.denied import DENIED_NAMES, DeniedRange, denied_ranges
from netfence.policy.policy import Policy, compile_policy

__all__ = [
    "DENIED_NAMES",
    "Decision",
    "DeniedRange",
    "Policy",
    "Reason",
    "compile_policy",
    "denied_ranges",
]
