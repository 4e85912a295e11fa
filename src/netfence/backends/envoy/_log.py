"""The access logs: their formats, the details a denial leaves in them, and the parser
that reads an egress or transparent line back as a DecisionRecord (so format and parser
change together).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from netfence.backends.base import DecisionRecord
from netfence.backends.envoy._chains import (
    HTTP_ROLES,
    TLS_ALLOWED,
    TLS_PASS,
    is_tls,
    refusal_reason,
    split_chain_name,
)
from netfence.backends.envoy._names import (
    CHECKED_KEY,
    FILE_LOG_TYPE,
    HTTP_DEFAULT_PORT,
    ROUTE_DENY_REASONS,
    Json,
)
from netfence.policy import ADDRESS_CLASS_ORDER, Reason
from netfence.policy.decision import remedy_text
from netfence.profile import split_host_port

EGRESS_LOG_NAME = "egress-access.log"
INGRESS_LOG_NAME = "ingress-access.log"

RBAC_DETAIL_FORMAT = "rbac_access_denied_matched_policy[{}]"
# RBAC policy names are REASON@NETWORK (one per address rule): the reason and the range.
_RBAC_DETAIL = re.compile(r"^rbac_access_denied_matched_policy\[([a-z_]+)(?:@([0-9a-f.:/]+))?\]$")
DIAL_FAILURE_DETAIL = "dns_resolution_failure"
_REASON_VALUES = frozenset(r.value for r in Reason)

# The egress access log: one JSON object per decision. "log" tells it from other lines.
EGRESS_LOG_FORMAT: Json = {
    "log": "netfence-egress",
    "time": "%START_TIME%",
    "type": "%ACCESS_LOG_TYPE%",
    "method": "%REQ(:METHOD)%",
    "authority": "%REQ(:AUTHORITY)%",
    "status": "%RESPONSE_CODE%",
    "details": "%RESPONSE_CODE_DETAILS%",
    "flags": "%RESPONSE_FLAGS%",
    "route": "%ROUTE_NAME%",
    "upstream_host": "%UPSTREAM_HOST%",
    # The RBAC policy (a Reason) that denied the resolved address, if one did.
    "rbac_policy": "%DYNAMIC_METADATA(envoy.filters.http.rbac:enforced_effective_policy_id)%",
    # Present when RBAC let the checked address through (see CHECKED_KEY).
    "checked": f"%FILTER_STATE({CHECKED_KEY}:PLAIN)%",
    # Wire bytes (headers included) between the workload and the proxy, as Squid's
    # %>st/%<st count them: a GET's body-only count would be 0 up.
    "bytes_received": "%DOWNSTREAM_WIRE_BYTES_RECEIVED%",
    "bytes_sent": "%DOWNSTREAM_WIRE_BYTES_SENT%",
    "duration_ms": "%DURATION%",
}
# The egress log's "type" of the line written when a CONNECT tunnel opens.
TUNNEL_ESTABLISHED_LOG_TYPE = "DownstreamTunnelSuccessfullyEstablished"
# The transparent listener logs to the egress log too: one file in time order. Its HTTP
# chains log each request like the egress (plus the dialed address and the chain), and the
# listener logs each connection, also one that no chain took.
TRANSPARENT_HTTP_LOG_FORMAT: Json = {
    **EGRESS_LOG_FORMAT,
    "log": "netfence-transparent-http",
    # After the first listener filter (original_dst or proxy_protocol), the local address
    # is the one the client dialed.
    "original_dst": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "chain": "%FILTER_CHAIN_NAME%",
}
TRANSPARENT_LOG_FORMAT: Json = {
    "log": "netfence-transparent",
    "time": "%START_TIME%",
    "chain": "%FILTER_CHAIN_NAME%",
    "sni": "%REQUESTED_SERVER_NAME%",
    "original_dst": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "upstream_host": "%UPSTREAM_HOST%",
    "flags": "%RESPONSE_FLAGS%",
    # A network RBAC denial names its policy here (its dynamic metadata stays empty).
    "details": "%CONNECTION_TERMINATION_DETAILS%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration_ms": "%DURATION%",
}
INGRESS_LOG_FORMAT: Json = {
    "log": "netfence-ingress",
    "time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "authority": "%REQ(:AUTHORITY)%",
    "path": "%REQ(:PATH)%",
    "status": "%RESPONSE_CODE%",
    "details": "%RESPONSE_CODE_DETAILS%",
    "route": "%ROUTE_NAME%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration_ms": "%DURATION%",
}


def access_log(path: Path, fields: Json) -> Json:
    """A file access log writing one JSON object (`fields`) per request to `path`."""
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": FILE_LOG_TYPE,
            "path": str(path),
            "log_format": {"json_format": fields},
        },
    }


def parse_decision(line: str) -> DecisionRecord | None:
    """One decision-log line (egress or transparent) as a record; None for any other line."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict):
        return None
    kind = entry.get("log")
    if kind == TRANSPARENT_LOG_FORMAT["log"]:
        return _connection_record(entry)
    if kind == TRANSPARENT_HTTP_LOG_FORMAT["log"]:
        return _request_record(entry, _split_address(_as_text(entry.get("original_dst"))))
    if kind != EGRESS_LOG_FORMAT["log"]:
        return None
    # A CONNECT is logged when its tunnel opens and again when it ends; the decision
    # log has one line per request (as Squid's), the final one, with the byte counts.
    if entry.get("type") == TUNNEL_ESTABLISHED_LOG_TYPE:
        return None
    return _request_record(entry)


