"""Request builders and the request matrix of the conformance suite.

Every case carries the destination its request names when read strictly (reference.Target),
so the reference decision is Policy.decide on it; see reference.py for the rules.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path

from tests.conformance.harness import connect_case, direct_case, http_case
from tests.conformance.reference import Case, Target

CRLF = "\r\n"


def strict_target(authority: str, default_port: int | None) -> Target | None:
    """The destination an authority names, read by RFC 3986 without guessing; None for
    one that names none (userinfo, a missing port where one is required, a bracketed
    text that is not an IPv6 address, a zone id, stray characters)."""
    if not authority or any(c.isspace() or ord(c) < 0x20 or c in "@/?#\\" for c in authority):
        return None
    if authority.startswith("["):
        end = authority.find("]")
        if end == -1:
            return None
        inside, rest = authority[1:end], authority[end + 1:]
        try:
            ipaddress.IPv6Address(inside)
        except ValueError:
            return None
        host = authority[:end + 1]
    else:
        if authority.count(":") > 1:
            return None
        host, sep, port_text = authority.partition(":")
        rest = sep + port_text
        if not host:
            return None
    if not rest:
        return Target(host, default_port) if default_port is not None else None
    if not rest.startswith(":") or not rest[1:].isdigit() or not rest[1:].isascii():
        return None
    return Target(host, int(rest[1:]))


_HOSTNAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.")


def _well_formed(target: Target | None, authority: str) -> bool:
    """In the grammar every backend must accept: a hostname of letters, digits, '-' and
    '.' (RFC 1123; Envoy refuses '_', which RFC 3986 allows), an IP literal, a port in
    1-65535."""
    if target is None or not authority.isascii() or not 1 <= target.port <= 65535:
        return False
    return target.host.startswith("[") or set(target.host) <= _HOSTNAME_CHARS


def get(cid: str, authority: str, *, host_header: str | None = None, scheme: str = "http",
        method: str = "GET", version: str = "HTTP/1.1", extra: Sequence[str] = (),
        form_ok: bool | None = None, lenient: Target | None = None,
        target: Target | str | None = "auto") -> Case:
    """An absolute-form request for scheme://authority/cid."""
    lines = [f"{method} {scheme}://{authority}/{cid} {version}"]
    if host_header is not None or version == "HTTP/1.1":
        lines.append(f"Host: {authority if host_header is None else host_header}")
    lines += [*extra, "Connection: close"]
    wire = (CRLF.join(lines) + CRLF + CRLF).encode("utf-8", "surrogateescape")
    if target == "auto":
        target = strict_target(authority, 80) if scheme == "http" else None
    assert not isinstance(target, str)
    ok = _well_formed(target, authority) and scheme == "http" if form_ok is None else form_ok
    return Case(cid, http_case(cid, wire), [target], form_ok=ok, lenient=lenient)


def tunnel(cid: str, authority: str, *, ca: Path, form_ok: bool | None = None,
           lenient: Target | None = None, target: Target | str | None = "auto") -> Case:
    """CONNECT authority, then a request through the tunnel (TLS on port 443)."""
    if target == "auto":
        target = strict_target(authority, None)
    assert not isinstance(target, str)
    inner_host = (target.host if target else authority).strip("[]")
    tls_name: str | None = None
    if target is not None and target.port == 443:
        from netfence.profile.hosts import parse_ip

        ip = parse_ip(target.host)
        tls_name = str(ip) if ip is not None else target.host.rstrip(".").lower()
    inner = (f"GET /{cid} HTTP/1.1{CRLF}Host: {inner_host}{CRLF}Connection: close{CRLF}{CRLF}"
             ).encode("utf-8", "surrogateescape")
    wire = connect_case(cid, f"CONNECT {authority} HTTP/1.1{CRLF}Host: {authority}{CRLF}{CRLF}"
                        .encode("utf-8", "surrogateescape"),
                        tunnel=inner, tls_name=tls_name, cafile=str(ca))
    ok = _well_formed(target, authority) if form_ok is None else form_ok
    return Case(cid, wire, [target], form_ok=ok, lenient=lenient)


def raw(cid: str, *requests: bytes, targets: Sequence[Target | None], reads: Sequence[int],
        form_ok: bool = False, lenient: Target | None = None) -> Case:
    """Requests sent as written, in turn on one connection (reads[i] answers after each)."""
    return Case(cid, http_case(cid, *requests, reads=reads), list(targets), form_ok=form_ok,
                lenient=lenient)


