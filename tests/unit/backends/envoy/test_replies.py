"""backends/envoy/_replies.py: every 403 the egress sends names the destination, the reason
and the remedy."""

from __future__ import annotations

import json

from netfence.backends.envoy import deny_body
from netfence.policy import Reason
from tests.support.envoy_config import config, hcm, policy_for, rbac_rules

# How a body names the denying range: read back from the response code details.
DENIED_RANGE = r"%CEL(re.extract(response.code_details, r'@([^\]]+)\]$', r'\1'))%"


def _evaluate(expression: str, details: str) -> bool:
    """The mappers' address expressions: startsWith(...) && [!]contains(':')."""
    result = True
    for term in expression.split(" && "):
        negated = term.startswith("!")
        call = term.removeprefix("!").removeprefix("response.code_details.")
        method, _, argument = call.partition("('")
        value = getattr(details, {"startsWith": "startswith", "contains": "__contains__"}[
            method])(argument.removesuffix("')"))
        result = result and value != negated
    return result


def test_every_denial_gets_a_body_naming_reason_and_range() -> None:
    cfg = config(policy_for({"outbound": {"allow_host": ["a.test"]}}))
    mappers = hcm(cfg)["local_reply_config"]["mappers"]
    by_expression = {
        m["filter"]["extension_filter"]["typed_config"]["expression"]:
            m["body_format_override"]["text_format_source"]["inline_string"]
        for m in mappers
    }
    address = {e: b for e, b in by_expression.items()
               if e.startswith("response.code_details.startsWith('rbac_access_denied")}
    for name in rbac_rules(cfg)["policies"]:
        reason, _, net = name.partition("@")
        details = f"rbac_access_denied_matched_policy[{name}]"
        # The first mapper whose filter matches (Envoy's order) gives the body; its range
        # is read back from the details.
        body = next(b for e, b in address.items() if _evaluate(e, details))
        assert body.replace(DENIED_RANGE, net) == deny_body(Reason(reason), net), name
    # The same mappers whatever the policy's address rules: none names a range.
    assert "10.0.0.0" not in json.dumps(mappers)
    wide = config(policy_for({"outbound": {"allow_host": ["a.test"],
                                           "allow_cidr": ["10.1.0.0/16"]}}))
    assert hcm(wide)["local_reply_config"] == hcm(cfg)["local_reply_config"]
    for reason in ("denied_name", "not_allowlisted", "port_not_allowed", "invalid_host",
                   "unsupported_request"):
        assert any(f"xds.route_name == '{reason}'" in e for e in by_expression), reason
    # The host check's 403 (an RBAC filter's): the same body as the invalid_host routes'.
    (invalid,) = [b for e, b in by_expression.items()
                  if "code_details == 'rbac_access_denied_matched_policy[invalid_host]'" in e]
    assert invalid == deny_body(Reason.INVALID_HOST)
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
