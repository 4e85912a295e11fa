"""backends/envoy/_bootstrap.py: the assembled bootstrap (admin socket, static resources)."""

from __future__ import annotations

import pytest

from netfence.backends.envoy import ADMIN_SOCKET_NAME
from netfence.backends.envoy._bootstrap import parts, static_resources
from netfence.backends.envoy._listeners import Part
from netfence.policy import Policy
from tests.support.envoy_config import STATE, config, placement, policy_for, walk


def test_admin_is_a_private_unix_socket_in_the_state_dir() -> None:
    cfg = config(Policy())
    admin = cfg["admin"]["address"]
    assert set(admin) == {"pipe"}
    assert admin["pipe"]["path"] == str(STATE / ADMIN_SOCKET_NAME)
    assert admin["pipe"]["mode"] == 0o600


def test_every_typed_config_names_its_type() -> None:
    cfg = config(policy_for({"outbound": {"allow_host": ["a.test"]}}), ingress=True)
    typed = [n["typed_config"] for n in walk(cfg) if "typed_config" in n]
    assert typed and all(t["@type"].startswith("type.googleapis.com/envoy.") for t in typed)


def test_no_ingress_listener_without_ingress() -> None:
    cfg = config(Policy())
    assert [lst["name"] for lst in cfg["static_resources"]["listeners"]] == ["egress"]
    assert [c["name"] for c in cfg["static_resources"]["clusters"]] == ["dynamic_forward_proxy"]


def test_parts_give_listeners_in_order_and_each_cluster_once() -> None:
    egress = Part(({"name": "a"},), ({"name": "c1", "x": 1},))
    other = Part(({"name": "b"},), ({"name": "c1", "x": 1}, {"name": "c2"}))
    assert static_resources([egress, other]) == {
        "listeners": [{"name": "a"}, {"name": "b"}],
        "clusters": [{"name": "c1", "x": 1}, {"name": "c2"}],
    }
    with pytest.raises(ValueError, match="c1"):
        static_resources([egress, Part(({"name": "b"},), ({"name": "c1", "x": 2},))])


def test_the_placement_decides_the_parts() -> None:
    assert len(parts(Policy(), placement())) == 1
    assert len(parts(Policy(), placement(ingress=True))) == 2