def req(line: str, *headers: str, body: str = "") -> bytes:
    return (CRLF.join([line, *headers]) + CRLF + CRLF + body).encode("latin-1")


# --- the matrix ---------------------------------------------------------------------------


def names(ca: Path) -> list[Case]:
    """Allowlisted and other names, wildcards, look-alikes, case and trailing dots."""
    cases: list[Case] = []
    hosts = [
        "allowed.test", "other.test", "denied.test", "www.allowed.test",
        "wild.test", "a.wild.test", "b.a.wild.test",
        # look-alikes of allowed.test and *.wild.test (evilexample.com,
        # example.com.evil.net): each resolves to a server, so a leak would show
        "evilwild.test", "wild.test.evil.test", "evilallowed.test", "allowed.test.other.test",
        "allowed.testx", "www.allowed.test.evil.test",
        # case and trailing-dot variants of allowed and of denied names
        "ALLOWED.TEST", "Allowed.Test", "allowed.test.", "A.Wild.TEST.", "OTHER.TEST",
        "other.test.", "EvilWild.test",
        # malformed names: empty labels, edges, lengths
        "allowed..test", ".allowed.test", "-a.wild.test", "a-.wild.test", "a_b.wild.test",
        "x" * 64 + ".wild.test", ".".join(["a" * 60] * 4) + ".wild.test",
        # names that are never allowed, in any spelling
        "localhost", "LOCALHOST", "localhost.", "x.localhost", "host.docker.internal",
        "gateway.docker.internal", "host.containers.internal",
        # IDN: the punycode form of an allowlisted bücher.test, and one that is not
        "xn--bcher-kva.test", "xn--bcher-kva.other",
        # resolve nowhere (NXDOMAIN): allowed, and the fence passes them on
        "nonexist.test",
    ]
    for i, host in enumerate(hosts):
        cases.append(get(f"name{i}", host))
        cases.append(tunnel(f"name{i}t", f"{host}:443", ca=ca))
    return cases


def ports(ca: Path, canary_port: int) -> list[Case]:
    cases: list[Case] = []
    for i, authority in enumerate([
        "allowed.test:80", "allowed.test:8080", "allowed.test:22", "allowed.test:080",
        "allowed.test:0443", "allowed.test:65535", "allowed.test:443",
        f"allowed.test:{canary_port}", "other.test:8080",
    ]):
        cases.append(get(f"port{i}", authority))
        cases.append(tunnel(f"port{i}t", authority, ca=ca))
    # Malformed authorities: no port, port 0, 65536, empty, signs, garbage, userinfo.
    malformed = [
        # Squid reads a CONNECT without a port as port 443 (its documented default).
        ("CONNECT allowed.test", Target("allowed.test", 443)),
        ("CONNECT allowed.test:", Target("allowed.test", 443)),
        ("CONNECT allowed.test:0", None), ("CONNECT allowed.test:65536", None),
        ("CONNECT allowed.test:+80", Target("allowed.test", 80)),
        ("CONNECT allowed.test:80abc", Target("allowed.test", 80)),
        ("CONNECT allowed.test:4294967376", Target("allowed.test", 80)),
        ("CONNECT x@allowed.test:80", None),
        ("CONNECT allowed.test:80@other.test:80", Target("allowed.test", 80)),
        ("CONNECT other.test:80@allowed.test:80", Target("other.test", 80)),
        ("CONNECT other.test:80 allowed.test:80", None),
        ("CONNECT [::1]", None), ("CONNECT ::1:80", None),
        ("CONNECT [fd00::5%25eth0]:80", None),
    ]
    for i, (line, lenient) in enumerate(malformed):
        authority = line.split(" ", 1)[1]
        cases.append(raw(f"bad{i}", req(f"{line} HTTP/1.1", f"Host: {authority}"),
                         targets=[None], reads=[1], lenient=lenient))
    for i, (authority, lenient) in enumerate([
        ("allowed.test:80abc", Target("allowed.test", 80)),
        ("allowed.test:4294967376", Target("allowed.test", 80)),
        ("other.test:80abc", Target("other.test", 80)),
        ("allowed.test:", Target("allowed.test", 80)),
    ]):
        cases.append(get(f"badurl{i}", authority, target=None, lenient=lenient))
    return cases


