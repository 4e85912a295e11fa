"""backends/envoy/_listeners.py: the listeners, their filter chains and DNS views, and the
clusters they route to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from netfence.backends.base import Endpoint, Placement
from netfence.backends.envoy import EGRESS_LOG_NAME, EnvoyProxy
from netfence.policy import Policy
from tests.support.envoy_config import ENVOY, STATE, config, hcm, listener, policy_for
from tests.support.policies import allowlist


def test_http_filters_host_check_check_view_rbac_mark_dial_view_router() -> None:
    cfg = config(policy_for({"outbound": {"allow_host": ["a.test"]}}))
    host_check, *filters = hcm(cfg)["http_filters"]
    # Before anything resolves: the authorities the policy cannot read (test_routes).
    assert host_check["name"] == "netfence.host_check"
    assert [f["name"] for f in filters] == [
        "envoy.filters.http.dynamic_forward_proxy",
        "envoy.filters.http.rbac",
        "envoy.filters.http.set_filter_state",
        "netfence.dial_view",
        "envoy.filters.http.router",
    ]
    check, dial = filters[0]["typed_config"], filters[3]["typed_config"]
    assert check["save_upstream_address"] is True
    assert "save_upstream_address" not in dial
    # The check view resolves at the upstream resolver; the cluster dials from the dial
    # view, which resolves through the fence's own DNS (that refuses denied answers).
    (cluster,) = [
        c for c in cfg["static_resources"]["clusters"] if c["name"] == "dynamic_forward_proxy"
    ]
    assert cluster["cluster_type"]["name"] == "envoy.clusters.dynamic_forward_proxy"
    assert cluster["cluster_type"]["typed_config"]["dns_cache_config"] == dial["dns_cache_config"]
    assert check["dns_cache_config"]["name"] != dial["dns_cache_config"]["name"]
    for view, address in ((check, ("10.9.8.7", 5353)), (dial, ("127.0.0.1", 53))):
        resolver = view["dns_cache_config"]["typed_dns_resolver_config"]
        assert resolver["name"] == "envoy.network.dns_resolver.cares"
        assert resolver["typed_config"]["resolvers"] == [
            {"socket_address": {"address": address[0], "port_value": address[1]}}
        ]
        assert resolver["typed_config"]["use_resolvers_as_fallback"] is False


def test_egress_hcm_streams_and_tunnels() -> None:
    cfg = config(policy_for({"outbound": {"allow_host": ["a.test"]}}))
    egress = hcm(cfg)
    assert egress["upgrade_configs"] == [{"upgrade_type": "CONNECT"},
                                         {"upgrade_type": "websocket"}]
    assert egress["http_protocol_options"]["accept_http_10"] is True
    assert egress["strip_trailing_host_dot"] is True
    assert egress["stream_idle_timeout"] == "0s" and egress["request_timeout"] == "0s"
    assert egress["access_log_options"]["flush_log_on_tunnel_successfully_established"] is True
    (log,) = egress["access_log"]
    assert log["typed_config"]["path"] == str(STATE / EGRESS_LOG_NAME)
    fields = log["typed_config"]["log_format"]["json_format"]
    for command in (
        "%START_TIME%",
        "%REQ(:METHOD)%",
        "%REQ(:AUTHORITY)%",
        "%RESPONSE_CODE%",
        "%RESPONSE_CODE_DETAILS%",
        "%ROUTE_NAME%",
        "%UPSTREAM_HOST%",
        "%DOWNSTREAM_WIRE_BYTES_RECEIVED%",
        "%DOWNSTREAM_WIRE_BYTES_SENT%",
        "%DURATION%",
    ):
        assert command in fields.values()


def test_egress_listener_address_and_netns() -> None:
    plain = listener(config(Policy()), "egress")["address"]["socket_address"]
    assert plain == {"address": "127.0.0.1", "port_value": 3128}
    ns = Path("/run/netns/nf-test")
    inside = listener(config(Policy(), netns=ns), "egress")["address"]["socket_address"]
    assert inside["network_namespace_filepath"] == str(ns)


def test_ingress_gates_on_loopback_names_by_default() -> None:
    cfg = config(Policy(), ingress=True)
    ingress = hcm(cfg, "ingress")
    assert ingress["route_config"]["ignore_port_in_host_matching"] is True
    assert ingress["stream_idle_timeout"] == "0s" and ingress["request_timeout"] == "0s"
    allowed, other = ingress["route_config"]["virtual_hosts"]
    assert allowed["domains"] == ["localhost", "127.0.0.1", "[::1]"]
    (route,) = allowed["routes"]
    assert route["route"] == {"cluster": "ingress_upstream", "timeout": "0s", "idle_timeout": "0s"}
    assert other["domains"] == ["*"]
    assert all(r["direct_response"]["status"] == 403 for r in other["routes"])
    (cluster,) = [c for c in cfg["static_resources"]["clusters"] if c["name"] == "ingress_upstream"]
    assert cluster["type"] == "STATIC"
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"] == {"socket_address": {"address": "127.0.0.1", "port_value": 9090}}
    ingress_listen = listener(cfg, "ingress")["address"]["socket_address"]
    assert ingress_listen == {"address": "127.0.0.1", "port_value": 8080}


def test_ingress_upstream_by_name_is_resolved_at_the_upstream_resolver() -> None:
    # A cluster's Service: Envoy resolves the name itself, at the fence's resolver only.
    named = Placement(
        state_dir=STATE,
        egress_listen=Endpoint("0.0.0.0", 3128),
        workload_proxy="10.96.0.53:3128",
        dns_listen=Endpoint("127.0.0.1", 53),
        upstream_resolver=Endpoint("10.96.0.10", 53),
        ingress_listen=Endpoint("0.0.0.0", 8080),
        ingress_upstream=Endpoint("web.default.svc.cluster.local", 8000),
    )
    cfg = json.loads(EnvoyProxy(ENVOY).setup(Policy(), named).files[0].content)
    (cluster,) = [c for c in cfg["static_resources"]["clusters"] if c["name"] == "ingress_upstream"]
    assert cluster["type"] == "STRICT_DNS"
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"] == {
        "address": "web.default.svc.cluster.local", "port_value": 8000}
    options = cluster["typed_dns_resolver_config"]["typed_config"]
    assert options["resolvers"] == [{"socket_address": {"address": "10.96.0.10",
                                                        "port_value": 53}}]
    assert options["use_resolvers_as_fallback"] is False
    assert options["dns_resolver_options"]["no_default_search_domain"] is True


def test_ingress_upstream_in_a_namespace_is_refused() -> None:
    bad = Placement(
        state_dir=STATE,
        egress_listen=Endpoint("127.0.0.1", 3128),
        workload_proxy="127.0.0.1:3128",
        dns_listen=Endpoint("127.0.0.1", 53),
        upstream_resolver=Endpoint("127.0.0.1", 53),
        ingress_listen=Endpoint("127.0.0.1", 8080),
        ingress_upstream=Endpoint("127.0.0.1", 9090, Path("/run/netns/x")),
    )
    with pytest.raises(ValueError, match="namespace"):
        EnvoyProxy(ENVOY).setup(Policy(), bad)


def _placement(tmp: Path) -> Placement:
    return Placement(state_dir=tmp, egress_listen=Endpoint("127.0.0.1", 3128),
                     workload_proxy="127.0.0.1:3128", dns_listen=Endpoint("127.0.0.1", 5300),
                     upstream_resolver=Endpoint("10.9.8.7", 53))


def test_envoy_dial_view_resolves_through_the_fence_dns(tmp_path: Path) -> None:
    cfg = json.loads(EnvoyProxy("/x/envoy").setup(allowlist("a.test"), _placement(tmp_path))
                     .files[0].content)
    (cluster,) = cfg["static_resources"]["clusters"]
    resolver = cluster["cluster_type"]["typed_config"]["dns_cache_config"][
        "typed_dns_resolver_config"]["typed_config"]["resolvers"]
    assert resolver == [{"socket_address": {"address": "127.0.0.1", "port_value": 5300}}]
    assert cfg["layered_runtime"]["layers"][0]["static_layer"][
        "re2.max_program_size.error_level"] >= 10_000
