"""backends/envoy/_matcher.py: the transparent listener's filter_chain_matcher picks, for
every connection, the chain that each chain's filter_chain_match (the layout) would have
picked; and each allowed name is listed once per structure, whatever the ports."""

from __future__ import annotations

import json

import pytest

from netfence.backends.envoy._chains import HTTP, HTTP_ROLES, TLS_ALLOWED, split_chain_name
from netfence.backends.envoy._matcher import NO_CHAIN, filter_chain_matcher, with_matcher
from netfence.backends.envoy._transparent import layout_listener
from netfence.policy import Policy
from tests.support.envoy_config import (
    Json,
    config,
    listener,
    placement,
    policy_for,
    select_chain,
    select_legacy_chain,
)
from tests.unit.backends.envoy.test_transparent import ADDRESSES, NAMES, POLICIES, PORTS


def _joined(name: str) -> str:
    """The chain of the bootstrap a layout chain became: the HTTP chains are one; a
    group's chains for allowed names are one per port whatever the address scope; the
    groups' refusals are one again."""
    scope_role = split_chain_name(name)
    if scope_role is not None and scope_role[1] in HTTP_ROLES:
        return HTTP
    base, _, group = name.partition("#")
    if scope_role is not None and scope_role[1] == TLS_ALLOWED and group:
        return f"{TLS_ALLOWED}@{base.partition('@')[2]}#{group}"
    return base


@pytest.mark.parametrize("kind", sorted(POLICIES))
def test_the_matcher_picks_the_chain_the_layout_picks(kind: str) -> None:
    policy = POLICIES[kind]
    laid_out = layout_listener(policy, placement(transparent=True))
    final = listener(config(policy, transparent=True), "transparent")
    assert "filter_chain_match" not in json.dumps(final["filter_chains"])
    for ip in ADDRESSES:
        for port in PORTS:
            connections: list[Json] = [{"sni": name} for name in (*NAMES, "")]
            connections += [{"transport": "raw_buffer"},
                            {"transport": "raw_buffer", "alpn": ("http/1.1",)},
                            {"transport": "raw_buffer", "alpn": ("h2c",)},
                            {"transport": "tls", "alpn": ("h2", "http/1.1")}]
            for how in connections:
                kwargs = {"transport": "tls", **how}
                want = select_legacy_chain(laid_out, ip, port, **kwargs)["name"]
                got = select_chain(final, ip, port, **kwargs)["name"]
                assert got == _joined(want), (ip, port, how)


def test_every_http_chain_is_one() -> None:
    final = listener(config(POLICIES["allowlist"], transparent=True), "transparent")
    roles = [split_chain_name(c["name"]) for c in final["filter_chains"]]
    assert [r for r in roles if r is not None and r[1] in HTTP_ROLES] == [("", HTTP)]


def _policy(count: int, ports: list[int]) -> Policy:
    hosts = [f"n{i}.example.test" for i in range(count)]
    return policy_for({"outbound": {"allow_host": hosts, "allow_port": ports}})


@pytest.mark.parametrize("ports", [[443], [80, 443], [22, 80, 443, 8443]])
def test_each_name_is_listed_once_per_structure(ports: list[int]) -> None:
    # The egress routes, the transparent server names and the transparent routes: a size
    # linear in the names, whatever the ports (each port once held its own copies).
    text = json.dumps(config(_policy(50, ports), transparent=True))
    assert all(text.count(f'"n{i}.example.test"') == 3 for i in range(50))


def test_a_level_without_every_name_list_is_refused() -> None:
    chains = [
        {"name": "a", "filter_chain_match": {"destination_port": 1, "server_names": ["x.test"]}},
        {"name": "b", "filter_chain_match": {"destination_port": 2, "server_names": ["y.test"]}},
    ]
    with pytest.raises(ValueError, match="without the server names"):
        filter_chain_matcher(chains)


def test_chains_matching_alike_are_refused() -> None:
    chains = [{"name": "a", "filter_chain_match": {"destination_port": 1}},
              {"name": "b", "filter_chain_match": {"destination_port": 1}}]
    with pytest.raises(ValueError, match="match alike"):
        filter_chain_matcher(chains)


def test_no_chain_is_the_default_chain() -> None:
    lst = with_matcher({"filter_chains": [
        {"name": "a", "filter_chain_match": {"destination_port": 1}, "filters": []}],
        "default_filter_chain": {"name": "dflt", "filters": []}})
    # A matcher naming no chain ends the connection (no default chain): it names a copy
    # of the default chain instead.
    assert select_chain(lst, "192.0.2.1", 2)["name"] == "dflt"
    assert NO_CHAIN not in json.dumps(lst)
    assert lst["filter_chains"][-1] == lst["default_filter_chain"]


def test_the_chains_are_uniquely_named_but_for_the_default_copy() -> None:
    for policy in POLICIES.values():
        lst = listener(config(policy, transparent=True), "transparent")
        names = [c["name"] for c in lst["filter_chains"]]
        assert len(names) == len(set(names))
        if lst["default_filter_chain"]["name"] in names:
            (copy,) = [c for c in lst["filter_chains"]
                       if c["name"] == lst["default_filter_chain"]["name"]]
            assert copy == lst["default_filter_chain"]
