"""backends/envoy/_xds.py and the live layout: the policy in listener and route files under
stable names, a bootstrap that no policy changes, and a policy change that alters only the
resources it must (a changed filter chain or listener drains its connections)."""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from netfence.backends.base import ProxySetup
from netfence.backends.envoy import BOOTSTRAP_NAME, EnvoyProxy, bootstrap, whole_config
from netfence.backends.envoy._chains import split_chain_name
from netfence.backends.envoy._transparent import SNI_BUCKETS, SPLIT_MAX, sni_groups
from netfence.backends.envoy._xds import (
    LISTENER_TYPE,
    ROUTE_TYPE,
    discovery_response,
    inline,
    resources_of,
    version_of,
)
from netfence.policy import Policy
from tests.support.envoy_config import ENVOY, STATE, Json, placement, policy_for

XDS = STATE / "envoy-xds"


def _setup(hosts: list[str], **extra: object) -> ProxySetup:
    outbound: dict[str, object] = {"allow_host": hosts, **extra}
    return EnvoyProxy(ENVOY).setup(policy_for({"outbound": outbound}),
                                   placement(transparent=True, ingress=True))


def _files(setup: ProxySetup) -> dict[str, str]:
    return {str(f.path.relative_to(STATE)): f.content for f in setup.files}


def _listeners(setup: ProxySetup) -> dict[str, Json]:
    """Every listener Envoy runs: the bootstrap's, then the listener file's."""
    content = _files(setup)["envoy-xds/listeners.json"]
    static = json.loads(_files(setup)[BOOTSTRAP_NAME])["static_resources"]["listeners"]
    return {lst["name"]: lst for lst in
            [*static, *resources_of(content, LISTENER_TYPE, "listeners")]}


def _chains(setup: ProxySetup) -> dict[str, Json]:
    return {c["name"]: c for c in _listeners(setup)["transparent"]["filter_chains"]}


def test_the_files_and_their_stable_names() -> None:
    setup = _setup(["a.test"])
    assert list(_files(setup)) == [
        BOOTSTRAP_NAME, "envoy-xds/routes-egress.json", "envoy-xds/routes-transparent.json",
        "envoy-xds/routes-ingress.json", "envoy-xds/listeners.json"]
    boot = json.loads(_files(setup)[BOOTSTRAP_NAME])
    assert boot["dynamic_resources"] == {"lds_config": {
        "resource_api_version": "V3", "path_config_source": {
            "path": str(XDS / "listeners.json"), "watched_directory": {"path": str(XDS)}}}}
    # The clusters depend on the placement only: in the bootstrap, no CDS.
    assert [c["name"] for c in boot["static_resources"]["clusters"]] == [
        "dynamic_forward_proxy", "original_dst", "ingress_upstream"]
    # The egress and ingress listeners hold nothing of the policy: in the bootstrap (one
    # that cannot bind stops Envoy at once); the transparent listener is the policy.
    assert [lst["name"] for lst in boot["static_resources"]["listeners"]] == [
        "egress", "ingress"]
    lds = resources_of(_files(setup)["envoy-xds/listeners.json"], LISTENER_TYPE, "lds")
    assert [lst["name"] for lst in lds] == ["transparent"]
    for name, lst in _listeners(setup).items():
        rds = [f["typed_config"]["rds"] for c in lst["filter_chains"] for f in c["filters"]
               if "rds" in f.get("typed_config", {})]
        assert rds, name
        assert {r["route_config_name"] for r in rds} == {name}
        for r in rds:
            assert r["config_source"]["path_config_source"]["path"] == str(
                XDS / f"routes-{name}.json")
            assert "\"route_config\"" not in json.dumps(lst)


def test_the_bootstrap_never_changes_with_the_policy() -> None:
    many = _setup(["a.test", "*.b.test", "93.184.216.34"], allow_port=[22, 443],
                  allow_cidr=["10.0.0.0/8"])
    assert _files(_setup([]))[BOOTSTRAP_NAME] == _files(many)[BOOTSTRAP_NAME]
    (process,) = many.processes
    assert process.reload is not None and process.reload.restart_for == (STATE / BOOTSTRAP_NAME,)


