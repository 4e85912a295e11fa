"""The transparent listener: connections the workload made to any address, redirected to
the fence with their original destination, decided by the name they carry.

TLS by its SNI, plain HTTP by its Host header, on the port the client dialed; then the
proxy path's stages: the name, the port, the address the fence itself resolves and dials.
The fence dials the name, never the address the client dialed. A connection without a
name (TLS without SNI, neither TLS nor HTTP) goes through only to an IP literal that the
policy allows, at the address it dialed (_destinations).

Envoy picks a filter chain by destination port, then destination address, then SNI, then
transport and application protocol, and never backtracks: once a chain matched at one
level, the less specific chains of that level are out of reach. So each port's chains and
each address set's chains are complete on their own, every set named as _chains says.
Each refusal says the reason Policy.decide gives: the name stage first, then the port,
then the address.

The chains are laid out with that filter_chain_match (layout_listener); the bootstrap's
listener picks them by a filter_chain_matcher that decides alike with each allowed name
listed once (_matcher), and its HTTP chains are one: they differ in nothing, their routes
read the dialed port.

The chains for allowed names are split by allowlist entry (sni_groups), each named by it:
when an update adds or drops an entry, only its chains are added or removed, so Envoy keeps
every other TLS connection and drains those to a dropped name. Their filters do not depend
on the names (the matcher holds those), so the chains of one port, in every address scope,
are one chain per entry.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from netfence.backends.base import Placement
from netfence.backends.envoy import _transparent_filters as filters
from netfence.backends.envoy._chains import (
    ANY_PORT,
    HTTP,
    HTTP_PORT_NOT_ALLOWED,
    HTTP_ROLES,
    LITERAL,
    NO_NAME,
    RAW_PASS,
    TLS_ALLOWED,
    TLS_DENIED_NAME,
    TLS_NOT_ALLOWED,
    TLS_PASS,
    TLS_PORT_NOT_ALLOWED,
    chain_name,
    split_chain_name,
)
from netfence.backends.envoy._destinations import destinations
from netfence.backends.envoy._listeners import Part, dfp_cluster
from netfence.backends.envoy._log import EGRESS_LOG_NAME, TRANSPARENT_LOG_FORMAT, access_log
from netfence.backends.envoy._matcher import with_matcher
from netfence.backends.envoy._names import (
    HTTP_INSPECTOR_TYPE,
    ORIGINAL_DST_FILTER_TYPE,
    PROXY_PROTOCOL_FILTER_TYPE,
    TLS_INSPECTOR_TYPE,
    Json,
)
from netfence.backends.envoy._routes import allowed_name_domains, denied_domains
from netfence.backends.relay import socket_address
from netfence.policy import Policy, Reason
from netfence.policy.denied import IPNetwork

LISTENER_NAME = "transparent"
# A server-speaks-first protocol sends nothing to inspect: after this it is plain TCP.
LISTENER_FILTERS_TIMEOUT = "3s"
# What http_inspector reports for plain HTTP.
HTTP_ALPN = ("http/1.1", "http/1.0", "h2c")

# Up to this many allowlist entries with names, each has TLS chains of its own; beyond, they
# share SNI_BUCKETS chains by a hash of the name: every chain costs Envoy about 58 KiB
# (1.40, allocated; one per entry and allowed port: 64 entries on 80 and 443 took 7.3 MiB
# more than one chain per port), and 100,000 names must still start. A bucket's name
# carries a digest of its names, so a change replaces its bucket's chains only (their
# connections to names still allowed drain too).
SPLIT_MAX = 32
SNI_BUCKETS = 16

_RAW: dict[str, object] = {"transport_protocol": "raw_buffer"}
_PLAIN_HTTP: dict[str, object] = {"transport_protocol": "raw_buffer",
                                  "application_protocols": list(HTTP_ALPN)}


def _tls(server_names: Sequence[str] | None = None) -> dict[str, object]:
    """TLS; with server_names, those only (never an empty list: that matches any SNI)."""
    match: dict[str, object] = {}
    if server_names is not None:
        match["server_names"] = list(server_names)
    match["transport_protocol"] = "tls"
    return match


def sni_groups(domains: Sequence[str]) -> list[tuple[str, list[str]]]:
    """The allowed server names in groups that get chains of their own, each with its
    stable name: one per allowlist entry (`x` holds x and *.x), or by buckets."""
    # An entry has at most two domains: more than twice SPLIT_MAX are buckets for sure
    # (not grouped first: that took 0.1 s with 100,000 names).
    if len(domains) <= 2 * SPLIT_MAX:
        entries: dict[str, list[str]] = {}
        for domain in domains:
            entries.setdefault(domain.removeprefix("*."), []).append(domain)
        if len(entries) <= SPLIT_MAX:
            return list(entries.items())
    buckets: dict[int, list[str]] = {}
    digests = [0] * SNI_BUCKETS
    crc = zlib.crc32
    for domain in domains:
        index = crc(domain.removeprefix("*.").encode()) % SNI_BUCKETS
        buckets.setdefault(index, []).append(domain)
        # What the bucket holds, in any order (a sum of each name's own checksum).
        digests[index] = (digests[index] + crc(domain.encode(), 1)) & 0xFFFFFFFF
    return [(f"~{index}.{digests[index]:08x}", names) for index, names in sorted(buckets.items())]


@dataclass(frozen=True)
class _Scope:
    """Where a set of chains applies: the dialed port (None: any), the destination
    prefixes (none: any address), and the chains' names (`name` is their SCOPE, `tag`
    their @PORT)."""

    port: int | None
    tag: int | str | None
    prefixes: tuple[IPNetwork, ...] = ()
    name: str = ""

    def chain(self, role: str, chain_filters: list[Json], **match: object) -> Json:
        """A filter chain; `match` adds to the port and prefixes, in Envoy's order."""
        found: Json = {}
        if self.port is not None:
            found["destination_port"] = self.port
        if self.prefixes:
            found["prefix_ranges"] = [
                {"address_prefix": str(n.network_address), "prefix_len": n.prefixlen}
                for n in self.prefixes
            ]
        found.update(match)
        return {"name": chain_name(role, self.name, self.tag), "filter_chain_match": found,
                "filters": chain_filters}

    def denied_names(self) -> Json:
        return self.chain(TLS_DENIED_NAME, filters.refuse(), **_tls(denied_domains()))

    def per_group(self, role: str, chain_filters: list[Json],
                  groups: list[tuple[str, list[str]]]) -> list[Json]:
        """One TLS chain per group of allowed server names."""
        return [{**self.chain(role, chain_filters, **_tls(names)),
                 "name": chain_name(role, self.name, self.tag, key)} for key, names in groups]


