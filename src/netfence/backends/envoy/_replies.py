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
from netfence.policy import ADDRESS_CLASS_ORDER, Reason
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


def deny_replies(port: str = PORT_OF_AUTHORITY) -> Json:
    """Bodies for every 403 the egress sends: the destination, the reason, the remedy.

    Route-level 403s are matched by route name. RBAC sets its dynamic metadata only after
    sending the reply, so a metadata filter never sees it; the response code details are
    set before, and a CEL filter can read them: one mapper per address reason and family,
    the range read back from the details (`REASON@RANGE`), so that the bodies depend on no
    policy (the HCM holding them must not change with one). A dial-view DNS failure after
    RBAC let the checked address through means the fence's DNS refused the answer: a 403
    too. `port`: as deny_body's.
    """
    mappers: list[Json] = []
    for reason in ROUTE_DENY_REASONS:
        expression = (f"xds.route_name == '{reason.value}' && "
                      "response.code_details == 'direct_response'")
        if reason is Reason.INVALID_HOST:  # also the host check's (an RBAC filter) 403
            host_check = RBAC_DETAIL_FORMAT.format(reason.value)
            expression = f"({expression}) || response.code_details == '{host_check}'"
        mappers.append(_mapper(expression, deny_body(reason, port=port)))
    for reason in ADDRESS_CLASS_ORDER:
        prefix = RBAC_DETAIL_FORMAT.format(f"{reason.value}@")[:-1]
        expression = f"response.code_details.startsWith('{prefix}')"
        v4, v6 = (deny_body(reason, s, port).replace(s, _DENIED_RANGE)
                  for s in (_SAMPLE_V4, _SAMPLE_V6))
        if v4 == v6:  # no remedy naming the range's family
            mappers.append(_mapper(expression, v4))
            continue
        mappers.append(_mapper(f"{expression} && !response.code_details.contains(':')", v4))
        mappers.append(_mapper(f"{expression} && response.code_details.contains(':')", v6))
    mappers.append(_mapper(
        f"response.code_details.startsWith('{DIAL_FAILURE_DETAIL}') && "
        f"'{CHECKED_KEY}' in filter_state",
        deny_body(Reason.DENIED_ADDRESS_IN_ANSWER, port=port), status=403))
    return {"mappers": mappers}


# The range of the RBAC policy that denied a request, from the response code details.
_DENIED_RANGE = r"%CEL(re.extract(response.code_details, r'@([^\]]+)\]$', r'\1'))%"
# Stand-ins for it while deny_body writes the text (the remedy differs by family).
_SAMPLE_V4 = "198.51.100.0/24"
_SAMPLE_V6 = "2001:db8:5a3e::/48"