def literals(ca: Path) -> list[Case]:
    """IP literals in every form. Only addresses the fence may never dial, or fakenet
    addresses: an allowed one can only ever target the simulated internet."""
    allowed = [  # spellings of the allowlisted 10.203.0.3
        "10.203.0.3", "181075971", "0xacb0003", "0XACB0003", "012.0313.0.03", "10.203.3",
        "10.13303811", "0x0a.0xcb.0.0x3", "00012.0313.00.03", "10.203.0.3.",
        "[::ffff:10.203.0.3]", "[::ffff:acb:3]", "[0:0:0:0:0:ffff:acb:3]",
        "[::FFFF:0ACB:0003]", "[0::ffff:10.203.0.3]",
    ]
    other = [
        # a fakenet server that is not allowlisted as a literal
        "10.203.0.2", "181075970", "0xacb0002", "[::ffff:10.203.0.2]",
        # loopback, the host, link-local, private ranges, all spellings
        "127.0.0.1", "2130706433", "0x7f000001", "0177.0.0.1", "127.1", "0x7f.1", "0",
        "0.0.0.0", "[::1]", "[0:0:0:0:0:0:0:1]", "[::ffff:127.0.0.1]", "[::]",
        "[64:ff9b::7f00:1]", "10.203.0.1", "0xacb0001", "169.254.169.254", "0xa9fea9fe",
        "2852039166", "[fe80::1]", "[::ffff:169.254.169.254]", "10.203.9.9",
        "192.168.1.1", "[fd00::6]",
        # allowlisted literal fd00::5 (private: denied by address), and spellings
        "[fd00::5]", "[FD00:0::5]", "[fd00:0:0:0:0:0:0:5]", "[fd00::0.0.0.5]",
        # bracketed text that is not an address (Squid reads [deadbeef] as deadbeef)
        "[deadbeef]", "[::1", "::1",
        # IPv4-compatible (deprecated): an automatic tunnel would send it to 10.203.0.3
        "[::10.203.0.3]", "[::acb:3]",
    ]
    cases: list[Case] = []
    for i, host in enumerate(allowed + other):
        lenient = Target("deadbeef", 80) if host == "[deadbeef]" else None
        cases.append(get(f"lit{i}", host, lenient=lenient))
        lenient = Target("deadbeef", 443) if host == "[deadbeef]" else None
        cases.append(tunnel(f"lit{i}t", f"{host}:443", ca=ca, lenient=lenient))
    return cases


def addresses(ca: Path, canary_port: int) -> list[Case]:
    """Allowed names resolving to loopback, the host, link-local, private in and out of
    --allow-cidr, and mixed answers; also on a port where a host-side canary listens."""
    cases: list[Case] = []
    hosts = ["loopback.test", "metadata.test", "hostaddr.test", "private.test", "mixed.test",
             "mixed-first-denied.test", "mixed-private.test", "mixed-host.test"]
    for i, host in enumerate(hosts):
        for port in (80, canary_port):
            cases.append(get(f"addr{i}p{port}", f"{host}:{port}"))
            cases.append(tunnel(f"addr{i}p{port}t", f"{host}:{port}", ca=ca))
    return cases


