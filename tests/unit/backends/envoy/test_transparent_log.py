"""backends/envoy/_log.py: the transparent listener's lines read back as decisions.

The fixtures are real lines Envoy 1.40 wrote for the transparent-egress prototype (its
fake internet: allowed.test at 10.77.0.2, denied servers at 10.77.0.3/4, the allowlisted
literal 10.77.0.5, the host's address 10.77.0.254), except where a test says otherwise.
Their listener lines carry an "rbac" field the format no longer has: ignored.
"""

from __future__ import annotations

import json

import pytest

from netfence.backends.base import DecisionRecord
from netfence.backends.envoy import EnvoyProxy
from tests.support.envoy_config import ENVOY

T = '"log":"netfence-transparent","time":"2026-12-06T01:07:23.684Z"'
H = '"log":"netfence-transparent-http","time":"2026-12-06T01:07:23.117Z","type":"DownstreamEnd"'


def parse(line: str) -> DecisionRecord:
    record = EnvoyProxy(ENVOY).parse_decision(line)
    assert record is not None
    assert record.transparent
    return record


def summary(record: DecisionRecord) -> tuple[object, ...]:
    return (record.method, record.host, record.port, record.allowed, record.reason,
            record.status, record.upstream_ip, record.address)


# --- TLS and plain TCP: the listener's line is the decision ------------------------------