class _Layout:
    """The filter chains for one policy and placement."""

    def __init__(self, policy: Policy, placement: Placement) -> None:
        self.policy = policy
        self.placement = placement
        self.destinations = destinations(policy)
        # The allowed names as server_names (an SNI never holds an IP literal). Unused
        # when every name is allowed: server_names cannot say "any".
        self.sni_groups = sni_groups(allowed_name_domains(policy))
        self._http_filters: list[Json] | None = None

    def chains(self) -> list[Json]:
        """Per allowed port its complete set, then the chains of every other port; or one
        port-agnostic set when every port is allowed."""
        if self.policy.any_port:
            return self._allowed_port(None)
        out: list[Json] = []
        if self.policy.allow_all or self.policy.hosts:  # else nothing passes on any port
            for port in sorted(set(self.policy.ports)):
                out += self._allowed_port(port)
        return out + self._other_ports()

    def default_chain(self) -> Json:
        """Whatever no chain took: neither TLS nor HTTP, to an address not allowlisted.
        With every name allowed but not every port: to a port not allowed, since every
        address has chains on the allowed ones (LITERAL: an allowlisted address)."""
        every_name = self.policy.allow_all and not self.policy.any_port
        return {"name": chain_name(NO_NAME, LITERAL if every_name else ""),
                "filters": filters.refuse()}

    def _allowed_port(self, port: int | None) -> list[Json]:
        tag = ANY_PORT if port is None else port
        out: list[Json] = []
        if self.destinations.allowed:
            out += self._literal(_Scope(port, tag, self.destinations.allowed, LITERAL))
        for reason, nets in self.destinations.denied:
            out += self._denied_address(_Scope(port, tag, nets, reason.value), reason)
        if not self.policy.allow_all:  # with every name allowed, every address is above
            out += self._names(_Scope(port, tag))
        return out

    def _dial(self, scope: _Scope, no_sni: Reason | None = None) -> list[Json]:
        return filters.dial_sni(self.policy, self.placement, scope.port, no_sni)

    def _http(self) -> list[Json]:
        # The same for every HTTP chain (the routes read the dialed port): with_matcher
        # keeps one, so the allowed names are listed once.
        if self._http_filters is None:
            self._http_filters = filters.http(self.policy, self.placement)
        return self._http_filters

    def _literal(self, scope: _Scope) -> list[Json]:
        """An allowed literal: an allowed name is dialed by name; no name goes to the
        address dialed."""
        out = [scope.denied_names()]
        if self.policy.allow_all:
            # Any SNI is allowed, and no server_names can say so: one chain for TLS with
            # an SNI (dialed by name) and without (passed through).
            tls = filters.dial_sni(self.policy, self.placement, scope.port, None,
                                   pass_no_sni=True)
            out.append(scope.chain(TLS_PASS, tls, **_tls()))
        else:
            out += scope.per_group(TLS_ALLOWED, self._dial(scope), self.sni_groups)
        out.append(scope.chain(HTTP, self._http(), **_PLAIN_HTTP))
        if not self.policy.allow_all:
            out.append(scope.chain(TLS_PASS, filters.pass_tls(), **_tls()))
        # Its transport named: once a raw_buffer chain exists (HTTP), a chain without a
        # transport is never reached.
        out.append(scope.chain(RAW_PASS, filters.pass_raw(), **_RAW))
        return out

    def _denied_address(self, scope: _Scope, reason: Reason) -> list[Json]:
        """Addresses the address stage denies: a name is still dialed by name (an allowed
        name sent to a denied address reaches the allowed host); no name is refused."""
        out = [scope.denied_names()]
        if self.policy.allow_all:
            # No server_names: this chain also takes TLS without SNI, refused by reason.
            out.append(scope.chain(TLS_ALLOWED, self._dial(scope, reason), **_tls()))
        else:
            out += scope.per_group(TLS_ALLOWED, self._dial(scope), self.sni_groups)
        out.append(scope.chain(HTTP, self._http(), **_PLAIN_HTTP))
        if not self.policy.allow_all:
            out.append(scope.chain(TLS_NOT_ALLOWED, filters.refuse(), **_tls()))
        out.append(scope.chain(NO_NAME, filters.refuse(), **_RAW))
        return out

    def _names(self, scope: _Scope) -> list[Json]:
        """Any other address: only names pass (the rest: the default chain)."""
        out = [scope.denied_names()]
        out += scope.per_group(TLS_ALLOWED, self._dial(scope), self.sni_groups)
        out.append(scope.chain(HTTP, self._http(), **_PLAIN_HTTP))
        out.append(scope.chain(TLS_NOT_ALLOWED, filters.refuse(), **_tls()))
        return out

    def _other_ports(self) -> list[Json]:
        """Ports the policy does not allow: the name stage comes first, so a name not
        allowed is not_allowlisted, an allowed one (an allowlisted literal) port_not_allowed."""
        everywhere = _Scope(None, None)
        if self.policy.allow_all:
            return [everywhere.denied_names(),
                    everywhere.chain(TLS_PORT_NOT_ALLOWED, filters.refuse(), **_tls()),
                    everywhere.chain(HTTP_PORT_NOT_ALLOWED, self._http(),
                                     **_PLAIN_HTTP)]
        literals = self.destinations.every
        scopes = [_Scope(None, None, literals, LITERAL)] if literals else []
        out: list[Json] = []
        for scope in [*scopes, everywhere]:
            out.append(scope.denied_names())
            out += scope.per_group(TLS_PORT_NOT_ALLOWED, filters.refuse(), self.sni_groups)
            out.append(scope.chain(HTTP_PORT_NOT_ALLOWED, self._http(),
                                   **_PLAIN_HTTP))
            out.append(scope.chain(TLS_NOT_ALLOWED, filters.refuse(), **_tls()))
            if scope.prefixes:
                out.append(scope.chain(NO_NAME, filters.refuse(), **_RAW))
        return out