def test_the_whole_config_is_the_static_bootstrap() -> None:
    """Inlining the files gives what one static bootstrap says: the same listeners, routes
    and clusters (the layout moves them, changes nothing)."""
    policy = policy_for({"outbound": {"allow_host": ["a.test", ".b.test", "10.1.2.3"],
                                      "allow_port": [443, 8443]}})
    where = placement(transparent=True, ingress=True)
    whole = whole_config(EnvoyProxy(ENVOY).setup(policy, where))
    static = bootstrap(policy, where)

    def by_name(config: Json) -> dict[str, Json]:
        return {lst["name"]: lst for lst in config["static_resources"]["listeners"]}
    assert by_name(whole) == by_name(static)
    assert {**whole, "static_resources": {}} == {**static, "static_resources": {}}
    assert whole["static_resources"]["clusters"] == static["static_resources"]["clusters"]


def test_a_new_name_adds_its_chains_and_changes_nothing_else() -> None:
    before, after = _setup(["a.test", "b.test"]), _setup(["a.test", "b.test", "c.test"])
    old, new = _files(before), _files(after)
    assert old[BOOTSTRAP_NAME] == new[BOOTSTRAP_NAME]
    assert old["envoy-xds/routes-ingress.json"] == new["envoy-xds/routes-ingress.json"]
    assert old["envoy-xds/listeners.json"] != new["envoy-xds/listeners.json"]
    assert old["envoy-xds/routes-egress.json"] != new["envoy-xds/routes-egress.json"]
    # The egress and ingress listeners are the same message: nothing of theirs drains.
    for name in ("egress", "ingress"):
        assert _listeners(before)[name] == _listeners(after)[name]
    # Of the transparent listener's chains, each old one is unchanged; the new ones are
    # c.test's (Envoy replaces the matcher in place).
    old_chains, new_chains = _chains(before), _chains(after)
    assert all(new_chains[name] == chain for name, chain in old_chains.items())
    assert sorted(set(new_chains) - set(old_chains)) == ["tls_allowed@443#c.test",
                                                         "tls_allowed@80#c.test"]


def test_a_dropped_name_removes_only_its_chains() -> None:
    before, after = _setup(["a.test", ".b.test"]), _setup(["a.test"])
    old_chains, new_chains = _chains(before), _chains(after)
    assert sorted(set(old_chains) - set(new_chains)) == ["tls_allowed@443#b.test",
                                                         "tls_allowed@80#b.test"]
    assert all(old_chains[name] == chain for name, chain in new_chains.items())
    assert _listeners(before)["egress"] == _listeners(after)["egress"]


def test_chains_of_one_entry_hold_its_names_in_every_scope() -> None:
    # A literal adds an address scope; the entry's chain is one for both scopes.
    setup = _setup([".b.test", "93.184.216.34"])
    names = [n for n in _chains(setup) if "#" in n]
    assert names == ["tls_allowed@80#b.test", "tls_allowed@443#b.test"]
    matcher = json.dumps(_listeners(setup)["transparent"]["filter_chain_matcher"])
    assert '"domains": ["b.test", "*.b.test"]' in matcher.replace('","', '", "')


def test_groups_per_entry_then_buckets() -> None:
    assert sni_groups(["a.test", "b.test", "*.b.test"]) == [
        ("a.test", ["a.test"]), ("b.test", ["b.test", "*.b.test"])]
    names = [f"n{i}.test" for i in range(SPLIT_MAX + 1)]
    groups = sni_groups(names)
    assert len(groups) <= SNI_BUCKETS
    assert sorted(n for _, members in groups for n in members) == sorted(names)
    # One more name changes its bucket's name only: the other buckets' chains stay.
    more = dict(sni_groups([*names, "extra.test"]))
    changed = [key for key, _ in groups if key not in more]
    assert len(changed) == 1 and all(key.startswith("~") for key in more)


def test_the_log_reads_a_split_chain_as_the_chain() -> None:
    assert split_chain_name("tls_allowed@443#a.test") == ("", "tls_allowed")
    assert split_chain_name("tls_port_not_allowed#~3.0a1b2c3d") == ("", "tls_port_not_allowed")
    line = json.dumps({
        "log": "netfence-transparent", "time": "2026-12-06T10:00:00Z",
        "chain": "tls_allowed@443#a.test", "sni": "a.test", "original_dst": "10.77.0.2:443",
        "upstream_host": "10.77.0.2:443", "flags": "-", "details": None,
        "bytes_received": 7, "bytes_sent": 9, "duration_ms": 1})
    record = EnvoyProxy(ENVOY).parse_decision(line)
    assert record is not None and record.allowed and record.reason == "allowed"
    assert (record.method, record.host, record.port) == ("TLS", "a.test", 443)


