"""backends/envoy/gateway.py: each workload's resources under names of its own, the files
the gateway's Envoy watches, and what its admin API must report for `applied` (a stub
here; tests/integration/test_gateway_envoy.py runs the real Envoy)."""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from netfence.backends.base import Endpoint, FileSpec
from netfence.backends.envoy import EGRESS_LOG_NAME, EnvoyProxy
from netfence.backends.envoy._xds import (
    CLUSTER_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    discovery_response,
    resources_of,
    version_of,
)
from netfence.backends.envoy.gateway import (
    ADMIN_SOCKET_NAME,
    DEFAULT_CONNECTION_LIMIT,
    DNS_TCP_CONNECTION_LIMIT,
    Slot,
    WorkloadResources,
    applied,
    clusters_path,
    filter_path,
    gateway_bootstrap,
    gateway_process,
    inotify_instances,
    listeners_path,
    publication,
    route_files_in_use,
    route_path,
    runtime_path,
    workload_resources,
)
from netfence.policy import Policy
from tests.support.envoy_config import ENVOY, Json, placement, policy_for, walk

GATEWAY = Path("/run/netfence/gateway")
FETCH = {"outbound": {"allow_host": ["docs.python.org", ".wikipedia.org", "pypi.org"],
                      "allow_port": [443, 80]}}


def _slot(name: str, dns_port: int = 5300, **extra: object) -> Slot:
    return Slot(name, Path(f"/run/netns/netfence-{name}"), Endpoint("127.0.0.1", dns_port),
                Endpoint("192.0.2.53", 53), GATEWAY / "logs" / name, **extra)  # type: ignore[arg-type]


def _resources(name: str, network: Json = FETCH, **extra: object) -> WorkloadResources:
    return workload_resources(policy_for(network), _slot(name, **extra), GATEWAY)


def _all(w: WorkloadResources) -> list[Json]:
    return [*w.listeners, *w.clusters, *w.routes.values()]


def _defined(w: WorkloadResources) -> set[str]:
    """The names Envoy keys this workload's resources by, and its stat prefixes."""
    names = {r["name"] for r in [*w.listeners, *w.clusters]} | set(w.routes)
    for node in walk(_all(w)):
        if "dns_cache_config" in node:
            names.add(node["dns_cache_config"]["name"])
        if isinstance(node.get("stat_prefix"), str):
            names.add(node["stat_prefix"])
    return names


def _referenced(w: WorkloadResources) -> set[str]:
    """Every name the resources refer to: clusters, caches, route configurations, and the
    clusters a CEL expression picks."""
    found: set[str] = set()
    for node in walk(_all(w)):
        for key in ("cluster", "cluster_name", "route_config_name"):
            if isinstance(node.get(key), str):
                found.add(node[key])
        if "dns_cache_config" in node:
            found.add(node["dns_cache_config"]["name"])
        text = node.get("inline_string")
        if isinstance(text, str) and "%CEL(" in text:
            # Its quoted words (other quoted strings are regexes, numbers).
            found.update(part for i, part in enumerate(text.split("'"))
                         if i % 2 and re.fullmatch(r"[a-z][a-z0-9_.-]*", part))
    return found - {""}


def test_every_name_of_a_workload_is_its_own() -> None:
    a = _resources("a", ingress_listen=Endpoint("127.0.0.1", 8080),
                   ingress_upstream=Endpoint("127.0.0.1", 9090))
    assert [r["name"] for r in a.listeners] == [
        "a.egress", "a.ingress", "a.dns_udp4", "a.dns_tcp4", "a.dns_udp6", "a.dns_tcp6",
        "a.transparent"]
    assert [r["name"] for r in a.clusters] == ["a.dfp", "a.original_dst", "a.ingress", "a.dns"]
    assert sorted(a.routes) == ["a.egress", "a.ingress", "a.transparent"]
    assert all(name.startswith("a.") for name in _defined(a) | _referenced(a))
    # Both DNS views have a cache of their own.
    caches = {n for n in _defined(a) if n.startswith(("a.check_", "a.dial_"))}
    assert len(caches) == 2
    assert _referenced(a) <= _defined(a)  # every reference is to a resource of its own


