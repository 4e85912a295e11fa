"""Generated requests (hypothesis): names, IP-literal spellings and ports, through each backend,
judged against Policy.decide like the matrix.

Every generated name resolves only in the simulated internet (or not at all), and every
generated literal is a fakenet address or one the fence may never dial: even with every
name allowed, nothing can reach beyond 10.203.0.0/24.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conformance import cases
from tests.conformance.fences import Canary, FenceGetter, both_privileges
from tests.conformance.reference import Case, judge, observe
from tests.support.fakenet_server import ANSWERS

# Against root's fences, and again against rootless ones (issue 17).
pytestmark = [pytest.mark.integration, both_privileges]

BASES = sorted({*ANSWERS, "allowed.test", "other.test", "localhost", "host.docker.internal",
                "xn--bcher-kva.test", "rebind.test"} - {"rebind.test"})
LABEL = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,14}", fullmatch=True) | st.sampled_from(
    ["wild", "allowed", "test", "-x", "x-", "_x", "a" * 63, "a" * 64, "xn--bcher-kva", ""])


def _mutate(name: str, how: int) -> str:
    """Case and trailing-dot variants."""
    if how & 1:
        name = name.upper()
    if how & 2:
        name = "".join(c.upper() if i % 2 else c for i, c in enumerate(name))
    if how & 4:
        name += "."
    return name


NAMES = st.one_of(
    st.sampled_from(BASES),
    st.builds(lambda label, base: f"{label}.{base}", LABEL, st.sampled_from(BASES)),
    st.builds(lambda base, label: f"{base}{label}", st.sampled_from(BASES), LABEL),
    st.builds(lambda label, base: f"{label}{base}", LABEL, st.sampled_from(BASES)),
    st.builds(lambda base, label: f"{base}.{label}", st.sampled_from(BASES), LABEL),
    st.builds(_mutate, st.sampled_from(BASES), st.integers(0, 7)),
)

# Never a public address: fakenet servers, the host's fakenet address, and ranges the
# fence denies whatever the profile says.
SAFE_V4 = ["10.203.0.1", "10.203.0.2", "10.203.0.3", "10.203.0.4", "10.203.9.9", "127.0.0.1",
           "127.1.2.3", "0.0.0.0", "169.254.169.254", "192.168.0.1", "100.64.0.1",
           "224.0.0.1", "255.255.255.255"]
SAFE_V6 = ["::1", "::", "fe80::1", "fd00::5", "fd00::6", "ff02::1", "64:ff9b::a9fe:a9fe",
           "2001:db8::1"]


@st.composite
def v4_spelling(draw: st.DrawFn) -> str:
    ip = ipaddress.IPv4Address(draw(st.sampled_from(SAFE_V4)))
    b = ip.packed
    layout = draw(st.sampled_from([
        (b[0], b[1], b[2], b[3]), (b[0], b[1], (b[2] << 8) | b[3]),
        (b[0], (b[1] << 16) | (b[2] << 8) | b[3]), (int(ip),)]))
    parts = []
    for value in layout:
        base = draw(st.sampled_from(["dec", "oct", "hex", "HEX"]))
        zeros = "0" * draw(st.integers(0, 2))
        if base == "dec":
            parts.append(str(value))
        elif base == "oct":
            parts.append("0" + zeros + format(value, "o"))
        else:
            text = "0x" + zeros + format(value, "x")
            parts.append(text.upper() if base == "HEX" else text)
    return ".".join(parts) + draw(st.sampled_from(["", "", "."]))


@st.composite
def v6_spelling(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(SAFE_V6 + [f"::ffff:{a}" for a in SAFE_V4]))
    ip = ipaddress.IPv6Address(text)
    form = draw(st.sampled_from(["compressed", "exploded", "upper", "mapped"]))
    if form == "exploded":
        text = ip.exploded
    elif form == "upper":
        text = ip.compressed.upper()
    elif form == "mapped" and ip.ipv4_mapped is not None:
        text = f"::ffff:{ip.ipv4_mapped}"
    else:
        text = ip.compressed
    return f"[{text}]"


HOSTS = st.one_of(NAMES, v4_spelling(), v6_spelling())
PORTS = st.one_of(st.sampled_from([80, 443, 8080, 22, 0, 65535, 65536, 80443]),
                  st.integers(1, 65535))


def build(i: int, host: str, port: int | None, connect: bool, ca: Path) -> Case:
    authority = host if port is None else f"{host}:{port}"
    if connect:
        return cases.tunnel(f"gen{i}t", authority if port is not None else f"{host}:443",
                            ca=ca)
    return cases.get(f"gen{i}", authority)


def check(proxy: str, fence: FenceGetter, profile: str, canary: Canary, ca: Path,
          requests: list[tuple[str, int | None, bool]]) -> None:
    running, policy = fence(profile)
    batch = [build(i, host, port, connect, ca) for i, (host, port, connect) in
             enumerate(requests)]
    failures = []
    for case, result in zip(batch, running.send([c.wire for c in batch]), strict=True):
        verdict = judge(proxy, policy, case, 0, observe(result))
        if not verdict.ok:
            failures.append(verdict.message)
    assert not canary.hits, canary.hits
    assert not failures, "\n".join(failures)


REQUESTS = st.lists(st.tuples(HOSTS, st.none() | PORTS, st.booleans()), min_size=1,
                    max_size=25)
GENERATED = settings(max_examples=40, deadline=None, database=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture,
                                            HealthCheck.too_slow])


@pytest.mark.parametrize("profile", ["allow", "network"])
@GENERATED
@given(requests=REQUESTS)
def test_generated_requests_agree_with_the_policy(
        proxy: str, fence: FenceGetter, profile: str, canary: Canary, ca: Path,
        requests: list[tuple[str, int | None, bool]]) -> None:
    check(proxy, fence, profile, canary, ca, requests)
