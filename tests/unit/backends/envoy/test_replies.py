"""backends/envoy/_replies.py: every 403 the egress sends names the destination, the reason
and the remedy."""

from __future__ import annotations

from netfence.backends.envoy import deny_body
from netfence.policy import Reason
from tests.support.envoy_config import config, hcm, policy_for, rbac_rules


def test_every_denial_gets_a_body_naming_reason_and_range() -> None:
    cfg = config(policy_for({"outbound": {"allow_host": ["a.test"]}}))
    mappers = hcm(cfg)["local_reply_config"]["mappers"]
    by_expression = {
        m["filter"]["extension_filter"]["typed_config"]["expression"]:
            m["body_format_override"]["text_format_source"]["inline_string"]
        for m in mappers
    }
    for name in rbac_rules(cfg)["policies"]:
        reason, _, net = name.partition("@")
        expression = f"response.code_details == 'rbac_access_denied_matched_policy[{name}]'"
        assert by_expression[expression] == deny_body(Reason(reason), net)
    for reason in ("denied_name", "not_allowlisted", "port_not_allowed", "invalid_host",
                   "unsupported_request"):
        assert any(f"xds.route_name == '{reason}'" in e for e in by_expression), reason
    (dial,) = [m for m in mappers if "filter_state" in
               m["filter"]["extension_filter"]["typed_config"]["expression"]]
    assert dial["status_code"] == 403
    assert "denied_address_in_answer" in dial["body_format_override"]["text_format_source"][
        "inline_string"]


def test_deny_bodies_are_one_line_with_destination_reason_and_remedy() -> None:
    body = deny_body(Reason.NOT_ALLOWLISTED)
    assert body.count("\n") == 1 and body.endswith("\n")
    assert body.startswith("netfence: denied %REQ(:AUTHORITY)%: not_allowlisted; to allow: ")
    assert "--allow-host %CEL(" in body
    assert "--allow-port %CEL(" in deny_body(Reason.PORT_NOT_ALLOWED)
    assert deny_body(Reason.LOOPBACK_ADDRESS, "127.0.0.0/8") == (
        "netfence: denied %REQ(:AUTHORITY)%: loopback_address 127.0.0.0/8\n")
    private = deny_body(Reason.PRIVATE_ADDRESS, "10.0.0.0/8")
    assert "private_address 10.0.0.0/8; to allow: " in private and "--allow-cidr" in private