CONNECTIONS = {
    "allowed SNI": (
        '{"bytes_received":719,"bytes_sent":1802,"chain":"tls_allowed@443","details":null,'
        '"duration_ms":7,"flags":"-",' + T + ',"original_dst":"10.77.0.2:443","rbac":null,'
        '"sni":"allowed.test","upstream_host":"10.77.0.2:443"}',
        ("TLS", "allowed.test", 443, True, "allowed", 0, "10.77.0.2", None)),
    "allowed SNI sent to another address": (
        '{"bytes_received":449,"bytes_sent":1567,"chain":"tls_allowed@443","details":null,'
        '"duration_ms":11,"flags":"-",' + T + ',"original_dst":"10.77.0.4:443","rbac":null,'
        '"sni":"www.allowed.test","upstream_host":"10.77.0.2:443"}',
        ("TLS", "www.allowed.test", 443, True, "allowed", 0, "10.77.0.2", None)),
    "allowed SNI sent to an IPv6 address": (
        '{"bytes_received":719,"bytes_sent":1803,"chain":"tls_allowed@443","details":null,'
        '"duration_ms":6,"flags":"-",' + T + ',"original_dst":"[fd77::4]:443","rbac":null,'
        '"sni":"allowed.test","upstream_host":"10.77.0.2:443"}',
        ("TLS", "allowed.test", 443, True, "allowed", 0, "10.77.0.2", None)),
    "SNI not allowed": (
        '{"bytes_received":0,"bytes_sent":0,"chain":"tls_not_allowed@443","details":null,'
        '"duration_ms":1,"flags":"-",' + T + ',"original_dst":"10.77.0.2:443","rbac":null,'
        '"sni":"other.test","upstream_host":null}',
        ("TLS", "other.test", 443, False, "not_allowlisted", 0, None, None)),
    "no SNI to an address not allowlisted": (
        '{"bytes_received":0,"bytes_sent":0,"chain":"tls_not_allowed@443","details":null,'
        '"duration_ms":1,"flags":"-",' + T + ',"original_dst":"10.77.0.2:443","rbac":null,'
        '"sni":null,"upstream_host":null}',
        ("TLS", "10.77.0.2", 443, False, "not_allowlisted", 0, None, None)),
    "SNI not allowed, to an allowlisted literal": (
        '{"bytes_received":517,"bytes_sent":0,"chain":"literal_tls@443","details":'
        '"rbac_access_denied_matched_policy[not_allowlisted]","duration_ms":1,"flags":"-",'
        + T + ',"original_dst":"10.77.0.5:443","rbac":null,"sni":"other.test",'
        '"upstream_host":null}',
        ("TLS", "other.test", 443, False, "not_allowlisted", 0, None, None)),
    "port not allowed": (
        '{"bytes_received":0,"bytes_sent":0,"chain":"tls_port_not_allowed","details":null,'
        '"duration_ms":2,"flags":"-",' + T + ',"original_dst":"10.77.0.2:9443","rbac":null,'
        '"sni":"allowed.test","upstream_host":null}',
        ("TLS", "allowed.test", 9443, False, "port_not_allowed", 0, None, None)),
    "name resolving to loopback": (
        '{"bytes_received":517,"bytes_sent":0,"chain":"tls_allowed@443","details":'
        '"rbac_access_denied_matched_policy[loopback_address@127.0.0.0/8]","duration_ms":4,'
        '"flags":"-",' + T + ',"original_dst":"10.77.0.2:443","rbac":null,'
        '"sni":"loopback.test","upstream_host":null}',
        ("TLS", "loopback.test", 443, False, "loopback_address", 0, None, "127.0.0.0/8")),
    "name resolving to the host's address": (
        '{"bytes_received":517,"bytes_sent":0,"chain":"tls_allowed@443","details":'
        '"rbac_access_denied_matched_policy[host_address@10.77.0.254/32]","duration_ms":3,'
        '"flags":"-",' + T + ',"original_dst":"10.77.0.2:443","rbac":null,'
        '"sni":"hostaddr.test","upstream_host":null}',
        ("TLS", "hostaddr.test", 443, False, "host_address", 0, None, "10.77.0.254/32")),
    "answer refused by the dial view": (
        '{"bytes_received":517,"bytes_sent":0,"chain":"tls_allowed@443","details":null,'
        '"duration_ms":3,"flags":"UH",' + T + ',"original_dst":"10.77.0.2:443","rbac":null,'
        '"sni":"mixed.test","upstream_host":null}',
        ("TLS", "mixed.test", 443, False, "denied_address_in_answer", 0, None, None)),
    "allowlisted literal, no SNI": (
        '{"bytes_received":716,"bytes_sent":1800,"chain":"literal_tls@443","details":null,'
        '"duration_ms":6,"flags":"-",' + T + ',"original_dst":"10.77.0.5:443","rbac":null,'
        '"sni":null,"upstream_host":"10.77.0.5:443"}',
        ("TLS", "10.77.0.5", 443, True, "allowed", 0, "10.77.0.5", None)),
    "plain TCP to an allowlisted literal": (
        '{"bytes_received":3,"bytes_sent":37,"chain":"literal_raw@7000","details":null,'
        '"duration_ms":3002,"flags":"-",' + T + ',"original_dst":"10.77.0.5:7000",'
        '"rbac":null,"sni":null,"upstream_host":"10.77.0.5:7000"}',
        ("TCP", "10.77.0.5", 7000, True, "allowed", 0, "10.77.0.5", None)),
    "plain TCP elsewhere": (
        '{"bytes_received":0,"bytes_sent":0,"chain":"no_name","details":null,'
        '"duration_ms":3007,"flags":"-",' + T + ',"original_dst":"10.77.0.3:7000",'
        '"rbac":null,"sni":null,"upstream_host":null}',
        ("TCP", "10.77.0.3", 7000, False, "not_allowlisted", 0, None, None)),
}


@pytest.mark.parametrize("kind", CONNECTIONS)
def test_connection_lines(kind: str) -> None:
    line, expected = CONNECTIONS[kind]
    assert summary(parse(line)) == expected


def test_connection_remedies_and_counts() -> None:
    record = parse(CONNECTIONS["SNI not allowed"][0])
    assert record.remedy == "add it to network.outbound.allow_host or pass --allow-host other.test"
    record = parse(CONNECTIONS["no SNI to an address not allowlisted"][0])
    assert record.remedy is not None and record.remedy.endswith("--allow-host 10.77.0.2")
    record = parse(CONNECTIONS["port not allowed"][0])
    assert record.remedy is not None and record.remedy.endswith("--allow-port 9443")
    record = parse(CONNECTIONS["answer refused by the dial view"][0])
    assert record.remedy is not None and "netfence check mixed.test:443" in record.remedy
    record = parse(CONNECTIONS["allowed SNI"][0])
    assert (record.bytes_up, record.bytes_down, record.duration_ms) == (719, 1802, 7)
    assert record.time == "2026-12-06T01:07:23.684Z" and record.remedy is None