def forms() -> list[Case]:
    """Request forms: Host header vs URL, userinfo, origin-form, keep-alive switching,
    smuggling shapes, schemes, odd syntax."""
    a, o = Target("allowed.test", 80), Target("other.test", 80)
    cases = [
        get("hosthdr0", "allowed.test", host_header="other.test"),
        get("hosthdr1", "other.test", host_header="allowed.test"),
        get("hosthdr2", "other.test", host_header="other.test:443"),
        get("userinfo0", "x@allowed.test", target=a, form_ok=False),
        get("userinfo1", "allowed.test@other.test", target=o, form_ok=False),
        get("userinfo2", "other.test@allowed.test", target=a, form_ok=False),
        get("userinfo3", "allowed.test:80@other.test", target=o, form_ok=False),
        get("backslash", "other.test\\@allowed.test", target=None, lenient=a),
        get("scheme0", "allowed.test", scheme="https"),
        get("scheme1", "other.test", scheme="https"),
        get("scheme2", "allowed.test", scheme="ftp"),
        get("scheme3", "allowed.test", scheme="HTTP", form_ok=False, target=a),
        get("http10", "allowed.test", version="HTTP/1.0"),
        get("method0", "allowed.test", method="POST", extra=["Content-Length: 0"]),
        get("method1", "other.test", method="get", form_ok=False),
        get("method2", "other.test", method="DELETE"),
        get("pct", "allowed%2etest", target=None, lenient=a),
        get("nul", "allowed.test%00.other.test", target=None),
        get("utf8", "bücher.test", target=None),
        raw("origin0", req("GET /origin0 HTTP/1.1", "Host: allowed.test", "Connection: close"),
            targets=[a], reads=[1]),
        raw("origin1", req("GET /origin1 HTTP/1.1", "Host: other.test", "Connection: close"),
            targets=[o], reads=[1]),
        raw("twohosts", req("GET /twohosts HTTP/1.1", "Host: allowed.test", "Host: other.test",
                            "Connection: close"), targets=[None], reads=[1]),
        raw("space", req("GET http://allowed.test /space HTTP/1.1", "Host: allowed.test",
                         "Connection: close"), targets=[None], reads=[1], lenient=a),
        raw("lfonly", b"GET http://other.test/lfonly HTTP/1.1\nHost: other.test\n"
                      b"Connection: close\n\n", targets=[o], reads=[1]),
        raw("ws0", req("GET http://other.test/ws0 HTTP/1.1", "Host: other.test",
                       "Upgrade: websocket", "Connection: Upgrade"), targets=[o], reads=[1]),
        raw("expect", req("POST http://other.test/expect HTTP/1.1", "Host: other.test",
                          "Content-Length: 3", "Expect: 100-continue", "Connection: close",
                          body="abc"), targets=[o], reads=[1]),
        # Keep-alive: one connection, the host switching between requests.
        raw("keepalive0", req("GET http://allowed.test/k1 HTTP/1.1", "Host: allowed.test"),
            req("GET http://other.test/k2 HTTP/1.1", "Host: other.test"),
            req("GET http://allowed.test/k3 HTTP/1.1", "Host: allowed.test",
                "Connection: close"), targets=[a, o, a], reads=[1, 1, 1], form_ok=True),
        raw("keepalive1", req("GET http://allowed.test/k1 HTTP/1.1", "Host: allowed.test"),
            req("GET http://loopback.test/k2 HTTP/1.1", "Host: loopback.test"),
            req("GET http://10.203.0.3/k3 HTTP/1.1", "Host: 10.203.0.3",
                "Connection: close"),
            targets=[a, Target("loopback.test", 80), Target("10.203.0.3", 80)],
            reads=[1, 1, 1], form_ok=True),
        raw("pipeline", req("GET http://allowed.test/p1 HTTP/1.1", "Host: allowed.test") +
            req("GET http://other.test/p2 HTTP/1.1", "Host: other.test") +
            req("GET http://allowed.test/p3 HTTP/1.1", "Host: allowed.test",
                "Connection: close"), targets=[a, o, a], reads=[3], form_ok=True),
        raw("keepalive-origin", req("GET /ko1 HTTP/1.1", "Host: allowed.test"),
            req("GET /ko2 HTTP/1.1", "Host: other.test", "Connection: close"),
            targets=[a, o], reads=[1, 1]),
        # Smuggling shapes: Content-Length with Transfer-Encoding, obfuscated chunked,
        # obs-fold; a second request hidden in the first one's body names other.test.
        raw("cl-te", req("POST http://allowed.test/s1 HTTP/1.1", "Host: allowed.test",
                         "Content-Length: 4", "Transfer-Encoding: chunked",
                         body="0\r\n\r\nGET http://other.test/s2 HTTP/1.1\r\n"
                              "Host: other.test\r\nConnection: close\r\n\r\n"),
            targets=[a, o], reads=[2]),
        raw("te-cl", req("POST http://allowed.test/s1 HTTP/1.1", "Host: allowed.test",
                         "Transfer-Encoding: chunked", "Content-Length: 60",
                         body="0\r\n\r\nGET http://other.test/s2 HTTP/1.1\r\n"
                              "Host: other.test\r\nConnection: close\r\n\r\n"),
            targets=[a, o], reads=[2]),
        raw("te-obf", req("POST http://allowed.test/s1 HTTP/1.1", "Host: allowed.test",
                          "Transfer-Encoding: xchunked", "Content-Length: 3",
                          "Connection: close", body="abc"), targets=[a], reads=[1]),
        raw("te-space", req("POST http://allowed.test/s1 HTTP/1.1", "Host: allowed.test",
                            "Transfer-Encoding : chunked", "Content-Length: 3",
                            "Connection: close", body="abc"), targets=[a], reads=[1]),
        raw("cl-cl", req("POST http://allowed.test/s1 HTTP/1.1", "Host: allowed.test",
                         "Content-Length: 3", "Content-Length: 70",
                         body="abcGET http://other.test/s2 HTTP/1.1\r\nHost: other.test\r\n"
                              "Connection: close\r\n\r\n"), targets=[a, o], reads=[2]),
        raw("fold0", req("GET http://allowed.test/f0 HTTP/1.1", "Host: allowed.test",
                         "X-A: a", " b", "Connection: close"), targets=[a], reads=[1]),
        raw("fold1", req("GET /f1 HTTP/1.1", "Host: allowed.test", " other.test",
                         "Connection: close"), targets=[None], reads=[1]),
        raw("fold2", req("GET http://other.test/f2 HTTP/1.1", "Host: other.test",
                         "X-A: a", "\tb", "Connection: close"), targets=[o], reads=[1]),
    ]
    return cases


