"""The docker runtime's networks: address plans, bridges, names, labels, subnets."""

from __future__ import annotations

import ipaddress
import subprocess

import pytest

from netfence.errors import NetfenceError
from netfence.runtimes.docker import containers, engine, networks


def test_address_plan_skips_the_gateway() -> None:
    plan = networks.plan_addresses("10.89.3.0/24", "10.89.3.1")
    assert (plan.dns, plan.egress, plan.ingress, plan.workload) == (
        "10.89.3.2", "10.89.3.3", "10.89.3.4", "10.89.3.5")


def test_address_plan_without_a_reported_gateway_keeps_off_the_first_host() -> None:
    # Docker Engine reports no Gateway for a network created with a subnet alone, while
    # its bridge holds the first address: planning that one for a container fails its start
    # ("Address already in use").
    plan = networks.plan_addresses("10.213.7.0/24", None)
    assert str(plan.gateway) == "10.213.7.1"
    assert (plan.dns, plan.egress, plan.ingress, plan.workload) == (
        "10.213.7.2", "10.213.7.3", "10.213.7.4", "10.213.7.5")


def test_address_plan_with_a_gateway_elsewhere_keeps_off_the_first_host_too() -> None:
    plan = networks.plan_addresses("10.213.7.0/24", "10.213.7.3")
    assert str(plan.gateway) == "10.213.7.3"
    assert (plan.dns, plan.egress, plan.ingress, plan.workload) == (
        "10.213.7.2", "10.213.7.4", "10.213.7.5", "10.213.7.6")


class _Networks:
    def __init__(self) -> None:
        self.created: list[dict[str, object]] = []

    def list(self) -> list[object]:
        return []

    def create(self, name: str, **options: object) -> str:
        self.created.append({"name": name, **options})
        return name


class _Client:
    def __init__(self) -> None:
        self.networks = _Networks()


def test_internal_network_is_created_with_its_gateway_asked_for(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(networks, "_host_links", lambda: [])
    client = _Client()
    networks.create_internal(client, "nf-abc")  # type: ignore[arg-type]
    [created] = client.networks.created
    assert created["internal"] is True and created["name"] == "nf-abc-internal"
    [pool] = created["ipam"]["Config"]  # type: ignore[index]
    subnet = ipaddress.IPv4Network(pool["Subnet"])
    assert subnet.subnet_of(networks.INTERNAL_POOL)
    assert pool["Gateway"] == str(subnet[1])


def test_address_plan_rejects_tiny_and_ipv6_subnets() -> None:
    with pytest.raises(NetfenceError, match="too small"):
        networks.plan_addresses("10.0.0.0/30", "10.0.0.1")
    with pytest.raises(NetfenceError, match="not IPv4"):
        networks.plan_addresses("fd00::/64", None)


def test_bridge_is_found_by_its_gateway_address() -> None:
    links: list[dict[str, object]] = [
        {"ifname": "lo", "addr_info": [{"local": "127.0.0.1"}]},
        {"ifname": "podman2", "addr_info": [{"local": "10.89.3.1"}, {"local": "fe80::1"}]},
    ]
    assert networks.bridge_carrying("10.89.3.1", links) == "podman2"
    assert networks.bridge_carrying("10.89.9.1", links) is None


def test_names_and_labels() -> None:
    assert networks.internal_network_name("nf-abc") == "nf-abc-internal"
    assert containers.container_name("nf-abc", "egress") == "nf-abc-egress"
    labels = networks.labels("nf-abc", "dns")
    assert labels == {engine.LABEL_MANAGED: "true", engine.LABEL_ROLE: "dns",
                      engine.LABEL_WORKLOAD: "nf-abc"}


def test_internal_subnets_come_from_our_pool_and_skip_what_is_taken() -> None:
    pool = networks.INTERNAL_POOL
    assert networks.free_subnet([]) == ipaddress.IPv4Network(f"{pool.network_address}/24")
    first, second, third, fourth = list(pool.subnets(new_prefix=24))[:4]
    # An engine network on the first, a host's /23 (a VPN) over the third and fourth.
    taken = [first, ipaddress.IPv4Network(f"{third.network_address}/23")]
    assert networks.free_subnet(taken) == second
    assert networks.free_subnet([*taken, second]) == list(pool.subnets(new_prefix=24))[4]
    assert fourth.overlaps(taken[1])
    with pytest.raises(NetfenceError, match="no free /24"):
        networks.free_subnet([pool])


class _Iptables:
    """A stand-in for `iptables`: the DOCKER-USER chain's rules, when Docker made it."""

    def __init__(self, docker: bool) -> None:
        self.chain: list[list[str]] | None = [] if docker else None
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        self.calls.append(args)
        if self.chain is None:
            return subprocess.CompletedProcess(args, 1, "", "No chain/target/match by that name")
        if args[0] == "-S":
            lines = [f"-N {networks.DOCKER_USER}"]
            lines += [" ".join(["-A", *(f'"{w}"' if " " in w else w for w in rule)])
                      for rule in self.chain]
            return subprocess.CompletedProcess(args, 0, "\n".join(lines) + "\n", "")
        if args[0] == "-I":
            self.chain.insert(0, list(args[1:]))
        elif args[0] == "-D":
            self.chain.remove(list(args[1:]))
        return subprocess.CompletedProcess(args, 0, "", "")


def test_an_internal_bridge_is_accepted_in_docker_user_and_removed_by_name(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _Iptables(docker=True)
    monkeypatch.setattr(networks, "_iptables", fake)
    monkeypatch.setattr(networks.os, "geteuid", lambda: 0)
    assert networks.accept_bridged("br-0123456789ab", "nf-a") is True
    assert networks.accept_bridged("br-ba9876543210", "nf-ab") is True
    # Only traffic that stays on the bridge: in from it and out to it.
    assert fake.chain is not None and fake.chain[1] == [
        "DOCKER-USER", "-i", "br-0123456789ab", "-o", "br-0123456789ab", "-m", "comment",
        "--comment", "netfence:nf-a", "-j", "ACCEPT"]
    networks.remove_bridged("nf-a")  # not nf-ab's, whose name it starts
    assert [rule[2] for rule in fake.chain] == ["br-ba9876543210"]
    networks.remove_bridged("nf-a")  # gone already: nothing to do
    assert len(fake.chain) == 1


def test_without_dockers_chains_nothing_is_added(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _Iptables(docker=False)
    monkeypatch.setattr(networks, "_iptables", fake)
    monkeypatch.setattr(networks.os, "geteuid", lambda: 0)
    assert networks.accept_bridged("podman3", "nf-a") is None
    networks.remove_bridged("nf-a")
    assert all(call[0] == "-S" for call in fake.calls), fake.calls