def layout_listener(policy: Policy, placement: Placement) -> Json:
    """The listener with each chain's filter_chain_match: the layout that the bootstrap's
    filter_chain_matcher decides alike (_matcher)."""
    first, *more = placement.transparent_listen
    listener: Json = {"name": LISTENER_NAME, "address": socket_address(first)}
    if more:
        listener["additional_addresses"] = [{"address": socket_address(e)} for e in more]
    layout = _Layout(policy, placement)
    listener.update({
        "listener_filters": [
            _destination_filter(placement),
            {"name": "envoy.filters.listener.tls_inspector",
             "typed_config": {"@type": TLS_INSPECTOR_TYPE}},
            {"name": "envoy.filters.listener.http_inspector",
             "typed_config": {"@type": HTTP_INSPECTOR_TYPE}},
        ],
        "listener_filters_timeout": LISTENER_FILTERS_TIMEOUT,
        "continue_on_listener_filters_timeout": True,
        "filter_chains": layout.chains(),
        "default_filter_chain": layout.default_chain(),
        # One line per connection, also one no chain took; the egress log, so that the
        # decision log is one file in time order (HTTP chains log each request too).
        "access_log": [access_log(placement.state_dir / EGRESS_LOG_NAME,
                                  TRANSPARENT_LOG_FORMAT)],
    })
    return listener


