"""The kubernetes target's manifests, run for real by `podman kube play` on the session's
Podman engine: the fence's pod with the images the docker runtime uses, a workload pod of
the test image, the simulated internet through Podman's NAT.

Podman runs Pods, Deployments and ConfigMaps but no Services or NetworkPolicies, so what
is played is the played form (manifests.played): the pods find each other by their own
addresses, and the workload's pod joins an internal network only (the fence's pod joins
that and an external one), made as the docker runtime makes its networks. Both backends.
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from netfence.backends import Endpoint, get_backend
from netfence.profile import load_profile, with_overrides
from netfence.runtimes.base import Transport, WorkloadSpec
from netfence.runtimes.docker import networks
from netfence.runtimes.docker.images import IMAGES
from netfence.runtimes.kubernetes.cluster import Cluster
from netfence.runtimes.kubernetes.manifests import Played, played
from netfence.runtimes.kubernetes.objects import to_yaml
from tests.support.fakenet import FakeNet
from tests.support.fence import leftovers, nothing_new
from tests.support.ingress import ECHO_BODY, echo_server, get
from tests.support.podman import TEST_PREFIX, WORKLOAD_CA, Engine

pytestmark = pytest.mark.integration

READY_TIMEOUT = 30.0
PLAY_TIMEOUT = 120.0


def podman_cli(engine: Engine, *args: str, check: bool = True) -> str:
    done = subprocess.run(["podman", "--url", engine.url, *args], capture_output=True,
                          text=True, timeout=PLAY_TIMEOUT)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def kube_leftovers(engine: Engine) -> list[str]:
    """Pods and volumes (emptyDirs, ConfigMaps) a played test workload left."""
    pods = podman_cli(engine, "pod", "ps", "--format", "{{.Name}}").split()
    volumes = podman_cli(engine, "volume", "ls", "--format", "{{.Name}}").split()
    return [f"pod {p}" for p in pods if p.startswith(TEST_PREFIX)] + [
        f"volume {v}" for v in volumes if v.startswith(TEST_PREFIX)]


@pytest.fixture(scope="module", autouse=True)
def infra_image(podman: Engine) -> Iterator[None]:
    """Podman builds its pods' infra image on first use: removed again if it was ours."""
    def found() -> set[str]:
        return set(podman_cli(podman, "images", "--format", "{{.Repository}}:{{.Tag}}",
                              "--filter", "reference=localhost/podman-pause").split())

    before = found()
    yield
    for image in found() - before:
        podman_cli(podman, "rmi", image, check=False)


@pytest.fixture(autouse=True)
def local_images(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fence images the session built, as a cluster would be told with the same
    variables (no registry is reachable here)."""
    for image in IMAGES.values():
        monkeypatch.setenv(image.env_var, image.local)


@pytest.fixture(autouse=True)
def nothing_left_behind(podman: Engine) -> Iterator[None]:
    with nothing_new(lambda: [*leftovers(), *podman.managed(), *kube_leftovers(podman)]):
        yield


@dataclass(frozen=True)
class Networks:
    """The docker runtime's networks for one workload: the shared external one (NAT) and
    its own internal one (no route out), with the addresses planned on it."""

    external: str
    internal: str
    plan: networks.AddressPlan
    external_subnet: str
    external_gateway: str


@contextlib.contextmanager
def workload_networks(engine: Engine, name: str) -> Iterator[Networks]:
    client = engine.client
    with contextlib.ExitStack() as undo:
        with networks.networks_lock():
            external = networks.ensure_external(client)
            undo.callback(networks.remove_external_if_unused, client)
            internal = networks.create_internal(client, name)
            undo.callback(networks.remove_network, client, internal.name or "")
        subnet, gateway = networks.subnet_of(external)
        assert gateway is not None
        yield Networks(external.name or "", internal.name or "",
                       networks.plan_addresses(*networks.subnet_of(internal)), subnet, gateway)


def _wait_listening(host: str, port: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.5):
            return
        time.sleep(0.2)
    raise AssertionError(f"the fence did not listen on {host}:{port}")


def _infra_address(engine: Engine, pod: str, network: str) -> str:
    infra = podman_cli(engine, "pod", "inspect", pod, "--format", "{{.InfraContainerID}}")
    attrs = engine.client.containers.get(infra.strip()).attrs
    return str(attrs["NetworkSettings"]["Networks"][network]["IPAddress"])


@contextlib.contextmanager
def play(engine: Engine, fakenet: FakeNet, tmp_path: Path, nets: Networks, name: str,
         proxy: str, command: list[str], transport: Transport = "stdio",
         allow: tuple[str, ...] = (), ports: tuple[int, ...] = ()) -> Iterator[str]:
    """Render the workload's played form, play its fence and then the workload; remove
    both at exit. Yields the fence pod's address on the external network (the host's way
    to its ingress)."""
    plan = nets.plan
    # The cluster's own ranges, here: both networks, and the host's address inside the
    # simulated internet's range (which allow_cidr lifts).
    cidrs = (nets.external_subnet, str(plan.subnet), f"{fakenet.host_ip}/32")
    cluster = Cluster(fence_ip=ipaddress.ip_address(plan.egress),
                      cidrs=tuple(ipaddress.ip_network(c) for c in cidrs))
    profile = with_overrides(load_profile("none"), allow_host=allow, allow_port=ports,
                             allow_cidr=(fakenet.cidr,))
    spec = WorkloadSpec(name=name, command=(engine.workload_image, *command),
                        profile=profile, proxy=proxy, transport=transport,
                        target_port=None if transport == "stdio" else 8000,
                        dns_upstream=Endpoint(fakenet.dns, 53))
    form: Played = played(spec, get_backend(proxy), cluster, fence_ip=plan.egress,
                          workload_ip=plan.workload)
    for obj in [*form.fence, *form.workload]:
        for container in _containers(obj):
            # Present, or Podman would try a registry: none is reachable from here.
            assert engine.client.images.list(name=container["image"]), container["image"]
    fence_file, workload_file = tmp_path / "fence.yaml", tmp_path / "workload.yaml"
    fence_file.write_text(to_yaml(form.fence))
    workload_file.write_text(to_yaml(form.workload))
    with contextlib.ExitStack() as undo:
        undo.callback(podman_cli, engine, "volume", "rm", "--force", f"{name}-fence",
                      check=False)  # the ConfigMap's: `kube down` leaves it
        undo.callback(podman_cli, engine, "kube", "down", str(fence_file), check=False)
        podman_cli(engine, "kube", "play", "--network", nets.external,
                   "--network", f"{nets.internal}:ip={plan.egress}", str(fence_file))
        fence_ip = _infra_address(engine, f"{name}-fence-pod-0", nets.external)
        for port in (3128, 53, *((8080,) if transport != "stdio" else ())):
            _wait_listening(fence_ip, port)
        # The internal bridge came up with the fence: no host address on it, as the docker
        # runtime ensures, or the workload would reach host services through it.
        assert networks.strip_host_addresses(plan)
        undo.callback(podman_cli, engine, "kube", "down", str(workload_file), check=False)
        podman_cli(engine, "kube", "play", "--network", f"{nets.internal}:ip={plan.workload}",
                   str(workload_file))
        yield fence_ip


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec", {})
    spec = spec.get("template", {}).get("spec", spec)
    return list(spec.get("containers", []))


def workload_output(engine: Engine, container_name: str, timeout: float = 90) -> str:
    """A stdio workload's output, once it has exited."""
    container = engine.client.containers.get(container_name)
    deadline = time.monotonic() + timeout
    while container.status != "exited" and time.monotonic() < deadline:
        time.sleep(0.3)
        container.reload()
    assert container.status == "exited", "the workload did not finish"
    return bytes(container.logs(stdout=True, stderr=True)).decode()


