"""The transparent listener's chains chosen by one `filter_chain_matcher` instead of each
chain's `filter_chain_match`, with every server name listed once.

_transparent lays the chains out with `filter_chain_match` (destination port, then the
longest destination prefix, then server name, transport, application protocol; no level
ever goes back to a less specific one). Envoy builds a nested map per server name under
each port and prefix that lists it: with 100,000 allowed names on two allowed ports plus
the others, Envoy took 14 s and 640 MiB to start. The matcher decides the same: it
classifies the server name first (one ServerNameMatcher holding each name list once), then
walks port, prefix, transport and application protocol as the legacy match does, and names
the chain (start: 0.3 s, 1.5 MiB more than without the names).

Every branch ends in an action, so no matcher ever falls back to a less specific entry
(ServerNameMatcher and IPMatcher would try one on a failed branch; the legacy match never
does). Where the legacy match finds no chain, the action names a copy of the default
chain: Envoy 1.40 closes a connection whose action names no chain (flag NR) instead of
taking the default chain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from netfence.backends.envoy._names import Json

_INPUTS = "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3."
SERVER_NAME_MATCHER_TYPE = "type.googleapis.com/xds.type.matcher.v3.ServerNameMatcher"
IP_MATCHER_TYPE = "type.googleapis.com/xds.type.matcher.v3.IPMatcher"
STRING_VALUE_TYPE = "type.googleapis.com/google.protobuf.StringValue"
# An action naming no chain, until with_matcher names the default chain's copy instead.
NO_CHAIN = "netfence_no_chain"

Chains = Sequence[Json]


def _input(name: str) -> Json:
    return {"name": name, "typed_config": {"@type": _INPUTS + name}}


def _action(chain: str) -> Json:
    return {"action": {"name": "filter_chain", "typed_config": {
        "@type": STRING_VALUE_TYPE, "value": chain}}}


def _match(chain: Json) -> Json:
    found: Json = chain.get("filter_chain_match", {})
    return found


def _exact(input_name: str, table: dict[str, Json], otherwise: Json) -> Json:
    """On `input_name`'s value: its entry in `table`, else `otherwise`."""
    return {"matcher": {
        "matcher_tree": {"input": _input(input_name), "exact_match_map": {"map": table}},
        "on_no_match": otherwise}}


def filter_chain_matcher(chains: Chains) -> Json:
    """The matcher choosing among `chains` (named, with filter_chain_match) as the legacy
    match would. ValueError for a layout it cannot express (or Envoy would refuse)."""
    names = list(dict.fromkeys(tuple(_match(c)["server_names"]) for c in chains
                               if "server_names" in _match(c)))
    seen: set[str] = set()
    for group in names:
        if seen & set(group):
            raise ValueError(f"a server name in two lists: {sorted(seen & set(group))[:3]}")
        seen |= set(group)
    if not names:
        top = _by_port(chains, None)
    else:
        top = {"matcher": {
            "matcher_tree": {
                "input": _input("ServerNameInput"),
                "custom_match": {"name": "server_names", "typed_config": {
                    "@type": SERVER_NAME_MATCHER_TYPE,
                    "domain_matchers": [{"domains": list(g), "on_match": _by_port(chains, g)}
                                        for g in names]}},
            },
            # No server name, or one in no list.
            "on_no_match": _by_port(chains, None),
        }}
    if "matcher" not in top:  # no level to decide: a port no connection has, then the chain
        top = _exact("DestinationPortInput", {"0": _action(NO_CHAIN)}, top)
    matcher: Json = top["matcher"]
    return matcher


def _by_port(chains: Chains, sni: tuple[str, ...] | None) -> Json:
    ports = sorted({_match(c)["destination_port"] for c in chains
                    if "destination_port" in _match(c)})
    rest = [c for c in chains if "destination_port" not in _match(c)]
    if not ports:
        return _by_prefix(rest, sni)
    table = {str(p): _by_prefix([c for c in chains if _match(c).get("destination_port") == p],
                                sni) for p in ports}
    return _exact("DestinationPortInput", table, _by_prefix(rest, sni))


def _ranges(chain: Json) -> list[tuple[str, int]]:
    return [(r["address_prefix"], int(r["prefix_len"]))
            for r in _match(chain).get("prefix_ranges", ())]