@pytest.mark.parametrize("network", [
    {"outbound": {"insecure_allow_all": True}},  # TLS picks its cluster by an expression
    {"outbound": {"allow_host": ["1.2.3.4", "a.test"]}},  # a literal: to where it was sent
])
def test_every_cluster_chosen_is_its_own(network: Json) -> None:
    a = _resources("a", network=network)
    assert {"a.original_dst", "a.dfp", "a.dns"} <= _referenced(a) <= _defined(a)
    assert all(name.startswith("a.") for name in _defined(a) | _referenced(a))


def test_two_workloads_share_no_name() -> None:
    # Names with dots: no suffix has one, so `a`'s names never meet `a.egress`'s.
    for first, second in (("a", "b"), ("a", "a.egress"), ("x.y", "x")):
        one, two = _resources(first), _resources(second, dns_port=5301)
        assert not _defined(one) & _defined(two)
        assert not _referenced(one) & _defined(two)
        assert not set(one.limits) & set(two.limits)
        publication(GATEWAY, [one, two])  # no clash


def test_the_same_name_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="'a'"):
        publication(GATEWAY, [_resources("a"), _resources("a", dns_port=5301)])


@pytest.mark.parametrize("name", ["", "A", "-a", "a/b", "a b"])
def test_a_name_that_is_no_workload_name_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="workload name"):
        _resources(name)


def test_stats_are_per_workload() -> None:
    a = _resources("a")
    for listener in a.listeners:
        assert listener["stat_prefix"] == listener["name"]
    hcms = [n for n in walk([*a.listeners, *a.filters.values()]) if "rds" in n]
    assert hcms
    for hcm in hcms:
        # applied() finds a route file's RDS stats by this.
        assert hcm["stat_prefix"] == hcm["rds"]["route_config_name"]
        path = hcm["rds"]["config_source"]["path_config_source"]["path"]
        assert path == str(route_path(GATEWAY, "a", hcm["stat_prefix"]))


def test_a_new_resolver_is_a_new_cache_name() -> None:
    # Envoy keeps a cache while a draining listener uses it and rejects its name with
    # other settings: the same workload started again with its dnsmasq elsewhere.
    def caches(w: WorkloadResources) -> set[str]:
        return {n["dns_cache_config"]["name"] for n in walk(_all(w)) if "dns_cache_config" in n}

    first, again, moved = _resources("a"), _resources("a"), _resources("a", dns_port=5399)
    assert caches(first) == caches(again)
    assert len(caches(first) - caches(moved)) == 1  # the dial view's; the check view stays


def test_the_decision_log_is_in_the_slots_directory() -> None:
    a = _resources("a")
    assert a.decision_logs == (GATEWAY / "logs" / "a" / EGRESS_LOG_NAME,)
    paths = {n["path"] for n in walk(a.listeners) if "path" in n and "@type" in n}
    assert paths == {str(GATEWAY / "logs" / "a" / EGRESS_LOG_NAME)}


def test_limits_per_listener() -> None:
    a = _resources("a")
    key = "envoy.resource_limits.listener.{}.connection_limit".format
    assert a.limits == {
        key("a.egress"): DEFAULT_CONNECTION_LIMIT,
        key("a.transparent"): DEFAULT_CONNECTION_LIMIT,
        key("a.dns_tcp4"): DNS_TCP_CONNECTION_LIMIT,
        key("a.dns_tcp6"): DNS_TCP_CONNECTION_LIMIT,
    }
    small = _resources("a", connection_limit=3, loopbacks=("127.0.0.1",))
    assert small.limits == {key("a.egress"): 3, key("a.transparent"): 3, key("a.dns_tcp4"): 3}
    with pytest.raises(ValueError, match="at least 1"):
        _resources("a", connection_limit=0)