def _request_record(entry: Json, dialed: tuple[str, int | None] | None = None
                    ) -> DecisionRecord:
    """An HTTP request's record. `dialed`: the address a transparent request was sent to;
    its port is the request's (the Host may omit it), its address the host of a request
    without a Host."""
    method = _as_text(entry.get("method"))
    host, port = _split_authority(_as_text(entry.get("authority")), method)
    if dialed is not None:
        host, port = host or dialed[0], dialed[1]
    status = _as_int(entry.get("status"))
    details = _as_text(entry.get("details"))
    route = _as_text(entry.get("route"))
    matched = _RBAC_DETAIL.match(details)
    rbac_policy = _as_text(entry.get("rbac_policy"))
    address: str | None = None
    if matched:
        reason, address = matched.group(1), matched.group(2)
    elif rbac_policy:
        reason, _, net = rbac_policy.partition("@")
        address = net or None
    elif status == 403 and route in ROUTE_DENY_REASONS:
        reason = route
    elif details.startswith(DIAL_FAILURE_DETAIL) and _as_text(entry.get("checked")):
        reason = Reason.DENIED_ADDRESS_IN_ANSWER.value
    elif 400 <= status < 500 and not route:
        # Refused before routing (a request Envoy's codec could not parse): not allowed.
        reason = Reason.INVALID_HOST.value
    else:
        reason = Reason.ALLOWED.value
    return _record(entry, method, host, port, reason, address, status,
                   transparent=dialed is not None)


# Response flags of a connection the DFP cluster could not dial: no host resolved.
_UNRESOLVED_FLAGS = frozenset({"UH", "DF"})
_ADDRESS_REASONS = frozenset(r.value for r in ADDRESS_CLASS_ORDER)


def _connection_record(entry: Json) -> DecisionRecord | None:
    """A transparent connection's record (TLS or plain TCP), from its listener line; None
    for the line of an HTTP chain (its request lines carry the decisions) and for a
    connection that ended before any chain took it."""
    chain = split_chain_name(_as_text(entry.get("chain")))
    if chain is None or chain[1] in HTTP_ROLES:
        return None
    scope, role = chain
    ip, port = _split_address(_as_text(entry.get("original_dst")))
    sni = _as_text(entry.get("sni")).lower()
    details = _as_text(entry.get("details"))
    matched = _RBAC_DETAIL.match(details)
    fixed = refusal_reason(scope, role, named=bool(sni))
    address: str | None = None
    if matched:
        reason, address = matched.group(1), matched.group(2)
    elif fixed is not None:
        reason = fixed.value
    elif ((role == TLS_ALLOWED or (role == TLS_PASS and sni))
          and not _as_text(entry.get("upstream_host"))
          and _UNRESOLVED_FLAGS & set(_as_text(entry.get("flags")).split(","))):
        # The dial view refused the name's answer (it holds a denied address). A name
        # that does not resolve at all looks the same here: TLS carries no detail of it.
        reason = Reason.DENIED_ADDRESS_IN_ANSWER.value
    else:
        reason = Reason.ALLOWED.value
    if reason in _ADDRESS_REASONS and address is None:
        address = ip  # refused by the dialed address alone: that address
    method = "TLS" if is_tls(role) else "TCP"
    return _record(entry, method, sni or ip, port, reason, address, 0, transparent=True)


def _record(entry: Json, method: str, host: str, port: int | None, reason: str,
            address: str | None, status: int, *, transparent: bool) -> DecisionRecord:
    remedy = None
    if reason in _REASON_VALUES:
        remedy = remedy_text(Reason(reason), host, "-" if port is None else port, address)
    # host:port of the dialed upstream; empty when nothing was dialed.
    upstream_ip = _split_authority(_as_text(entry.get("upstream_host")), "CONNECT")[0]
    return DecisionRecord(
        time=_as_text(entry.get("time")),
        method=method,
        host=host,
        port=port,
        allowed=reason == Reason.ALLOWED.value,
        reason=reason,
        status=status,
        upstream_ip=upstream_ip or None,
        bytes_up=_as_int(entry.get("bytes_received")),
        bytes_down=_as_int(entry.get("bytes_sent")),
        duration_ms=_as_int(entry.get("duration_ms")),
        address=address,
        remedy=remedy,
        transparent=transparent,
    )


def _split_address(address: str) -> tuple[str, int | None]:
    """A logged IP:PORT or [IPv6]:PORT as its address and port."""
    host, port = _split_authority(address, "CONNECT")
    return host, port


def _split_authority(authority: str, method: str) -> tuple[str, int | None]:
    """A logged authority's host and port (80 when a plain request names none); a
    malformed one is kept whole as the host."""
    try:
        host, port_text = split_host_port(authority)
    except ValueError:
        host, port_text = authority, None
    port: int | None = None
    if port_text and port_text.isdigit():
        port = int(port_text)
    elif not port_text and method != "CONNECT":
        port = HTTP_DEFAULT_PORT
    return host.lower().removesuffix("."), port


def _as_int(value: object) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return 0


def _as_text(value: object) -> str:
    # Envoy writes "-" (or null in JSON) for a field it has no value for.
    return "" if value is None or value == "-" else str(value)
