"""DNS without exfiltration: the fence's DNS answers allowlisted names only, never asks the
upstream about any other name (the simulated internet's DNS logs every question it gets),
refuses other query types for names that are not allowed, and answers whatever address
the workload asks.
"""

from __future__ import annotations

import base64
import secrets
import struct
from typing import Any

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from tests.conformance import cases
from tests.conformance.fences import FenceGetter, both_privileges
from tests.conformance.harness import Fenced, dial_case
from tests.conformance.reference import Outcome, observe
from tests.support.fakenet import FakeNet

pytestmark = pytest.mark.integration

FENCE_DNS = ("127.0.0.1", 53)


def ask(fence: Fenced, name: str, qtype: str = "A", *, tcp: bool = False,
        server: tuple[str, int] = FENCE_DNS) -> tuple[str | None, list[str], dict[str, Any]]:
    """One question from inside the fence: (rcode or None without a reply, answers, raw)."""
    packet = DNSRecord.question(name, qtype).pack()
    payload = struct.pack("!H", len(packet)) + packet if tcp else packet
    result = fence.one(dial_case(f"dns-{name}-{qtype}", server[0], server[1], udp=not tcp,
                                 payload=payload))
    reply = base64.b64decode(result.get("reply", "")) if result.get("reply") else b""
    if tcp and len(reply) >= 2:
        reply = reply[2:]
    if not reply:
        return None, [], result
    parsed = DNSRecord.parse(reply)
    return RCODE[parsed.header.rcode], [str(rr.rdata) for rr in parsed.rr], result


@both_privileges  # against root's fences, and again rootless ones
def test_answers_allowlisted_names_only(proxy: str, fence: FenceGetter) -> None:
    running, _ = fence("allow")
    assert ask(running, "allowed.test")[:2] == ("NOERROR", ["10.203.0.2"])
    assert ask(running, "ALLOWED.TEST.", tcp=True)[:2] == ("NOERROR", ["10.203.0.2"])
    assert ask(running, "b.a.wild.test")[:2] == ("NOERROR", ["10.203.0.3"])
    # Not allowlisted (an exact entry does not open its subdomains): NXDOMAIN, locally.
    for name in ("other.test", "www.allowed.test", "evilwild.test", "localhost",
                 "x.localhost", "host.docker.internal"):
        rcode, answers, _ = ask(running, name)
        assert (rcode, answers) == ("NXDOMAIN", []), name
    # Allowlisted, but resolving to a denied address: the workload never learns it.
    for name in ("loopback.test", "metadata.test", "hostaddr.test", "private.test",
                 "mixed.test"):
        rcode, answers, _ = ask(running, name)
        assert (rcode, answers) == ("NXDOMAIN", []), name


@both_privileges
def test_denied_names_never_reach_the_upstream(proxy: str, fence: FenceGetter,
                                               fakenet: FakeNet) -> None:
    """A secret in a label must go nowhere: not through DNS (any type, UDP or TCP), and not
    through the proxy, which checks the name before anything resolves it."""
    running, _ = fence("allow")
    secret = f"s3cr3t-{secrets.token_hex(6)}"
    names = [f"{secret}.other.test", f"{secret}.allowed.test", f"{secret}.localhost",
             f"{secret}.test", secret, f"{secret}.wild.test.evil.test"]
    fakenet.clear_queries()
    for name in names:
        for qtype in ("A", "AAAA", "TXT", "ANY", "MX", "CNAME", "SRV", "NULL"):
            rcode, answers, _ = ask(running, name, qtype)
            assert rcode in ("NXDOMAIN", "REFUSED", "NOTIMP"), (name, qtype, rcode)
            assert answers == [], (name, qtype, answers)
        for qtype in ("AXFR", "TXT"):
            rcode, answers, _ = ask(running, name, qtype, tcp=True)
            assert rcode in (None, "NXDOMAIN", "REFUSED", "NOTIMP"), (name, qtype, rcode)
            assert answers == [], (name, qtype, answers)
    # A zone transfer of an allowlisted name may go upstream (the name is allowed), but
    # returns no zone: resolvers do not transfer zones.
    rcode, answers, _ = ask(running, "allowed.test", "AXFR", tcp=True)
    assert answers == [], (rcode, answers)
    # Reverse lookups of fence-denied addresses are names like any other.
    assert ask(running, "1.0.0.127.in-addr.arpa", "PTR")[0] == "NXDOMAIN"
    # Through the proxy: denied before any lookup.
    for name in names[:2]:
        for case in (cases.get(f"x-{name}", name),
                     cases.tunnel(f"x-{name}t", f"{name}:443", ca=fakenet.ca_pem_path)):
            seen = observe(running.one(case.wire))
            assert seen.outcome is Outcome.DENIED, (name, seen)
    leaked = [q for q in fakenet.queries() if secret in q[0]]
    assert leaked == [], leaked


@pytest.mark.parametrize(("address", "port"), [
    ("10.203.0.2", 53),  # the real upstream resolver, straight
    ("10.203.0.1", 53),  # the host's address on the simulated internet
    ("127.0.0.53", 53),  # a stub resolver's address: the fence's own loopback
    ("::1", 53),
    ("fd00::2", 53),  # an IPv6 address of the host
])
@both_privileges
def test_dns_to_any_address_is_the_fences(proxy: str, fence: FenceGetter, fakenet: FakeNet,
                                          address: str, port: int) -> None:
    # A program with a resolver of its own gets the fence's DNS whatever address it asks:
    # the same answers, the same allowlist, nothing new upstream.
    running, _ = fence("allow")
    secret = f"direct-{secrets.token_hex(4)}.denied.test"
    fakenet.clear_queries()
    for tcp in (False, True):
        there = ask(running, "allowed.test", tcp=tcp, server=(address, port))
        assert there[:2] == ("NOERROR", ["10.203.0.2"]), (address, tcp, there[2])
        rcode, answers, raw = ask(running, secret, tcp=tcp, server=(address, port))
        assert rcode in ("NXDOMAIN", "REFUSED") and answers == [], (address, tcp, raw)
    assert not [q for q in fakenet.queries() if q[0] == secret]


def test_qtype_names_are_known() -> None:
    # dnslib knows every type the tests ask about (a typo would silently ask type 0).
    for qtype in ("A", "AAAA", "TXT", "ANY", "MX", "CNAME", "SRV", "NULL", "AXFR", "PTR"):
        assert QTYPE.reverse[qtype] > 0