def allowlist_matrix(ca: Path, canary_port: int) -> list[Case]:
    return [*names(ca), *ports(ca, canary_port), *literals(ca), *addresses(ca, canary_port),
            *forms()]


def network_matrix(ca: Path, canary_port: int) -> list[Case]:
    """With every name allowed (the `network` profile): the address stage alone decides.
    Names resolve only inside the simulated internet; literals are never public."""
    cases = [*names(ca), *addresses(ca, canary_port)]
    cases += [c for c in literals(ca)]
    cases += [get("net-ws", "allowed.test"), *forms()]
    return cases


def ports_matrix(ca: Path) -> list[Case]:
    """A profile allowing ports 443 and 8080 only (no 80): defaults and CONNECT ports."""
    cases: list[Case] = []
    for i, authority in enumerate(["allowed.test", "allowed.test:80", "allowed.test:8080",
                                   "allowed.test:08080", "allowed.test:443",
                                   "allowed.test:8443", "10.203.0.3:8080", "0xacb0003:8080",
                                   "0xacb0003", "other.test:8080"]):
        cases.append(get(f"p{i}", authority))
        cases.append(tunnel(f"p{i}t", authority if ":" in authority else authority + ":80",
                            ca=ca))
    return cases


def none_matrix(ca: Path) -> list[Case]:
    """The default profile: nothing is allowed."""
    cases = [get(f"none{i}", h) for i, h in enumerate(
        ["allowed.test", "10.203.0.3", "localhost", "[::1]", "loopback.test"])]
    cases += [tunnel(f"none{i}t", h, ca=ca) for i, h in enumerate(
        ["allowed.test:443", "10.203.0.3:443", "[::1]:443"])]
    return cases


# --- the transparent path -------------------------------------------------------------------

# denied.test's server: a request the fence sent to the address the workload dialed, not to
# the name it carries, is answered from here (and the judge sees that server).
DECOY = "10.203.0.4"
# An IPv6 address that is nobody's: the redirect lands it on the fence's ::1 listener.
DECOY6 = "fd00::6"


def direct_get(cid: str, host: str, *, to: tuple[str, int] = (DECOY, 80),
               target: Target | str | None = "auto", form_ok: bool | None = None) -> Case:
    """A request sent straight to `to`, ignoring the proxy, naming `host` in its Host
    header: the fence must decide by the Host's name at the port dialed, and dial that."""
    wire = direct_case(cid, to[0], to[1], req(f"GET /{cid} HTTP/1.1", f"Host: {host}",
                                              "Connection: close"))
    if target == "auto":
        target = strict_target(host, to[1])
        if target is not None and target.port != to[1]:
            # A Host naming another port than the one dialed names no destination here.
            target, form_ok = Target(target.host, to[1]), False
    assert not isinstance(target, str)
    ok = _well_formed(target, host) if form_ok is None else form_ok
    return Case(cid, wire, [target], form_ok=ok)