def test_the_chains_are_the_own_fences() -> None:
    # The decision log reads a transparent chain's name: they stay as the own fence has them.
    setup = EnvoyProxy(ENVOY).setup(policy_for(FETCH), placement(transparent=True))
    (content,) = [f.content for f in setup.files if f.path.name == "listeners.json"]
    (own,) = resources_of(content, LISTENER_TYPE, "own")
    (gateway,) = [r for r in _resources("a").listeners if r["name"] == "a.transparent"]
    assert [c["name"] for c in gateway["filter_chains"]] == [
        c["name"] for c in own["filter_chains"]]
    assert gateway["default_filter_chain"]["name"] == own["default_filter_chain"]["name"]


def test_publication_files_and_versions() -> None:
    a, b = _resources("a"), _resources("b", network={"outbound": {"allow_host": ["x.test"]}})
    published = publication(GATEWAY, [b, a])
    assert published == publication(GATEWAY, [a, b])  # the same files in any order
    assert [f.path for f in published.files] == [
        route_path(GATEWAY, "a", "a.egress"), route_path(GATEWAY, "a", "a.transparent"),
        filter_path(GATEWAY, "a", "address"), filter_path(GATEWAY, "a", "address_sni"),
        filter_path(GATEWAY, "a", "egress_http"), filter_path(GATEWAY, "a", "transparent_http"),
        route_path(GATEWAY, "b", "b.egress"), route_path(GATEWAY, "b", "b.transparent"),
        filter_path(GATEWAY, "b", "address"), filter_path(GATEWAY, "b", "address_sni"),
        filter_path(GATEWAY, "b", "egress_http"), filter_path(GATEWAY, "b", "transparent_http"),
        clusters_path(GATEWAY), listeners_path(GATEWAY), runtime_path(GATEWAY)]
    assert {f.mode for f in published.files} == {0o600}
    # Each file as _xds writes one: its version the digest of its resources.
    assert published.listeners.content == discovery_response(
        [*a.listeners, *b.listeners], LISTENER_TYPE)
    assert published.clusters.content == discovery_response(
        [*a.clusters, *b.clusters], CLUSTER_TYPE)
    assert published.routes[0].content == discovery_response([a.routes["a.egress"]],
                                                             ROUTE_TYPE)
    runtime = json.loads(published.runtime.content)["resources"]
    assert runtime == [{"@type": "type.googleapis.com/envoy.service.runtime.v3.Runtime",
                        "name": "netfence_limits", "layer": {**a.limits, **b.limits}}]
    assert route_files_in_use(GATEWAY, [a, b]) == {f.path for f in published.routes}
    # One inotify instance per file Envoy watches: a filter file only where a chain names
    # its resource (TLS without an SNI passes only with every name allowed: address_sni).
    assert inotify_instances([a, b]) == len(published.files) - 2 == 13

    # b's new policy: its route files and the listener file change, nothing of a's.
    b2 = _resources("b", network={"outbound": {"allow_host": ["x.test", "y.test"]}})
    changed = publication(GATEWAY, [a, b2])
    before = {f.path: f.content for f in published.files}
    assert {f.path for f in changed.files if before[f.path] != f.content} == {
        route_path(GATEWAY, "b", "b.egress"), route_path(GATEWAY, "b", "b.transparent"),
        listeners_path(GATEWAY)}  # its transparent TLS chains: one per allowed name
    # Without b: only a's, and the versions of what did not change stay.
    alone = publication(GATEWAY, [a])
    assert alone.routes == published.routes[:6]
    assert version_of(alone.listeners.content) != version_of(published.listeners.content)
    empty = publication(GATEWAY, [])
    assert json.loads(empty.listeners.content)["resources"] == []
    assert json.loads(empty.runtime.content)["resources"][0]["layer"] == {}


