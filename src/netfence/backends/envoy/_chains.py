"""What a transparent filter chain's name says: the listener builds chains by these names,
and the decision log reads the decision back from the name of the chain that took a
connection (%FILTER_CHAIN_NAME%).

A name is [SCOPE_]ROLE[@PORT][#GROUP]. SCOPE is the destination the chain matched: none (any
address), `literal` (an allowlisted IP literal; on an allowed port, one the address stage
lets through) or an address Reason (addresses that stage denies, by reason: the log then
names the reason the dialed address alone would get). ROLE is what the chain does. PORT is
the dialed port, `any` on a port-agnostic chain (every port allowed), absent on the chains
for the ports the policy does not allow. GROUP names the allowed server names a chain
for allowed names takes (one allowlist entry, or a bucket of them: _transparent.sni_groups):
such chains are split so that a policy change replaces only the chains of the names it adds
or drops (Envoy keeps the connections of a chain whose message did not change, and drains
those of one removed). The decision log reads only SCOPE and ROLE.
"""

from __future__ import annotations

from netfence.policy import ADDRESS_CLASS_ORDER, Reason

LITERAL = "literal"
ANY_PORT = "any"

# Roles. TLS: decided by the SNI; HTTP: by the Host header (its HCM logs the request).
TLS_ALLOWED = "tls_allowed"  # an allowed SNI: dial that name (address stage on the way)
# To the original destination (an allowed literal) without an SNI; with one, refused, or
# dialed by name when every name is allowed (no match tells the two apart then).
TLS_PASS = "tls"
RAW_PASS = "raw"  # to the original destination: neither TLS nor HTTP
HTTP = "http"
HTTP_PORT_NOT_ALLOWED = "http_port_not_allowed"
TLS_DENIED_NAME = "tls_denied_name"
TLS_PORT_NOT_ALLOWED = "tls_port_not_allowed"
TLS_NOT_ALLOWED = "tls_not_allowed"  # an SNI not allowed, or none to a refused address
NO_NAME = "no_name"  # neither TLS nor HTTP, to a refused address

HTTP_ROLES = frozenset({HTTP, HTTP_PORT_NOT_ALLOWED})
_ROLES = frozenset({TLS_ALLOWED, TLS_PASS, RAW_PASS, TLS_DENIED_NAME, TLS_PORT_NOT_ALLOWED,
                    TLS_NOT_ALLOWED, NO_NAME}) | HTTP_ROLES
# A refusal whatever the connection carries (a TLS chain these match has an SNI).
_FIXED: dict[str, Reason] = {
    TLS_DENIED_NAME: Reason.DENIED_NAME,
    TLS_PORT_NOT_ALLOWED: Reason.PORT_NOT_ALLOWED,
}
_ADDRESS_SCOPES = {r.value: r for r in ADDRESS_CLASS_ORDER}


def chain_name(role: str, scope: str = "", port: int | str | None = None,
               group: str | None = None) -> str:
    if role not in _ROLES or (scope and scope != LITERAL and scope not in _ADDRESS_SCOPES):
        raise ValueError(f"no transparent chain {scope!r} {role!r}")
    name = f"{scope}_{role}" if scope else role
    name = name if port is None else f"{name}@{port}"
    return name if group is None else f"{name}#{group}"


def split_chain_name(name: str) -> tuple[str, str] | None:
    """(scope, role) of a chain name; None for a name no transparent chain has ("-" when
    the connection ended before any chain took it)."""
    base = name.partition("#")[0].partition("@")[0]
    for scope in (LITERAL, *_ADDRESS_SCOPES):
        if base.startswith(scope + "_") and base[len(scope) + 1:] in _ROLES:
            return scope, base[len(scope) + 1:]
    return ("", base) if base in _ROLES else None


def refusal_reason(scope: str, role: str, named: bool) -> Reason | None:
    """The reason a chain refuses with; None where its filters decide (they allow, or
    their RBAC names the reason in the connection's termination details).

    A refusal of a connection without a name is the original destination's: not
    allowlisted (no scope), allowlisted on a port not allowed (`literal`: its refusal
    chains exist only there), or denied by the address stage (the scope is the reason).
    """
    if role in _FIXED:
        return _FIXED[role]
    if role == TLS_NOT_ALLOWED and named:
        return Reason.NOT_ALLOWLISTED
    if role not in (TLS_NOT_ALLOWED, NO_NAME):
        return None
    if scope == LITERAL:
        return Reason.PORT_NOT_ALLOWED
    return _ADDRESS_SCOPES.get(scope, Reason.NOT_ALLOWLISTED)


def is_tls(role: str) -> bool:
    return role.startswith("tls")