def direct_tls(cid: str, name: str | None, *, to: tuple[str, int] = (DECOY, 443),
               ca: Path) -> Case:
    """TLS straight to `to` with `name` as the SNI (none: no SNI, then the address dialed is
    the destination), then a request inside: a denial closes the connection."""
    host = name if name is not None else (f"[{to[0]}]" if ":" in to[0] else to[0])
    wire = direct_case(cid, to[0], to[1], req(f"GET /{cid} HTTP/1.1", f"Host: {host}",
                                              "Connection: close"),
                       tls=True, tls_name=name, cafile=str(ca))
    return Case(cid, wire, [Target(host, to[1])], closed_is_denial=True)


def transparent_matrix(ca: Path, canary_port: int) -> list[Case]:
    """Names, ports, addresses and literals through the transparent path, each sent to an
    address that is not the name's own (DECOY, DECOY6)."""
    hosts = ["allowed.test", "www.allowed.test", "other.test", "denied.test", "a.wild.test",
             "wild.test", "evilwild.test", "allowed.test.other.test", "allowed.testx",
             "ALLOWED.TEST", "Allowed.Test", "localhost", "x.localhost",
             "host.docker.internal", "xn--bcher-kva.test", "xn--bcher-kva.other",
             "nonexist.test", "loopback.test", "metadata.test", "hostaddr.test",
             "private.test", "mixed.test", "mixed-first-denied.test", "mixed-private.test",
             "mixed-host.test"]
    cases: list[Case] = []
    for i, host in enumerate(hosts):
        cases.append(direct_get(f"tp-name{i}", host))
        cases.append(direct_tls(f"tp-name{i}s", host.lower(), ca=ca))
    for i, host in enumerate(["allowed.test", "other.test", "hostaddr.test", "loopback.test"]):
        for port in (8080, 22, canary_port):
            cases.append(direct_get(f"tp-port{i}p{port}", host, to=(DECOY, port)))
    cases += [
        # The Host names another port than the one dialed.
        direct_get("tp-hostport0", "allowed.test:8080"),
        direct_get("tp-hostport1", "allowed.test:80", to=(DECOY, 8080)),
        # An absolute-form URL of another scheme: the fence originates no TLS (or FTP).
        *(Case(cid, direct_case(cid, DECOY, 80, req(f"GET {scheme}://allowed.test/{cid} "
                                                    "HTTP/1.1", "Host: allowed.test",
                                                    "Connection: close")),
               [Target("allowed.test", 80)], form_ok=False)
          for cid, scheme in (("tp-scheme0", "https"), ("tp-scheme1", "ftp"))),
        # IPv6 destinations land on the fence too.
        direct_get("tp-v6", "allowed.test", to=(DECOY6, 80)),
        direct_tls("tp-v6s", "allowed.test", to=(DECOY6, 443), ca=ca),
        direct_get("tp-v6other", "other.test", to=(DECOY6, 80)),
        # Literals: a Host naming the address dialed, TLS without SNI, and names carried to
        # an allowlisted literal's address.
        direct_get("tp-lit0", "10.203.0.3", to=("10.203.0.3", 80)),
        direct_get("tp-lit1", "10.203.0.2", to=("10.203.0.2", 80)),
        direct_get("tp-lit2", "10.203.0.1", to=("10.203.0.1", 80)),
        direct_get("tp-lit3", "[fd00::5]", to=("fd00::5", 80)),
        direct_get("tp-lit4", "10.203.0.3", to=(DECOY, 80)),
        direct_get("tp-lit5", "other.test", to=("10.203.0.3", 80)),
        direct_get("tp-lit6", "10.203.0.1", to=("10.203.0.1", canary_port)),
        direct_tls("tp-lit7", None, to=("10.203.0.3", 443), ca=ca),
        direct_tls("tp-lit8", None, to=("10.203.0.2", 443), ca=ca),
        direct_tls("tp-lit9", None, to=("10.203.0.1", canary_port), ca=ca),
        direct_tls("tp-lit10", "other.test", to=("10.203.0.3", 443), ca=ca),
        direct_tls("tp-lit11", "allowed.test", to=("10.203.0.3", 443), ca=ca),
    ]
    # Keep-alive: one connection, the Host switching between requests.
    a, o = Target("allowed.test", 80), Target("other.test", 80)
    switching = direct_case("tp-keepalive", DECOY, 80,
                            req("GET /k1 HTTP/1.1", "Host: allowed.test"),
                            req("GET /k2 HTTP/1.1", "Host: other.test"),
                            req("GET /k3 HTTP/1.1", "Host: allowed.test", "Connection: close"))
    cases.append(Case("tp-keepalive", switching, [a, o, a]))
    return cases