def test_bootstrap_and_process(tmp_path: Path) -> None:
    config = gateway_bootstrap(tmp_path)
    admin = config["admin"]["address"]["pipe"]
    assert admin == {"path": str(tmp_path / ADMIN_SOCKET_NAME), "mode": 0o600}
    sources = config["dynamic_resources"]
    for key, path in (("cds_config", clusters_path(tmp_path)),
                      ("lds_config", listeners_path(tmp_path))):
        assert sources[key]["path_config_source"] == {
            "path": str(path), "watched_directory": {"path": str(path.parent)}}
    layers = config["layered_runtime"]["layers"]
    assert [layer["name"] for layer in layers] == ["netfence", "limits", "admin"]
    assert layers[1]["rtds_layer"]["rtds_config"]["path_config_source"]["path"] == str(
        runtime_path(tmp_path))
    assert "static_resources" not in config and "overload_manager" in config
    # The watched files are each in a directory of their own.
    watched = [clusters_path(tmp_path), listeners_path(tmp_path), runtime_path(tmp_path),
               route_path(tmp_path, "a", "a.egress")]
    assert len({p.parent for p in watched}) == len(watched)

    bootstrap, process = gateway_process(tmp_path, ENVOY, drain_time_s=7)
    assert json.loads(bootstrap.content) == config and bootstrap.mode == 0o600
    assert process.argv[:3] == (ENVOY, "-c", str(bootstrap.path))
    assert "--disable-hot-restart" in process.argv
    assert process.argv[process.argv.index("--drain-time-s") + 1] == "7"
    assert process.ready == ()


# --- applied: the versions Envoy reports ---------------------------------------------------


class _Admin:
    """A stub admin API on the gateway's socket: /stats answers with `self.stats`."""

    def __init__(self, path: Path) -> None:
        self.stats: dict[str, str] = {}
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(4096)
                body = "".join(f"{k}: {v}\n" for k, v in self.stats.items()).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s"
                             % (len(body), body))


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[_Admin]:
    stub = _Admin(tmp_path / ADMIN_SOCKET_NAME)
    yield stub
    stub.sock.close()


def test_applied_compares_each_files_version(tmp_path: Path, admin: _Admin) -> None:
    a = workload_resources(Policy(), _slot("a"), tmp_path)
    published = publication(tmp_path, [a])
    version = {f.path: f'"{version_of(f.content)}"' for f in published.files}
    rds = {f"http.{n}.rds.{n}.version_text": version[route_path(tmp_path, "a", n)]
           for n in a.routes}
    ecds = f"extension_config_discovery.network_filter.{a.filters['address']['name']}"
    admin.stats = {"cluster_manager.cds.version_text": version[clusters_path(tmp_path)],
                   "cluster_manager.warming_clusters": "1",
                   "listener_manager.lds.version_text": '"old"',
                   "listener_manager.total_listeners_warming": "0",
                   "runtime.version_text": '"old"'}
    clusters = [published.clusters]
    assert not applied(tmp_path, clusters)  # warming
    admin.stats["cluster_manager.warming_clusters"] = "0"
    assert applied(tmp_path, clusters)
    assert not applied(tmp_path, published.files)
    admin.stats.update({"listener_manager.lds.version_text": version[listeners_path(tmp_path)],
                        "runtime.version_text": version[runtime_path(tmp_path)]})
    assert not applied(tmp_path, published.files)  # no route configuration loaded yet
    admin.stats.update(rds)
    assert applied(tmp_path, published.files)
    # A filter's version where Envoy reports it (a chain names it), and only that.
    admin.stats[f"{ecds}.version_text"] = '"old"'
    assert not applied(tmp_path, published.files)
    admin.stats[f"{ecds}.version_text"] = version[filter_path(tmp_path, "a", "address")]
    assert applied(tmp_path, published.files)
    admin.stats["listener_manager.total_listeners_warming"] = "2"
    assert not applied(tmp_path, published.files)
    assert applied(tmp_path, [published.runtime, published.clusters])
    with pytest.raises(ValueError, match="not a file"):
        applied(tmp_path, [FileSpec(tmp_path / "other.json", "{}")])


def test_applied_is_false_without_an_answer(tmp_path: Path) -> None:
    assert not applied(tmp_path, publication(tmp_path, []).files)


def test_an_ingress_needs_both_ends() -> None:
    with pytest.raises(ValueError, match="ingress"):
        _resources("a", ingress_listen=Endpoint("127.0.0.1", 8080))