def test_versions_are_digests_read_from_the_head() -> None:
    one = discovery_response([{"name": "x"}], ROUTE_TYPE)
    assert one == discovery_response([{"name": "x"}], ROUTE_TYPE)
    other = discovery_response([{"name": "y"}], ROUTE_TYPE)
    assert version_of(one) and version_of(other) and version_of(one) != version_of(other)
    assert json.loads(one)["version_info"] == version_of(one)
    assert version_of("{}") is None


def test_inline_refuses_files_envoy_would_not_take() -> None:
    setup = _setup(["a.test"])
    contents = {f.path: f.content for f in setup.files}
    boot = json.loads(contents[STATE / BOOTSTRAP_NAME])
    route = XDS / "routes-egress.json"
    for broken, message in (
        ("{}", "not a discovery response"),
        (discovery_response([{"name": "other"}], ROUTE_TYPE), "route configuration 'egress'"),
        (discovery_response([{"name": "egress"}], LISTENER_TYPE), "not a RouteConfiguration"),
    ):
        files = {**contents, route: broken}
        with pytest.raises(ValueError, match=message):
            inline(boot, files.__getitem__)


# --- settled: what the admin socket reports ----------------------------------------------


class _Admin(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _stats_handler(stats: dict[str, str]) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = "".join(f"{k}: {v}\n" for k, v in stats.items()).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def address_string(self) -> str:
            return "admin"

        def log_message(self, format: str, *args: object) -> None:
            pass
    return Handler


@contextlib.contextmanager
def _admin(path: Path, stats: dict[str, str]) -> Iterator[None]:
    server = _Admin(str(path), _stats_handler(stats))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(2)


def test_settled_compares_the_versions_envoy_reports(tmp_path: Path) -> None:
    where = placement(state=tmp_path)
    setup = EnvoyProxy(ENVOY).setup(Policy(), where)
    assert not EnvoyProxy(ENVOY).settled(setup)  # no Envoy answers
    versions = {f.path.name: version_of(f.content) for f in setup.files}
    stats = {
        "listener_manager.lds.version_text": f'"{versions["listeners.json"]}"',
        "listener_manager.total_listeners_warming": "0",
        "http.egress.rds.egress.version_text": f'"{versions["routes-egress.json"]}"',
    }
    admin = tmp_path / "envoy-admin.sock"
    with _admin(admin, stats):
        assert EnvoyProxy(ENVOY).settled(setup)
    for key, value in (("listener_manager.total_listeners_warming", "1"),
                       ("http.egress.rds.egress.version_text", '"0123456789abcdef"'),
                       ("listener_manager.lds.version_text", '""')):
        admin.unlink()
        with _admin(admin, {**stats, key: value}):
            assert not EnvoyProxy(ENVOY).settled(setup), key


def test_settled_without_envoy_files_is_true() -> None:
    assert EnvoyProxy(ENVOY).settled(ProxySetup(files=(), processes=()))


def test_a_socket_that_does_not_answer_is_not_settled(tmp_path: Path) -> None:
    setup = EnvoyProxy(ENVOY).setup(Policy(), placement(state=tmp_path))
    with socket.socket(socket.AF_UNIX) as silent:
        silent.bind(str(tmp_path / "envoy-admin.sock"))
        silent.listen()
        assert not EnvoyProxy(ENVOY).settled(setup)  # times out, bounded


def test_new_address_rules_change_the_routes_not_the_http_listeners() -> None:
    """allow_cidr (or the host's addresses) change the address stage: its rules ride with
    the routes, so the egress listener and the transparent HTTP chain stay; only the
    TLS chains, whose network RBAC holds them, are replaced."""
    before, after = _setup(["a.test"]), _setup(["a.test"], allow_cidr=["10.0.0.0/8"])
    old, new = _files(before), _files(after)
    assert old["envoy-xds/routes-egress.json"] != new["envoy-xds/routes-egress.json"]
    assert old["envoy-xds/routes-transparent.json"] != new["envoy-xds/routes-transparent.json"]
    assert _listeners(before)["egress"] == _listeners(after)["egress"]
    old_chains, new_chains = _chains(before), _chains(after)
    assert old_chains["http"] == new_chains["http"]
    assert old_chains["tls_allowed@443#a.test"] != new_chains["tls_allowed@443#a.test"]
