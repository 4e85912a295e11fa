"""backends/envoy/_ecds.py: a gateway workload's transparent TLS chains name the address
stage once (ECDS) instead of each holding a copy, its listeners name their HTTP connection
managers, and what Envoy then runs, the filter files put back in, is exactly what the
listeners held: the same decisions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from netfence.backends.base import Endpoint
from netfence.backends.envoy import _workload
from netfence.backends.envoy._ecds import ROLES, by_discovery
from netfence.backends.envoy._names import HCM_TYPE, NET_RBAC_TYPE
from netfence.backends.envoy._xds import TYPED_EXTENSION_TYPE, discovery_response, inline
from netfence.backends.envoy.gateway import (
    Slot,
    WorkloadResources,
    filter_path,
    publication,
    whole_config,
    workload_resources,
)
from tests.support.envoy_config import Json, policy_for, walk

GATEWAY = Path("/run/netfence/gateway")
NET_RBAC = "envoy.filters.network.rbac"
# The names the filters found by discovery had inline, by type.
INLINE_NAMES = {NET_RBAC_TYPE: NET_RBAC, HCM_TYPE: "envoy.filters.network.http_connection_manager"}
POLICIES = {
    "one name": {"outbound": {"allow_host": ["example.com"], "allow_port": [443, 80]}},
    "50 names": {"outbound": {"allow_host": [f"h{i}.example.org" for i in range(50)],
                              "allow_port": [443, 80]}},
    "every port": {"outbound": {"allow_host": ["example.com", ".b.test"]}},
    "every name": {"outbound": {"insecure_allow_all": True}},
    "every name, one port": {"outbound": {"insecure_allow_all": True, "allow_port": [443]}},
    "literals": {"outbound": {"allow_host": ["example.com", "10.1.2.3", "93.184.216.34"],
                              "allow_port": [443, 80, 8443], "allow_cidr": ["10.1.2.0/24"]}},
    "none": {},
}


def _slot(name: str = "a") -> Slot:
    return Slot(name, Path(f"/run/netns/netfence-{name}"), Endpoint("127.0.0.1", 5300),
                Endpoint("192.0.2.53", 53), GATEWAY / "logs" / name)


def _resources(network: Json, name: str = "a") -> WorkloadResources:
    return workload_resources(policy_for(network), _slot(name), GATEWAY)


def _unshared(network: Json, monkeypatch: pytest.MonkeyPatch) -> WorkloadResources:
    """The workload as compiled with a copy in each chain (as before _ecds)."""
    with monkeypatch.context() as patch:
        patch.setattr(_workload, "by_discovery", lambda listeners, *_: listeners)
        return _resources(network)


def _as_run(resources: WorkloadResources) -> list[Json]:
    """The listeners as Envoy runs them: every file they name put in."""
    whole = whole_config(GATEWAY, publication(GATEWAY, [resources]))
    listeners: list[Json] = whole["static_resources"]["listeners"]
    return listeners


def _transparent(resources: WorkloadResources) -> Json:
    (found,) = [lst for lst in resources.listeners if lst["name"] == "a.transparent"]
    return found


def _filters(listeners: list[Json]) -> list[Json]:
    return [f for node in walk(listeners) for f in node.get("filters", ())]


@pytest.mark.parametrize("network", POLICIES.values(), ids=POLICIES.keys())
def test_envoy_runs_exactly_the_chains_compiled(network: Json,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    shared, copies = _resources(network), _unshared(network, monkeypatch)
    names = {r["name"] for r in shared.filters.values()}
    run = _as_run(shared)
    # Only the name of a filter found by discovery differs (the resource's, not the
    # factory's: Envoy finds the factory by the configuration's type either way).
    for network_filter in _filters(run):
        if network_filter["name"] in names:
            network_filter["name"] = INLINE_NAMES[network_filter["typed_config"]["@type"]]
    assert run == _as_run(copies)
    assert shared.routes == copies.routes and shared.clusters == copies.clusters


@pytest.mark.parametrize("network", POLICIES.values(), ids=POLICIES.keys())
def test_no_chain_holds_a_copy(network: Json) -> None:
    shared = _resources(network)
    text = json.dumps(shared.listeners)
    assert "upstream_ip_port" not in text
    # Every chain that dials an SNI names the one resource of its kind.
    dialing = [c for node in walk(shared.listeners) for c in node.get("filter_chains", ())
               if any("sni_dynamic_forward_proxy" in f["name"] for f in c["filters"])]
    for chain in dialing:
        (found,) = [f for f in chain["filters"] if "config_discovery" in f]
        assert found["name"] in {r["name"] for r in shared.filters.values()}
        role = found["name"].removeprefix("a.").rpartition("_")[0]
        source = found["config_discovery"]["config_source"]["path_config_source"]
        assert source["path"] == str(filter_path(GATEWAY, "a", role))
        # Without a default: closed, never open, while Envoy has no configuration for it.
        assert set(found["config_discovery"]) == {"config_source", "type_urls"}
    # And every HTTP connection manager is a resource of its listener's.
    assert HCM_TYPE not in {f.get("typed_config", {}).get("@type") for f in _filters(
        shared.listeners)}
    managers = {role for role in shared.filters if role.endswith("_http")}
    assert managers == {"egress_http", "transparent_http"}
    assert bool(dialing) == (shared.watched_filters > len(managers))


def test_fewer_bytes_per_workload(monkeypatch: pytest.MonkeyPatch) -> None:
    for label, most in (("one name", 25_000), ("50 names", 120_000)):
        shared, copies = _resources(POLICIES[label]), _unshared(POLICIES[label], monkeypatch)
        assert len(shared._listeners_json) < most < len(copies._listeners_json)


def test_the_resource_name_changes_with_the_rules_only() -> None:
    base = {"allow_host": ["example.com"], "allow_port": [443]}
    one = _resources({"outbound": base})
    more_names = _resources({"outbound": {**base, "allow_host": ["example.com", "b.test"]}})
    other_rules = _resources({"outbound": {**base, "allow_cidr": ["10.1.0.0/16"]}})
    assert more_names.filters == one.filters
    assert more_names._filter_files == one._filter_files
    # Other address rules: another name in the same file, and every chain naming it
    # changes with it (they drain, as with the rules inline): no listener ever runs with
    # rules it was not compiled with.
    assert all(other_rules.filters[r]["name"] != one.filters[r]["name"] for r in ROLES)
    # (the HTTP connection managers hold no address rule: theirs stay)
    assert all(other_rules.filters[r] == one.filters[r] for r in one.filters if r not in ROLES)
    chains = {c["name"]: c for c in _transparent(one)["filter_chains"]}
    changed = {c["name"] for c in _transparent(other_rules)["filter_chains"]
               if chains.get(c["name"]) != c}
    assert changed == {"tls_allowed@443#example.com"}


def test_an_address_stage_it_cannot_share_is_an_error() -> None:
    shared = _resources(POLICIES["one name"])
    rules = shared.filters["address"]["typed_config"]
    odd = {**rules, "rules": {**rules["rules"], "action": "ALLOW"}}
    listener = {"name": "a.x", "filter_chains": [
        {"filters": [{"name": NET_RBAC, "typed_config": odd}]}]}
    with pytest.raises(ValueError, match="does not share"):
        by_discovery([listener], shared.filters, lambda role: GATEWAY / role)


def test_inline_refuses_a_filter_file_envoy_would_not_take() -> None:
    shared = _resources(POLICIES["one name"])
    files = {f.path: f.content for f in publication(GATEWAY, [shared]).files}
    path = filter_path(GATEWAY, "a", "address")
    resource = shared.filters["address"]
    renamed = {**resource, "name": "a.address_other"}
    retyped = {**resource, "typed_config": {**resource["typed_config"], "@type": "x"}}
    for broken, message in (
        (discovery_response([renamed], TYPED_EXTENSION_TYPE), "not the one filter"),
        (discovery_response([resource, renamed], TYPED_EXTENSION_TYPE), "not the one filter"),
        (discovery_response([retyped], TYPED_EXTENSION_TYPE), "not of a type"),
    ):
        contents = {**files, path: broken}
        boot = {"dynamic_resources": {"lds_config": {"path_config_source": {
            "path": str(next(p for p in files if p.name == "listeners.json"))}}}}
        with pytest.raises(ValueError, match=message):
            inline(boot, contents.__getitem__)
