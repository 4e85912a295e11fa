"""What each request should get, and how a backend's answer compares with Policy.decide.

This module is the one documented place that says which differences between a backend
and the policy are acceptable (SAFE_DIFFERENCES and the form rules in `judge`); every other
difference fails a test. docs/threat-model.md explains each of them.

Vocabulary:
- a case's *target* is the destination its request names, read strictly (RFC 9112/3986):
  host and port of an http:// absolute-form URL or of a CONNECT authority; None when the
  request names none unambiguously (malformed).
- `form_ok` says the request is in the grammar every backend must accept: an http://
  absolute-form or a CONNECT authority-form, ASCII host, numeric port in 1-65535, one Host
  header, no smuggling shape. A backend may refuse anything else (REJECTED: a 4xx from its
  parser, or no answer); a refusal dials nothing.
- an outcome is what the backend did: ALLOWED (a fakenet server answered, or a tunnel
  opened), PASSED (the fence let it through and the upstream failed: NXDOMAIN, refused),
  DENIED with the reason its 403 body names, or REJECTED.
- a BYPASS is an ALLOWED or PASSED outcome for a request whose reference decision is a
  denial (for a lenient reading: whose leniently read destination the policy denies).
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from netfence.policy import Decision, Policy, Reason
from netfence.profile.hosts import parse_ip
from tests.support.fakenet_server import ANSWERS, REBIND_ANSWERS, REBIND_NAME


class Outcome(enum.Enum):
    ALLOWED = "allowed"
    PASSED = "passed"
    DENIED = "denied"
    REJECTED = "rejected"


@dataclass(frozen=True)
class Observed:
    outcome: Outcome
    reason: str | None = None  # the reason a DENIED body names
    server: str | None = None  # the fakenet server that answered (ip:port), if one did
    detail: str = ""


@dataclass(frozen=True)
class Target:
    host: str
    port: int


@dataclass
class Case:
    """One request (or several on one connection) and what the reference says of each."""

    id: str
    wire: dict[str, Any]  # the driver case (tests/conformance/harness.py builders)
    targets: list[Target | None]  # per response expected on the connection
    form_ok: bool = True
    # A documented lenient reading a backend may make instead of refusing (Squid's URL
    # parser reads "80abc" or "4294967376" as port 80): the destination it then dials.
    lenient: Target | None = None
    # Responses after a denial on the same connection may go unanswered (a proxy may close
    # a connection after refusing a request).
    after_denial_may_close: bool = True
    # A denial shows as a closed connection, with no reason (a TLS connection on the
    # transparent path: the fence cannot answer inside a TLS session it does not end).
    closed_is_denial: bool = False


def legacy_ipv4(target: Target, policy: Policy, expected: Decision) -> bool:
    """A legacy spelling of an IPv4 address (0x7f000001, 127.1, 0177.0.0.1), not a quad,
    with every name allowed (else the name stage decides, as the policy does)."""
    ip = parse_ip(target.host)
    return (policy.allow_all and isinstance(ip, ipaddress.IPv4Address)
            and target.host.rstrip(".") != str(ip))


def several_answers_one_denied(target: Target, policy: Policy, expected: Decision) -> bool:
    """A name whose DNS answer holds more than one address, or changes (rebinding), that
    the policy denies for an address: only then may a backend have resolved it."""
    return len(set(answers(target.host))) > 1 and expected.reason.value.endswith("_address")


@dataclass(frozen=True)
class Difference:
    """A documented difference from the policy: which backend, what it answered, for which
    targets, and why it is safe. docs/threat-model.md explains each."""

    backend: str
    reason: str  # the reason the backend's 403 names
    applies: Callable[[Target, Policy, Decision], bool]
    why: str


# Both deny, the words differ: nothing is dialed.
SAFE_DIFFERENCES: tuple[Difference, ...] = (
    Difference("envoy", Reason.DENIED_ADDRESS_IN_ANSWER.value, several_answers_one_denied,
               "Envoy's dial view (the fence's DNS) refused an answer holding a denied "
               "address after RBAC passed its first one; Envoy cannot tell which it was"),
    Difference("envoy", Reason.INVALID_HOST.value, legacy_ipv4,
               "with every name allowed, Envoy refuses a legacy IPv4 spelling, which it "
               "cannot read (resolving it as a name would send it to DNS)"),
)
# Envoy denies where the policy allows: stricter, never looser.
STRICTER: tuple[Difference, ...] = (
    Difference("envoy", Reason.INVALID_HOST.value, legacy_ipv4,
               "with every name allowed, a legacy IPv4 spelling of an allowed address is "
               "refused (allowlisted literals are matched in every spelling)"),
)


def _documented(table: tuple[Difference, ...], backend: str, reason: str | None,
                target: Target, policy: Policy) -> Difference | None:
    expected = reference(policy, target)
    return next((d for d in table if d.backend == backend and d.reason == reason and
                 d.applies(target, policy, expected)), None)


def answers(host: str) -> tuple[str, ...]:
    """What the simulated internet's DNS answers for a name (empty: NXDOMAIN)."""
    name = host.lower().rstrip(".")
    if name == REBIND_NAME:
        return REBIND_ANSWERS
    return ANSWERS.get(name, ())


# The ports the simulated internet serves on (tests/support/fakenet_server.py).
SERVED_PORTS = frozenset({80, 443, 8080})


def serves(target: Target) -> bool:
    """Whether a server of the simulated internet answers at the target."""
    return target.port in SERVED_PORTS and bool(destination_addresses(target.host))


def destination_addresses(host: str) -> set[str]:
    """Every address a request for `host` may be served from, as the server reports it."""
    ip = parse_ip(host)
    if ip is None:
        return set(answers(host))
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return {str(ip), *([str(mapped)] if mapped else [])}


