"""The bodies of the egress' 403s (local_reply_config): one line naming the destination,
the reason and, where one exists, the remedy."""

from __future__ import annotations

from netfence.backends.envoy._log import DIAL_FAILURE_DETAIL, RBAC_DETAIL_FORMAT
from netfence.backends.envoy._names import (
    CEL_FILTER_TYPE,
    CHECKED_KEY,
    HTTP_DEFAULT_PORT,
    ROUTE_DENY_REASONS,
    Json,
)
from netfence.backends.envoy._rbac import rbac_policy_name
from netfence.policy import Policy, Reason
from netfence.policy.decision import remedy_text

# The request's host and port, for the remedy in a 403 body (CEL in a format string).
HOST_OF_AUTHORITY = r"%CEL(re.extract(request.host, r'^(\[[^\]]*\]|[^:]*)(:[0-9]*)?$', r'\1'))%"
PORT_OF_AUTHORITY = (r"%CEL(request.host.matches(r':[0-9]+$') ? "
                     r"re.extract(request.host, r'^.*:0*([0-9]+)$', r'\1') : "
                     f"'{HTTP_DEFAULT_PORT}')%")


def deny_body(reason: Reason, address: str | None = None, port: str = PORT_OF_AUTHORITY) -> str:
    """A 403's one-line body: the destination, the reason, and the remedy where one exists.

    It is an Envoy format string (local_reply_config): the authority is filled in per
    request. The address stage names the range that denied it: Envoy 1.40 cannot print
    the address its DFP saved (that filter state object does not serialize). `port` is the
    format for the port the remedy names: the authority's on the proxy path.
    """
    text = f"netfence: denied %REQ(:AUTHORITY)%: {reason.value}"
    if address:
        text += f" {address}"
    remedy = remedy_text(reason, HOST_OF_AUTHORITY, port, address)
    return f"{text}; to allow: {remedy}\n" if remedy else text + "\n"


def _mapper(expression: str, body: str, status: int | None = None) -> Json:
    mapper: Json = {
        "filter": {
            "extension_filter": {
                "name": "envoy.access_loggers.extension_filters.cel",
                "typed_config": {"@type": CEL_FILTER_TYPE, "expression": expression},
            }
        },
        "body_format_override": {"text_format_source": {"inline_string": body}},
    }
    if status is not None:
        mapper["status_code"] = status
    return mapper


def deny_replies(policy: Policy, port: str = PORT_OF_AUTHORITY) -> Json:
    """Bodies for every 403 the egress sends: the destination, the reason, the remedy.

    Route-level 403s are matched by route name. RBAC sets its dynamic metadata only after
    sending the reply, so a metadata filter never sees it; the response code details are
    set before, and a CEL filter can read them. A dial-view DNS failure after RBAC let the
    checked address through means the fence's DNS refused the answer: a 403 too.
    `port`: as deny_body's.
    """
    mappers: list[Json] = []
    for reason in ROUTE_DENY_REASONS:
        expression = (f"xds.route_name == '{reason.value}' && "
                      "response.code_details == 'direct_response'")
        mappers.append(_mapper(expression, deny_body(reason, port=port)))
    for rule in policy.address_rules():
        detail = RBAC_DETAIL_FORMAT.format(rbac_policy_name(rule))
        mappers.append(_mapper(f"response.code_details == '{detail}'",
                               deny_body(rule.reason, str(rule.network), port)))
    mappers.append(_mapper(
        f"response.code_details.startsWith('{DIAL_FAILURE_DETAIL}') && "
        f"'{CHECKED_KEY}' in filter_state",
        deny_body(Reason.DENIED_ADDRESS_IN_ANSWER, port=port), status=403))
    return {"mappers": mappers}
