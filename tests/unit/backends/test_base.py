"""backends/base.py: the workload's proxy variables, and the decision log's contract: one
JSON object per request with the same fields whichever backend logged it (`netfence
logs --json`)."""

from __future__ import annotations

import json

import pytest

from netfence.backends import NetworkProxy, proxy_env
from netfence.backends.envoy import EGRESS_LOG_FORMAT, EnvoyProxy
from netfence.backends.squid import LOG_FORMAT_TAG, SquidProxy

# --- proxy_env -------------------------------------------------------------------------

PROXY_KEYS = {"HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy"}


@pytest.mark.parametrize("proxy", ["127.0.0.1:3128", "10.203.0.2:3128", "egress:3128"])
def test_proxy_env_sets_both_cases(proxy: str) -> None:
    env = proxy_env(proxy)
    assert set(env) == PROXY_KEYS
    url = f"http://{proxy}"
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        assert env[key] == url
    assert env["NO_PROXY"] == env["no_proxy"]
    bypass = env["no_proxy"].split(",")
    for loopback in ("localhost", "127.0.0.1", "::1"):
        assert loopback in bypass
    assert all(v for v in env.values())


def test_proxy_env_returns_a_fresh_mapping() -> None:
    first = proxy_env("127.0.0.1:3128")
    first["HTTP_PROXY"] = "changed"
    first["EXTRA"] = "x"
    second = proxy_env("127.0.0.1:3128")
    assert second["HTTP_PROXY"] == "http://127.0.0.1:3128"
    assert "EXTRA" not in second


# --- the decision log ------------------------------------------------------------------


# Written out, not imported: the test must fail if the code's list loses a field.
FIELDS = ["time", "workload", "method", "host", "port", "decision", "reason",
          "bytes_up", "bytes_down", "duration_ms"]


def envoy_line(**fields: object) -> str:
    base: dict[str, object] = {
        "log": EGRESS_LOG_FORMAT["log"], "time": "2026-01-01T00:00:00.000Z",
        "type": "DownstreamEnd", "method": "GET", "authority": "example.com", "status": 200,
        "details": "via_upstream", "flags": "-", "route": "allowed",
        "upstream_host": "93.184.216.34:80", "rbac_policy": None, "checked": "yes",
        "bytes_received": 120, "bytes_sent": 530, "duration_ms": 14,
    }
    base.update(fields)
    return json.dumps(base)


ALLOWED = {
    "envoy": envoy_line(),
    "squid": f"{LOG_FORMAT_TAG} 2026-01-01T00:00:00Z GET example.com 80 200 - "
             "93.184.216.34 120 530 14",
}

DENIED = {
    "envoy": envoy_line(authority="evil.test", status=403, details="direct_response",
                        route="not_allowlisted", upstream_host=None, bytes_sent=236,
                        duration_ms=0),
    "squid": f"{LOG_FORMAT_TAG} 2026-01-01T00:00:00Z GET evil.test 80 403 "
             "ERR_NOT_ALLOWLISTED - 120 236 0",
}

BACKENDS: dict[str, NetworkProxy] = {"envoy": EnvoyProxy("/opt/test/envoy"),
                                     "squid": SquidProxy()}


@pytest.mark.parametrize("backend", BACKENDS)
def test_allowed_request_has_every_field(backend: str) -> None:
    record = BACKENDS[backend].parse_decision(ALLOWED[backend])
    assert record is not None
    entry = record.log_entry("wl")
    assert list(entry)[:len(FIELDS)] == FIELDS
    assert {k: entry[k] for k in FIELDS[1:]} == {
        "workload": "wl", "method": "GET", "host": "example.com", "port": 80,
        "decision": "allow", "reason": "allowed", "bytes_up": 120, "bytes_down": 530,
        "duration_ms": 14,
    }
    assert str(entry["time"]).startswith("2026-01-01T00:00:00")
    json.dumps(entry)  # one JSON line


@pytest.mark.parametrize("backend", BACKENDS)
def test_denied_request_names_the_reason(backend: str) -> None:
    record = BACKENDS[backend].parse_decision(DENIED[backend])
    assert record is not None
    entry = record.log_entry("wl")
    assert (entry["decision"], entry["reason"], entry["host"]) == (
        "deny", "not_allowlisted", "evil.test")
    assert all(k in entry for k in FIELDS)


def test_both_backends_give_the_same_keys() -> None:
    keys = {name: list(b.parse_decision(ALLOWED[name]).log_entry("w"))  # type: ignore[union-attr]
            for name, b in BACKENDS.items()}
    assert keys["envoy"] == keys["squid"]


def test_envoy_connect_is_one_line_per_request() -> None:
    # Envoy logs a tunnel when it opens and when it ends; only the end is the decision.
    opened = envoy_line(method="CONNECT", authority="example.com:443",
                        type="DownstreamTunnelSuccessfullyEstablished", bytes_sent=0)
    ended = envoy_line(method="CONNECT", authority="example.com:443", bytes_sent=1880)
    proxy = BACKENDS["envoy"]
    assert proxy.parse_decision(opened) is None
    record = proxy.parse_decision(ended)
    assert record is not None and record.bytes_down == 1880
