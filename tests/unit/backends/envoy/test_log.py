"""backends/envoy/_log.py: the egress access log read back as decisions."""

from __future__ import annotations

import json

import pytest

from netfence.backends.envoy import EnvoyProxy
from tests.support.envoy_config import ENVOY


def line(**fields: object) -> str:
    base: dict[str, object] = {
        "log": "netfence-egress",
        "time": "2026-01-01T00:00:00.000Z",
        "type": "DownstreamEnd",
        "method": "GET",
        "authority": "example.com",
        "status": 200,
        "details": "via_upstream",
        "flags": "-",
        "route": "allowed",
        "upstream_host": "93.184.216.34:80",
        "rbac_policy": None,
        "bytes_received": 10,
        "bytes_sent": 2000,
        "duration_ms": 12,
    }
    base.update(fields)
    return json.dumps(base)


def test_parse_allowed_plain_http_defaults_port_80() -> None:
    record = EnvoyProxy(ENVOY).parse_decision(line())
    assert record is not None
    assert (record.host, record.port, record.allowed, record.reason) == (
        "example.com",
        80,
        True,
        "allowed",
    )
    assert record.upstream_ip == "93.184.216.34"
    assert (record.bytes_up, record.bytes_down, record.duration_ms) == (10, 2000, 12)
    assert record.time == "2026-01-01T00:00:00.000Z" and record.status == 200


def test_parse_rbac_denial_and_ipv6_connect() -> None:
    record = EnvoyProxy(ENVOY).parse_decision(
        line(
            method="CONNECT",
            authority="[::1]:443",
            status=403,
            details="rbac_access_denied_matched_policy[loopback_address]",
            upstream_host=None,
        )
    )
    assert record is not None
    assert (record.host, record.port, record.allowed, record.reason, record.upstream_ip) == (
        "::1",
        443,
        False,
        "loopback_address",
        None,
    )


@pytest.mark.parametrize("reason", ["not_allowlisted", "port_not_allowed", "denied_name"])
def test_parse_route_denials(reason: str) -> None:
    record = EnvoyProxy(ENVOY).parse_decision(
        line(status="403", details="direct_response", route=reason, upstream_host="-")
    )
    assert record is not None
    assert record.reason == reason and not record.allowed and record.status == 403


def test_parse_failed_but_allowed_request_is_allowed() -> None:
    record = EnvoyProxy(ENVOY).parse_decision(
        line(status=503, details="dns_resolution_failure", upstream_host=None)
    )
    assert record is not None and record.allowed and record.status == 503


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[1, 2]",
        json.dumps({"log": "netfence-ingress", "status": 200}),
        "[2026-01-01 00:00:00.000][1][warning][main] something",
    ],
)
def test_parse_ignores_other_lines(text: str) -> None:
    assert EnvoyProxy(ENVOY).parse_decision(text) is None


ENVOY_LINES = {
    # RBAC denial by a named range: reason, range and remedy
    '{"log":"netfence-egress","method":"GET","authority":"p.test","status":403,'
    '"details":"rbac_access_denied_matched_policy[private_address@10.0.0.0/8]",'
    '"route":"allowed","rbac_policy":"private_address@10.0.0.0/8"}':
        ("private_address", "10.0.0.0/8", "--allow-cidr"),
    # the dial view refused the answer after RBAC passed the first address
    '{"log":"netfence-egress","method":"GET","authority":"m.test","status":403,'
    '"details":"dns_resolution_failure{cares_norecords:Domain_name_not_found}",'
    '"route":"allowed","checked":"yes"}':
        ("denied_address_in_answer", None, "netfence check m.test:80"),
    # a name that does not resolve: allowed (the fence let it through)
    '{"log":"netfence-egress","method":"GET","authority":"n.test","status":503,'
    '"details":"dns_resolution_failure{cares_norecords:Domain_name_not_found}",'
    '"route":"allowed","checked":null}': ("allowed", None, None),
    # refused by the codec before any route: not allowed
    '{"log":"netfence-egress","method":null,"authority":null,"status":400,'
    '"details":"http1.codec_error","route":null}': ("invalid_host", None, None),
    '{"log":"netfence-egress","method":"GET","authority":"a.test","status":403,'
    '"details":"direct_response","route":"unsupported_request"}':
        ("unsupported_request", None, "CONNECT"),
}


@pytest.mark.parametrize("line", list(ENVOY_LINES))
def test_envoy_decision_reasons(line: str) -> None:
    record = EnvoyProxy("/x/envoy").parse_decision(line)
    assert record is not None
    reason, address, remedy = ENVOY_LINES[line]
    assert (record.reason, record.address) == (reason, address)
    assert record.allowed is (reason == "allowed")
    if remedy:
        assert remedy in (record.remedy or "")
