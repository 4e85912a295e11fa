"""The docker runtime: its selection, its resolver, and the backend seam it relies on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from netfence.backends import Endpoint, Placement, get_backend
from netfence.backends.dnsmasq import dns_setup
from netfence.errors import UsageError
from netfence.policy import compile_policy
from netfence.profile import load_profile
from netfence.runtimes import SUPPORTED, get_runtime
from netfence.runtimes.base import WorkloadSpec
from netfence.runtimes.docker.runtime import DockerRuntime, container_resolver


def test_docker_runtime_is_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "docker" in SUPPORTED
    assert isinstance(get_runtime("docker"), DockerRuntime)
    assert isinstance(get_runtime(" Docker "), DockerRuntime)
    monkeypatch.setenv("NETFENCE_RUNTIME", "docker")
    assert isinstance(get_runtime(), DockerRuntime)


def test_loopback_resolver_is_refused_for_containers() -> None:
    spec = WorkloadSpec(name="x", command=("img",), profile=load_profile("none"),
                        proxy="envoy", dns_upstream=Endpoint("127.0.0.53", 53))
    with pytest.raises(UsageError, match="--dns-upstream"):
        container_resolver(spec)
    spec = WorkloadSpec(name="x", command=("img",), profile=load_profile("none"),
                        proxy="envoy", dns_upstream=Endpoint("10.0.0.2", 53))
    assert container_resolver(spec) == Endpoint("10.0.0.2", 53)


def _placement(tmp_path: Path, **extra: Any) -> Placement:
    return Placement(
        state_dir=tmp_path, egress_listen=Endpoint("10.89.3.3", 3128),
        workload_proxy="w-egress:3128", dns_listen=Endpoint("10.89.3.2", 53),
        upstream_resolver=Endpoint("10.203.0.2", 53),
        ingress_listen=Endpoint("0.0.0.0", 8080),
        ingress_upstream=Endpoint("10.89.3.5", 8000), workload_name="w", **extra)


@pytest.mark.parametrize(("proxy", "roles"), [
    ("envoy", ["egress", "dns"]),
    ("squid", ["egress", "ingress", "dns"]),
])
def test_every_process_names_its_role(tmp_path: Path, proxy: str, roles: list[str]) -> None:
    policy = compile_policy(load_profile("none"))
    placement = _placement(tmp_path)
    setup = get_backend(proxy).setup(policy, placement) + dns_setup(policy, placement)
    assert [p.role for p in setup.processes] == roles


def test_envoy_program_follows_the_placement(tmp_path: Path) -> None:
    policy = compile_policy(load_profile("none"))
    backend = get_backend("envoy")
    inside = backend.setup(policy, _placement(tmp_path, programs={"envoy": "envoy"}))
    assert inside.processes[0].argv[0] == "envoy"
    on_host = backend.setup(policy, _placement(tmp_path))
    assert on_host.processes[0].argv[0].endswith("envoy") and "/" in on_host.processes[0].argv[0]