# Real lines of this listener (generated by netfence) on the same harness (10.78.0.0/24 there,
# lifted by allow_cidr; 10.78.1.5 is outside it), learn mode and insecure_allow_all.
EVERY_NAME = {
    "learn: an SNI dialed by name, not at the address dialed": (
        '{"bytes_received":449,"bytes_sent":1567,"chain":"literal_tls@any","details":null,'
        '"duration_ms":4,"flags":"-","log":"netfence-transparent","original_dst":"10.78.0.4:443",'
        '"sni":"www.allowed.test","time":"2026-12-06T01:46:30.868Z",'
        '"upstream_host":"10.78.0.2:443"}',
        ("TLS", "www.allowed.test", 443, True, "allowed", 0, "10.78.0.2", None)),
    "learn: the name resolves to loopback": (
        '{"bytes_received":517,"bytes_sent":0,"chain":"literal_tls@any","details":'
        '"rbac_access_denied_matched_policy[loopback_address@127.0.0.0/8]","duration_ms":3,'
        '"flags":"-","log":"netfence-transparent","original_dst":"10.78.0.2:443",'
        '"sni":"loopback.test","time":"2026-12-06T01:46:30.715Z","upstream_host":null}',
        ("TLS", "loopback.test", 443, False, "loopback_address", 0, None, "127.0.0.0/8")),
    "learn: the dial view refused the answer": (
        '{"bytes_received":517,"bytes_sent":0,"chain":"literal_tls@any","details":null,'
        '"duration_ms":3,"flags":"UH","log":"netfence-transparent","original_dst":"10.78.0.2:443",'
        '"sni":"mixed.test","time":"2026-12-06T01:46:30.777Z","upstream_host":null}',
        ("TLS", "mixed.test", 443, False, "denied_address_in_answer", 0, None, None)),
    # Allowed by the fence; nothing listened there.
    "learn: upstream connection failed": (
        '{"bytes_received":517,"bytes_sent":0,"chain":"literal_tls@any","details":null,'
        '"duration_ms":3,"flags":"UF,URX","log":"netfence-transparent",'
        '"original_dst":"10.78.0.2:9443","sni":"allowed.test","time":"2026-12-06T01:46:30.699Z",'
        '"upstream_host":"10.78.0.2:9443"}',
        ("TLS", "allowed.test", 9443, True, "allowed", 0, "10.78.0.2", None)),
    "all names: no SNI to a private address": (
        '{"bytes_received":517,"bytes_sent":0,"chain":"private_address_tls_allowed@443",'
        '"details":"rbac_access_denied_matched_policy[private_address]","duration_ms":1,'
        '"flags":"-","log":"netfence-transparent","original_dst":"10.78.1.5:443","sni":null,'
        '"time":"2026-12-06T01:52:12.638Z","upstream_host":null}',
        ("TLS", "10.78.1.5", 443, False, "private_address", 0, None, "10.78.1.5")),
    "all names: an SNI sent to a private address": (
        '{"bytes_received":719,"bytes_sent":1805,"chain":"private_address_tls_allowed@443",'
        '"details":null,"duration_ms":7,"flags":"-","log":"netfence-transparent",'
        '"original_dst":"10.78.1.5:443","sni":"allowed.test","time":"2026-12-06T01:52:12.658Z",'
        '"upstream_host":"10.78.0.2:443"}',
        ("TLS", "allowed.test", 443, True, "allowed", 0, "10.78.0.2", None)),
    "all names: a denied name": (
        '{"bytes_received":0,"bytes_sent":0,"chain":"literal_tls_denied_name@443","details":null,'
        '"duration_ms":1,"flags":"-","log":"netfence-transparent","original_dst":"10.78.0.2:443",'
        '"sni":"localhost","time":"2026-12-06T01:52:12.677Z","upstream_host":null}',
        ("TLS", "localhost", 443, False, "denied_name", 0, None, None)),
    "all names: plain TCP to a private address": (
        '{"bytes_received":0,"bytes_sent":0,"chain":"private_address_no_name@7000",'
        '"details":null,"duration_ms":2996,"flags":"-","log":"netfence-transparent",'
        '"original_dst":"10.78.1.5:7000","sni":null,"time":"2026-12-06T01:52:12.704Z",'
        '"upstream_host":null}',
        ("TCP", "10.78.1.5", 7000, False, "private_address", 0, None, "10.78.1.5")),
    "all names: plain TCP to a port not allowed": (
        '{"bytes_received":0,"bytes_sent":0,"chain":"literal_no_name","details":null,'
        '"duration_ms":2997,"flags":"-","log":"netfence-transparent",'
        '"original_dst":"10.78.0.2:22","sni":null,"time":"2026-12-06T01:52:15.724Z",'
        '"upstream_host":null}',
        ("TCP", "10.78.0.2", 22, False, "port_not_allowed", 0, None, None)),
}