def test_the_workload_reaches_the_allowed_and_nothing_else(
        podman: Engine, fakenet: FakeNet, tmp_path: Path, proxy: str) -> None:
    name = TEST_PREFIX + secrets.token_hex(4)
    host = fakenet.host_ip
    with socket.create_server(("0.0.0.0", 0)) as listener, \
            workload_networks(podman, name) as nets:
        port = listener.getsockname()[1]
        text = (
            "curl -sS -m 10 http://allowed.test/hello; echo; "
            f"curl -sS -m 10 --cacert {WORKLOAD_CA} https://www.allowed.test/tls; echo; "
            # Not allowlisted; and a host service, allowlisted by address and port: its
            # address is the cluster's own (--cluster-cidr), whatever allow_cidr lifts.
            f"for u in http://other.test/ http://{host}:{port}/; do "
            "printf 'status %s ' $u; curl -sS -m 10 -w ' %{http_code}' $u | tr -d '\\n'; "
            "echo; done; "
            "getent hosts allowed.test >/dev/null; echo dns_allowed=$?; "
            "getent hosts other.test >/dev/null; echo dns_other=$?; "
            # No way around the fence: to the host, the networks' gateways, an allowed name.
            f"for u in http://{host}:{port}/ http://{nets.external_gateway}:{port}/ "
            f"http://{nets.plan.gateway}:{port}/ http://allowed.test/; do "
            "curl -sS -m 5 --noproxy '*' -o /dev/null $u 2>/dev/null; echo direct $u rc=$?; "
            "done")
        with play(podman, fakenet, tmp_path, nets, name, proxy, ["sh", "-c", text],
                  allow=(".allowed.test", host), ports=(80, 443, port)):
            out = workload_output(podman, f"{name}-workload")
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # the host service never heard from it
    assert "fakenet ok host=allowed.test path=/hello" in out, out
    assert "fakenet ok host=www.allowed.test path=/tls" in out, out
    statuses = dict(line.split(" ", 2)[1:] for line in out.splitlines()
                    if line.startswith("status "))
    other = statuses["http://other.test/"]
    assert other.endswith(" 403") and "not_allowlisted" in other, out
    service = statuses[f"http://{host}:{port}/"]
    assert service.endswith(" 403") and "host_address" in service, out
    assert "dns_allowed=0" in out and "dns_other=2" in out, out
    direct = [line for line in out.splitlines() if line.startswith("direct ")]
    assert len(direct) == 4 and not any(line.endswith(" rc=0") for line in direct), out


def _get_or_none(url: str, host: str) -> tuple[int, bytes] | None:
    try:
        return get(url, host=host)
    except OSError:
        return None


def test_clients_reach_an_http_workload_through_the_ingress(
        podman: Engine, fakenet: FakeNet, tmp_path: Path, proxy: str) -> None:
    name = TEST_PREFIX + secrets.token_hex(4)
    server = ["python3", "-c", echo_server("0.0.0.0", 8000)]
    with workload_networks(podman, name) as nets, \
            play(podman, fakenet, tmp_path, nets, name, proxy, server,
                 transport="streamable-http") as fence_ip:
        # As a client that reached it by a name the profile's inbound list allows.
        url = f"http://{fence_ip}:8080/index.html"
        deadline = time.monotonic() + READY_TIMEOUT
        while (answer := _get_or_none(url, "localhost")) != (200, ECHO_BODY) and (
                time.monotonic() < deadline):
            time.sleep(0.3)  # the workload's server may still be starting
        assert answer == (200, ECHO_BODY)
        status, body = get(f"http://{fence_ip}:8080/", host="evil.example")
        assert status == 403, body