def reference(policy: Policy, target: Target) -> Decision:
    """Policy.decide on the target, over every address its name answers (a proxy may dial
    any of them); IP literals and names that do not resolve are decided without one."""
    return policy.decide_answers(target.host, target.port, answers(target.host))


_DENIAL = re.compile(r"^netfence: denied [^\n]*?: ([a-z_]+)(?: |;|$)", re.M)


def observe(result: dict[str, Any], index: int = 0) -> Observed:
    """Classify the index-th response of a driver result."""
    responses = result.get("responses") or []
    if index >= len(responses):
        return Observed(Outcome.REJECTED, detail=f"no response ({result.get('error')})")
    response = responses[index]
    status = response.get("status")
    body = response.get("body", "")
    headers = response.get("headers", {})
    if status == 403:
        match = _DENIAL.search(body)
        if match:
            return Observed(Outcome.DENIED, reason=match.group(1), detail=body.strip())
        return Observed(Outcome.REJECTED, detail=f"403 without a netfence reason: {body!r}")
    if status is not None and (200 <= status < 300 or status == 101):
        tunnel = result.get("tunnel")
        if result.get("kind") == "connect" or tunnel is not None:
            tunnel = tunnel or {}
            server = tunnel.get("headers", {}).get("x-fakenet-server")
            return Observed(Outcome.ALLOWED, server=server, detail=str(tunnel)[:200])
        server = headers.get("x-fakenet-server")
        return Observed(Outcome.ALLOWED, server=server, detail=body[:200])
    if status is not None and status >= 500:
        return Observed(Outcome.PASSED, detail=f"{status} {body[:200]!r}")
    return Observed(Outcome.REJECTED, detail=f"{status} {body[:200]!r}")


@dataclass(frozen=True)
class Verdict:
    ok: bool
    bypass: bool
    message: str
    # Which documented rule accepted a difference ("" when the outcome is the reference).
    rule: str = ""


def judge(backend: str, policy: Policy, case: Case, index: int, seen: Observed,
          earlier: Sequence[Observed] = ()) -> Verdict:
    """Compare one observed response with the reference; see the module docstring."""
    target = case.targets[index] if index < len(case.targets) else None
    expected = reference(policy, target) if target is not None else None
    where = f"{backend} {case.id}[{index}]"
    passed = seen.outcome in (Outcome.ALLOWED, Outcome.PASSED)
    if passed:
        read = target if expected is not None and expected.allowed else None
        rule = ""
        if read is None and case.lenient is not None and \
                reference(policy, case.lenient).allowed:
            read, rule = case.lenient, "lenient reading"
        if read is None:
            why = expected.describe() if expected else "a malformed request"
            return Verdict(False, True, f"BYPASS {where}: {seen.outcome.value} "
                                        f"({seen.detail}) where the policy says {why}")
        if seen.server is not None:
            # The address actually dialed (the server that answered) must be the
            # destination's own (its literal, or one of its DNS answers: not the server of
            # a Host header or of userinfo) and one the policy allows for it.
            dialed = seen.server.rsplit(":", 1)[0].strip("[]")
            if dialed not in destination_addresses(read.host):
                return Verdict(False, True, f"BYPASS {where}: answered by {seen.server}, "
                                            f"which is not {read.host}")
            decision = policy.decide(read.host, read.port, dialed)
            if not decision.allowed:
                return Verdict(False, True, f"BYPASS {where}: answered by {seen.server}, "
                                            f"which the policy denies: {decision.describe()}")
        return Verdict(True, False, "", rule)
    # The backend denied or refused.
    if seen.outcome is Outcome.REJECTED and "no response" in seen.detail and \
            case.after_denial_may_close and any(o.outcome is not Outcome.ALLOWED
                                                for o in earlier):
        return Verdict(True, False, "", "closed after a denial")
    if expected is None:
        return Verdict(True, False, "", "malformed request refused")
    if seen.outcome is Outcome.REJECTED and case.closed_is_denial:
        if not expected.allowed:
            return Verdict(True, False, "", "closed: a TLS denial has no words")
        if not serves(target):
            return Verdict(True, False, "", "closed: nothing answers there")
    if seen.outcome is Outcome.REJECTED:
        # A parser refusing what the policy cannot read as a host either, or a form
        # outside the grammar every backend must accept: a refusal dials nothing.
        if not case.form_ok or expected.reason is Reason.INVALID_HOST:
            return Verdict(True, False, "", f"form refused ({seen.detail[:40]})")
        return Verdict(False, False, f"{where}: refused ({seen.detail}) a well-formed request "
                                     f"the policy {'allows' if expected.allowed else 'denies'}"
                                     f" ({expected.describe()})")
    assert target is not None
    if expected.allowed:
        if _documented(STRICTER, backend, seen.reason, target, policy):
            return Verdict(True, False, "", f"stricter: {seen.reason}")
        if not case.form_ok:
            return Verdict(True, False, "", f"form denied: {seen.reason}")
        return Verdict(False, False, f"{where}: denied {seen.reason} ({seen.detail}) where the "
                                     f"policy allows ({expected.describe()})")
    if seen.reason == expected.reason.value:
        return Verdict(True, False, "")
    if _documented(SAFE_DIFFERENCES, backend, seen.reason, target, policy):
        return Verdict(True, False, "", f"reason {seen.reason} for {expected.reason.value}")
    if not case.form_ok:
        return Verdict(True, False, "", f"form: {seen.reason} for {expected.reason.value}")
    return Verdict(False, False, f"{where}: denied as {seen.reason} ({seen.detail}) where the "
                                 f"policy says {expected.describe()}")