@pytest.mark.parametrize("kind", EVERY_NAME)
def test_lines_when_every_name_is_allowed(kind: str) -> None:
    line, expected = EVERY_NAME[kind]
    assert summary(parse(line)) == expected


def line(chain: str, original_dst: str, sni: str | None = None,
         details: str | None = None) -> str:
    """A listener line for a chain kind the prototype had no traffic for (not real)."""
    return json.dumps({"log": "netfence-transparent", "time": "2026-12-06T01:07:23.684Z",
                       "chain": chain, "sni": sni, "original_dst": original_dst,
                       "upstream_host": None, "flags": "-", "details": details,
                       "bytes_received": 0, "bytes_sent": 0, "duration_ms": 1})


@pytest.mark.parametrize(("chain", "dst", "sni", "details", "expected"), [
    ("tls_denied_name@443", "10.77.0.2:443", "localhost", None,
     ("TLS", "localhost", 443, False, "denied_name", 0, None, None)),
    ("literal_tls_denied_name", "10.77.0.5:22", "x.localhost", None,
     ("TLS", "x.localhost", 22, False, "denied_name", 0, None, None)),
    # An allowlisted literal on a port not allowed: the name stage passed, the port not.
    ("literal_tls_not_allowed", "10.77.0.5:22", None, None,
     ("TLS", "10.77.0.5", 22, False, "port_not_allowed", 0, None, None)),
    ("literal_tls_not_allowed", "10.77.0.5:22", "other.test", None,
     ("TLS", "other.test", 22, False, "not_allowlisted", 0, None, None)),
    ("literal_no_name", "[fd77::5]:22", None, None,
     ("TCP", "fd77::5", 22, False, "port_not_allowed", 0, None, None)),
    # An address the address stage denies, without a name: that address is the reason.
    ("private_address_tls_not_allowed@443", "10.1.2.3:443", None, None,
     ("TLS", "10.1.2.3", 443, False, "private_address", 0, None, "10.1.2.3")),
    ("private_address_tls_not_allowed@443", "10.1.2.3:443", "other.test", None,
     ("TLS", "other.test", 443, False, "not_allowlisted", 0, None, None)),
    ("host_address_no_name@any", "10.77.0.254:5432", None, None,
     ("TCP", "10.77.0.254", 5432, False, "host_address", 0, None, "10.77.0.254")),
    # Every name allowed: TLS without SNI to a denied address, refused by RBAC.
    ("loopback_address_tls_allowed@any", "127.0.0.1:443", None,
     "rbac_access_denied_matched_policy[loopback_address]",
     ("TLS", "127.0.0.1", 443, False, "loopback_address", 0, None, "127.0.0.1")),
    ("tls_port_not_allowed", "93.184.216.34:22", None, None,
     ("TLS", "93.184.216.34", 22, False, "port_not_allowed", 0, None, None)),
])
def test_lines_of_every_other_chain_kind(chain: str, dst: str, sni: str | None,
                                         details: str | None,
                                         expected: tuple[object, ...]) -> None:
    assert summary(parse(line(chain, dst, sni, details))) == expected