def _by_prefix(level: Chains, sni: tuple[str, ...] | None) -> Json:
    """The longest destination prefix of the level's chains, then the rest of the match;
    chains without prefixes take any address no prefix holds."""
    holders: dict[tuple[str, int], list[int]] = {}
    for i, chain in enumerate(level):
        for cidr in _ranges(chain):
            if cidr[1] == 0:
                raise ValueError(f"{chain['name']}: a /0 prefix is what no prefix means")
            holders.setdefault(cidr, []).append(i)
    rest = [c for c in level if not _ranges(c)]
    if not holders:
        return _by_name(rest, sni)
    # One range matcher per set of chains: allowing every name, hundreds of prefixes share
    # the same chains.
    groups: dict[tuple[int, ...], list[tuple[str, int]]] = {}
    for cidr, chain_ids in holders.items():
        groups.setdefault(tuple(chain_ids), []).append(cidr)
    matchers = [{
        "ranges": [{"address_prefix": a, "prefix_len": n} for a, n in cidrs],
        "on_match": _by_name([level[i] for i in chain_ids], sni),
        # Only the longest prefix holding the address counts, whatever its branch finds.
        "exclusive": True,
    } for chain_ids, cidrs in groups.items()]
    return {"matcher": {
        "matcher_tree": {
            "input": _input("DestinationIPInput"),
            "custom_match": {"name": "prefixes", "typed_config": {
                "@type": IP_MATCHER_TYPE, "range_matchers": matchers}},
        },
        "on_no_match": _by_name(rest, sni),
    }}


def _by_name(level: Chains, sni: tuple[str, ...] | None) -> Json:
    """The chains of the server-name class `sni` at this level, else those without names.
    Each level holding a named chain holds every list, so the class the ServerNameMatcher
    chose (most specific name over all lists) is the level's own most specific match."""
    # The lists are disjoint (filter_chain_matcher checked): a list is known by its first
    # name (comparing whole lists took 0.2 s with 100,000 names in buckets).
    listed = {_match(c)["server_names"][0] for c in level if "server_names" in _match(c)}
    if listed and sni is not None and sni[0] not in listed:
        raise ValueError(f"a level without the server names of {sni[:3]}")
    named = [c for c in level if sni is not None
             and _match(c).get("server_names", ("",))[0] == sni[0]]
    return _by_transport(named or [c for c in level if "server_names" not in _match(c)])


def _by_key(level: Chains, field: str, input_name: str, keys: Callable[[Json], list[str]],
            then: Callable[[Chains], Json]) -> Json:
    """Chains whose `field` holds the connection's value, else those without it."""
    if not any(field in _match(c) for c in level):
        return then(level)
    table: dict[str, list[Json]] = {}
    for chain in level:
        for key in keys(chain):
            table.setdefault(key, []).append(chain)
    rest = [c for c in level if field not in _match(c)]
    return _exact(input_name, {k: then(v) for k, v in table.items()}, then(rest))


def _by_transport(level: Chains) -> Json:
    return _by_key(level, "transport_protocol", "TransportProtocolInput",
                   lambda c: [_match(c)["transport_protocol"]] if "transport_protocol" in
                   _match(c) else [], _by_protocol)


def _by_protocol(level: Chains) -> Json:
    # The input reads a connection's protocols as 'p1','p2'; http_inspector reports one,
    # the only case a chain here matches on (TLS chains name no application protocol).
    return _by_key(level, "application_protocols", "ApplicationProtocolInput",
                   lambda c: [f"'{p}'" for p in _match(c).get("application_protocols", ())],
                   _leaf)


def _leaf(level: Chains) -> Json:
    if len(level) > 1:
        raise ValueError(f"chains {[c['name'] for c in level]} match alike")
    return _action(level[0]["name"] if level else NO_CHAIN)


def with_matcher(listener: Json, merge: Callable[[str], str | None] = lambda _: None) -> Json:
    """The listener with its chains chosen by a filter_chain_matcher: the chains lose
    their filter_chain_match (Envoy ignores it beside a matcher). `merge` names, for a
    chain, the one chain it joins (or None): chains with identical filters whose names
    do not matter become one, so their configuration is built once."""
    chains = listener["filter_chains"]
    matcher = filter_chain_matcher(chains)
    default = listener.get("default_filter_chain", {}).get("name")
    kept: dict[str, Json] = {}
    renamed: dict[str, str] = {}
    for chain in chains:
        name = chain["name"]
        target = merge(name) or name
        bare = {k: v for k, v in chain.items() if k not in ("filter_chain_match", "name")}
        if target in kept and kept[target] != {"name": target, **bare}:
            raise ValueError(f"{name} joins {target} with other filters")
        kept.setdefault(target, {"name": target, **bare})
        renamed[name] = target
    for node in _actions(matcher):
        node["value"] = renamed.get(node["value"], node["value"])
    out = list(kept.values())
    if default and any(n["value"] == NO_CHAIN for n in _actions(matcher)):
        for node in _actions(matcher):
            if node["value"] == NO_CHAIN:
                node["value"] = default
        out.append(listener["default_filter_chain"])
    return {**listener, "filter_chains": out, "filter_chain_matcher": matcher}


def _actions(node: object) -> list[Json]:
    """The StringValue of every action in a matcher (not looking through the lists of
    server names: 100,000 strings)."""
    found: list[Json] = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("@type") == STRING_VALUE_TYPE:
                found.append(item)
            stack.extend(v for k, v in item.items() if k != "domains")
        elif isinstance(item, list):
            stack.extend(item)
    return found