def _destination_filter(placement: Placement) -> Json:
    """The listener filter that makes the dialed address the connection's local address,
    which everything after it reads (chain matching, the original_dst cluster, the log)."""
    if not placement.transparent_proxy_protocol:
        # Redirected in the listener's own namespace: the kernel knows (SO_ORIGINAL_DST).
        return {"name": "envoy.filters.listener.original_dst",
                "typed_config": {"@type": ORIGINAL_DST_FILTER_TYPE}}
    # Relayed from another namespace: the relay states it in a PROXY v2 header, first.
    # Bytes that are not one (v1 text too: the relay never sends it) close the connection
    # at once. One that never completes a header goes on at LISTENER_FILTERS_TIMEOUT like
    # any silent connection (server-first protocols need that), its destination still the
    # listener's own address (loopback), which no chain lets through (verified).
    return {"name": "envoy.filters.listener.proxy_protocol",
            "typed_config": {"@type": PROXY_PROTOCOL_FILTER_TYPE,
                             "allow_requests_without_proxy_protocol": False,
                             "disallowed_versions": ["V1"]}}


def _merged(name: str) -> str | None:
    """HTTP chains are all alike (their routes decide): one chain, `http`. A group's
    chains for allowed names are alike in every address scope (the name is dialed
    whatever the address; the log needs no scope for them): one per port and group. The
    groups' refusals on other ports are one chain again: closed at once, they need no
    draining. The others keep their names, which the decision log reads."""
    scope_role = split_chain_name(name)
    if scope_role is None:
        return None
    role = scope_role[1]
    if role in HTTP_ROLES:
        return chain_name(HTTP)
    base, _, group = name.partition("#")
    if not group:
        return None
    if role == TLS_ALLOWED:
        port = base.partition("@")[2] or None
        return chain_name(TLS_ALLOWED, "", port, group)
    return base


def transparent_listener(policy: Policy, placement: Placement) -> Json:
    return with_matcher(layout_listener(policy, placement), _merged)


def transparent(policy: Policy, placement: Placement) -> Part:
    """The listener redirected connections land at, and the clusters it dials out through."""
    if not placement.transparent_listen:
        raise ValueError("a transparent listener needs a transparent_listen endpoint")
    return Part((transparent_listener(policy, placement),),
                (dfp_cluster(placement), filters.original_dst_cluster()))
