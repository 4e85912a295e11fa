"""backends/relay.py: L4 relays as Envoy listeners in the workload's namespace, so that no
byte of Squid's egress or of the fence's DNS goes through Python (the real Envoy carries
them in tests/integration)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from netfence.backends import Endpoint, Forward
from netfence.backends.envoy import EnvoyProxy
from netfence.backends.relay import relay_bootstrap, relay_setup
from tests.support.envoy_config import ENVOY, STATE, listener, placement, policy_for

NS = Path("/run/netns/netfence-test")
DNS = Endpoint("127.0.0.1", 40053)
FORWARDS = (
    Forward(Endpoint("127.0.0.1", 3128, NS), Endpoint("127.0.0.1", 40128)),
    Forward(Endpoint("127.0.0.1", 53, NS), DNS, "udp"),
    Forward(Endpoint("::1", 53, NS), DNS, "udp"),
    Forward(Endpoint("127.0.0.1", 53, NS), DNS, "tcp"),
)


def test_each_forward_is_a_listener_in_the_namespace() -> None:
    resources = relay_bootstrap(FORWARDS, STATE)["static_resources"]
    listeners, clusters = resources["listeners"], resources["clusters"]
    assert len({lst["name"] for lst in listeners}) == len(FORWARDS)
    for forward, lst in zip(FORWARDS, listeners, strict=True):
        address = lst["address"]["socket_address"]
        assert (address["address"], address["port_value"]) == (forward.listen.host,
                                                               forward.listen.port)
        assert address["network_namespace_filepath"] == str(NS)
        assert address.get("protocol", "TCP") == forward.protocol.upper()
    # One cluster per target, in the host's namespace.
    assert [c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            for c in clusters] == [
        {"socket_address": {"address": "127.0.0.1", "port_value": 40128}},
        {"socket_address": {"address": "127.0.0.1", "port_value": 40053}}]


def test_tcp_dials_only_once_the_client_sent_something() -> None:
    # A readiness probe (connect, close) must not reach Squid: its log would count it.
    tcp = relay_bootstrap(FORWARDS, STATE)["static_resources"]["listeners"][0]
    (net_filter,) = tcp["filter_chains"][0]["filters"]
    proxy = net_filter["typed_config"]
    assert proxy["upstream_connect_mode"] == "ON_DOWNSTREAM_DATA"
    assert proxy["idle_timeout"] == "0s"


def test_udp_routes_every_datagram_to_the_target() -> None:
    udp = relay_bootstrap(FORWARDS, STATE)["static_resources"]["listeners"][1]
    (udp_filter,) = udp["listener_filters"]
    route = udp_filter["typed_config"]["matcher"]["on_no_match"]["action"]["typed_config"]
    assert route["cluster"] == "relay_127.0.0.1_40053"


def test_a_relay_of_its_own_is_ready_when_its_tcp_listeners_accept(tmp_path: Path) -> None:
    setup = relay_setup(FORWARDS, tmp_path, ENVOY)
    (spec,) = setup.files
    assert spec.mode == 0o600 and json.loads(spec.content)["admin"]["address"]["pipe"][
        "path"] == str(tmp_path / "relay-admin.sock")
    (process,) = setup.processes
    assert process.argv[:3] == (ENVOY, "-c", str(spec.path)) and process.role == "relay"
    assert process.ready == (FORWARDS[0].listen, FORWARDS[3].listen)


def test_envoy_carries_the_relays_it_is_given() -> None:
    proxy = EnvoyProxy(ENVOY)
    assert proxy.carries_relays
    policy = policy_for({"outbound": {"allow_host": ["a.test"]}})
    placed = dataclasses.replace(placement(), relays=FORWARDS[1:])
    cfg = json.loads(proxy.setup(policy, placed).files[0].content)
    udp = listener(cfg, "relay_udp_127.0.0.1_53")
    assert udp["address"]["socket_address"]["protocol"] == "UDP"
    assert {c["name"] for c in cfg["static_resources"]["clusters"]} >= {"relay_127.0.0.1_40053"}
    plain = json.loads(proxy.setup(policy, placement()).files[0].content)
    assert not [lst for lst in plain["static_resources"]["listeners"]
                if lst["name"].startswith("relay_")]