def test_private_address_remedy_names_the_address() -> None:
    record = parse(line("private_address_no_name@5432", "10.1.2.3:5432"))
    assert record.remedy is not None and record.remedy.endswith("--allow-cidr 10.1.2.3/32")


@pytest.mark.parametrize("chain", ["http@80", "literal_http@80", "http_port_not_allowed",
                                   "private_address_http@any", "-", "unknown@80"])
def test_listener_lines_without_a_decision_are_skipped(chain: str) -> None:
    # An HTTP chain's requests are logged by its HCM; "-": no chain took the connection.
    real = ('{"bytes_received":76,"bytes_sent":191,"chain":"http@80","details":null,'
            '"duration_ms":6,"flags":"-",' + T + ',"original_dst":"10.77.0.2:80",'
            '"rbac":null,"sni":null,"upstream_host":null}')
    assert EnvoyProxy(ENVOY).parse_decision(real.replace('"http@80"', json.dumps(chain))) is None


# --- plain HTTP: the HCM's line, one per request ----------------------------------------

REQUESTS = {
    "allowed": (
        '{"authority":"allowed.test","bytes_received":76,"bytes_sent":191,"chain":"http@80",'
        '"checked":"yes","details":"via_upstream","duration_ms":4,"flags":"-",' + H + ','
        '"method":"GET","original_dst":"10.77.0.2:80","rbac_policy":null,"route":"allowed",'
        '"status":200,"upstream_host":"10.77.0.2:80"}',
        ("GET", "allowed.test", 80, True, "allowed", 200, "10.77.0.2", None)),
    "Host sent to another address and port": (
        '{"authority":"allowed.test","bytes_received":76,"bytes_sent":193,"chain":"http@8080",'
        '"checked":"yes","details":"via_upstream","duration_ms":2,"flags":"-",' + H + ','
        '"method":"GET","original_dst":"10.77.0.3:8080","rbac_policy":null,"route":"allowed",'
        '"status":200,"upstream_host":"10.77.0.2:8080"}',
        ("GET", "allowed.test", 8080, True, "allowed", 200, "10.77.0.2", None)),
    "Host not allowed": (
        '{"authority":"other.test","bytes_received":74,"bytes_sent":236,"chain":"http@80",'
        '"checked":"yes","details":"direct_response","duration_ms":0,"flags":"-",' + H + ','
        '"method":"GET","original_dst":"10.77.0.2:80","rbac_policy":null,'
        '"route":"not_allowlisted","status":403,"upstream_host":null}',
        ("GET", "other.test", 80, False, "not_allowlisted", 403, None, None)),
    "Host not allowed, to an allowlisted literal": (
        '{"authority":"other.test","bytes_received":74,"bytes_sent":236,'
        '"chain":"literal_http@80","checked":"yes","details":"direct_response",'
        '"duration_ms":0,"flags":"-",' + H + ',"method":"GET","original_dst":"10.77.0.5:80",'
        '"rbac_policy":null,"route":"not_allowlisted","status":403,"upstream_host":null}',
        ("GET", "other.test", 80, False, "not_allowlisted", 403, None, None)),
    "port not allowed": (
        '{"authority":"allowed.test:9999","bytes_received":81,"bytes_sent":238,'
        '"chain":"http_port_not_allowed","checked":"yes","details":"direct_response",'
        '"duration_ms":0,"flags":"-",' + H + ',"method":"GET","original_dst":"10.77.0.2:9999",'
        '"rbac_policy":null,"route":"port_not_allowed","status":403,"upstream_host":null}',
        ("GET", "allowed.test", 9999, False, "port_not_allowed", 403, None, None)),
    # The dialed port is the request's: 80 here, whatever the Host says.
    "Host naming another port than the dialed one": (
        '{"authority":"allowed.test:8080","bytes_received":81,"bytes_sent":158,"chain":"http@80",'
        '"checked":"yes","details":"direct_response","duration_ms":0,"flags":"-",' + H + ','
        '"method":"GET","original_dst":"10.77.0.3:80","rbac_policy":null,'
        '"route":"invalid_host","status":403,"upstream_host":null}',
        ("GET", "allowed.test", 80, False, "invalid_host", 403, None, None)),
    "denied name": (
        '{"authority":"localhost","bytes_received":73,"bytes_sent":149,"chain":"http@80",'
        '"checked":"yes","details":"direct_response","duration_ms":0,"flags":"-",' + H + ','
        '"method":"GET","original_dst":"10.77.0.2:80","rbac_policy":null,"route":"denied_name",'
        '"status":403,"upstream_host":null}',
        ("GET", "localhost", 80, False, "denied_name", 403, None, None)),
    "name resolving to a private address": (
        '{"authority":"private.test","bytes_received":76,"bytes_sent":287,"chain":"http@80",'
        '"checked":null,"details":"rbac_access_denied_matched_policy[private_address@10.0.0.0/8]",'
        '"duration_ms":1,"flags":"-",' + H + ',"method":"GET","original_dst":"10.77.0.2:80",'
        '"rbac_policy":"private_address@10.0.0.0/8","route":"allowed","status":403,'
        '"upstream_host":null}',
        ("GET", "private.test", 80, False, "private_address", 403, None, "10.0.0.0/8")),
    "answer refused by the dial view": (
        '{"authority":"mixed.test","bytes_received":74,"bytes_sent":314,"chain":"http@80",'
        '"checked":"yes","details":"dns_resolution_failure{cares_norecords:Domain_name_not_found}",'
        '"duration_ms":2,"flags":"DF",' + H + ',"method":"GET","original_dst":"10.77.0.2:80",'
        '"rbac_policy":null,"route":"allowed","status":403,"upstream_host":null}',
        ("GET", "mixed.test", 80, False, "denied_address_in_answer", 403, None, None)),
    "IPv6 literal": (
        '{"authority":"[fd77::5]","bytes_received":73,"bytes_sent":179,"chain":"literal_http@80",'
        '"checked":"yes","details":"via_upstream","duration_ms":1,"flags":"-",' + H + ','
        '"method":"GET","original_dst":"[fd77::5]:80","rbac_policy":null,"route":"allowed",'
        '"status":200,"upstream_host":"[fd77::5]:80"}',
        ("GET", "fd77::5", 80, True, "allowed", 200, "fd77::5", None)),
    # HTTP/1.0 without a Host: Envoy's own 400. The host is the address dialed.
    "no Host": (
        '{"authority":null,"bytes_received":56,"bytes_sent":103,"chain":"http@80",'
        '"checked":null,"details":"missing_host_header","duration_ms":0,"flags":"-",' + H + ','
        '"method":"GET","original_dst":"10.77.0.2:80","rbac_policy":null,"route":null,'
        '"status":400,"upstream_host":null}',
        ("GET", "10.77.0.2", 80, False, "invalid_host", 400, None, None)),
}


@pytest.mark.parametrize("kind", REQUESTS)
def test_request_lines(kind: str) -> None:
    line, expected = REQUESTS[kind]
    assert summary(parse(line)) == expected


def test_request_remedy_names_the_dialed_port() -> None:
    record = parse(REQUESTS["port not allowed"][0])
    assert record.remedy is not None and record.remedy.endswith("--allow-port 9999")
    record = parse(REQUESTS["Host not allowed"][0].replace('"10.77.0.2:80"', '"10.77.0.2:8080"'))
    assert record.port == 8080


def test_log_entry_marks_the_transparent_path() -> None:
    entry = parse(REQUESTS["allowed"][0]).log_entry("wl")
    assert entry["transparent"] is True and entry["decision"] == "allow"
    egress = EnvoyProxy(ENVOY).parse_decision(REQUESTS["allowed"][0].replace(
        "netfence-transparent-http", "netfence-egress"))
    assert egress is not None and egress.log_entry("wl")["transparent"] is False
