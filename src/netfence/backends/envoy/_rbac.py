"""The address stage: RBAC DENY policies on the address the dynamic forward proxy resolved
(the upstream_ip_port matcher; destination_ip would match the listener's own address)."""

from __future__ import annotations

from collections.abc import Iterable

from netfence.backends.envoy._names import RBAC_FILTER, RBAC_PER_ROUTE_TYPE, UPSTREAM_IP_TYPE, Json
from netfence.policy import AddressRule, Policy
from netfence.policy.denied import IPNetwork


def _ip_rule(net: IPNetwork) -> Json:
    return {
        "matcher": {
            "name": "envoy.rbac.matchers.upstream_ip_port",
            "typed_config": {
                "@type": UPSTREAM_IP_TYPE,
                "upstream_ip": {
                    "address_prefix": str(net.network_address),
                    "prefix_len": net.prefixlen,
                },
            },
        }
    }


def _any_of(nets: Iterable[IPNetwork]) -> Json:
    return {"or_rules": {"rules": [_ip_rule(n) for n in nets]}}


def rbac_policy_name(rule: AddressRule) -> str:
    return f"{rule.reason.value}@{rule.network}"


def rbac_policies(policy: Policy) -> dict[str, Json]:
    """DENY policies, one per address rule, on the address the DFP resolved.

    Envoy checks DENY policies in name order and reports the first match. The rules do
    not overlap except the host's own addresses, and "host_address@..." sorts first.
    Lifted addresses are cut out of the ranges (Policy.address_rules).
    """
    anyone = [{"any": True}]
    out = {
        rbac_policy_name(rule): {"permissions": [_any_of(rule.networks)], "principals": anyone}
        for rule in policy.address_rules()
    }
    return dict(sorted(out.items()))


def address_stage(policy: Policy) -> Json:
    """The address stage for an HTTP route configuration (its typed_per_filter_config):
    the policy's rules for the HCM's RBAC filter, in the routes (RDS), so that a change of
    the address rules (allow_cidr, the host's addresses) leaves the HCM, and with it every
    established connection, alone. Routes that resolve nothing turn RBAC off by their own."""
    return {RBAC_FILTER: {"@type": RBAC_PER_ROUTE_TYPE, "rbac": {
        "rules": {"action": "DENY", "policies": rbac_policies(policy)}}}}
