"""A real Podman engine for the docker runtime's tests, on a private socket.

The session starts `podman system service` itself (no systemd unit, no shared socket),
builds the fence images once (through `netfence images build`) and a small workload image
from the host's own binaries (sh, coreutils, curl, getent, Python, Node when the host has
it) with the simulated internet's test CA inside; at the end it removes every container,
network and image it made and stops the service it started, by PID.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from netfence.runtimes.docker import rootfs
from netfence.runtimes.docker.engine import LABEL_MANAGED, LABEL_ROLE, LABEL_WORKLOAD
from netfence.runtimes.docker.images import IMAGES, build
from netfence.runtimes.docker.networks import EXTERNAL_NETWORK
from tests.support import processes
from tests.support.fence import netfence_argv

TEST_LABEL = "io.netfence.test"
TEST_PREFIX = "nfd-"  # every workload a test starts is named so
WORKLOAD_CA = "/etc/netfence-test/ca.pem"
WORKLOAD_NODE = "/usr/bin/node"
# Podman on this machine kind: runc (crun fails on hybrid cgroups and on setrlimit), no
# systemd (cgroupfs, file events), and explicit ulimits for the same setrlimit reason.
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[network]
network_backend = "netavark"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""
# No registry is reachable here, and none is needed (every image is built on this host):
# the pulls the tests cause (a missing image's error) fail at once, where an unreachable
# registry costs seconds of retries, and no short name is looked up anywhere.
REGISTRIES_CONF = """\
unqualified-search-registries = []

[[registry]]
location = "localhost"
blocked = true
"""
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
WORKLOAD_PROGRAMS = ("cat", "sleep", "curl", "getent", "env", "head", "id", "tr")


@dataclass(frozen=True)
class Engine:
    url: str
    client: docker.DockerClient
    workload_image: str
    # "podman" or "docker"; and the prefix of the host bridges its networks get.
    kind: str = "podman"
    bridge_prefix: str = "podman"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment a `netfence` subprocess needs to use this engine."""
        return {**os.environ, "DOCKER_HOST": self.url, "NETFENCE_RUNTIME": "docker", **extra}

    def managed(self) -> list[str]:
        """Containers and networks netfence labelled that exist now, and the host's bridges
        for them (netavark keeps a bridge that still has a port when its network goes)."""
        label = {"label": f"{LABEL_MANAGED}=true"}
        found = [f"container {c.name}" for c in self.client.containers.list(all=True,
                                                                          filters=label)]
        found += [f"network {n.name}" for n in self.client.networks.list(filters=label)]
        found += [f"link {link.name}" for link in Path("/sys/class/net").iterdir()
                  if link.name.startswith(self.bridge_prefix) and link.name != "podman0"]
        # The rules the runtime adds to Docker's DOCKER-USER chain, one per workload (on
        # either engine, while the session's dockerd made the chain).
        rules = subprocess.run(["iptables", "-w", "10", "-S", "DOCKER-USER"],
                               capture_output=True, text=True, timeout=30).stdout
        found += [f"iptables {line}" for line in rules.splitlines() if "netfence:" in line]
        return found


def wait_for_engine(url: str, proc: subprocess.Popen[bytes], log: Path,
                    what: str = "podman system service") -> docker.DockerClient:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}): "
                               f"{log.read_text(errors='replace')[-2000:]}")
        try:
            client = docker.DockerClient(base_url=url, timeout=120)
            client.ping()
            return client
        except (docker.errors.DockerException, OSError):
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer on {url} within "
                       f"{START_TIMEOUT:.0f} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    processes.stop(proc, timeout=STOP_TIMEOUT)  # the PID we started, nothing else


def workload_rootfs(ca_pem: Path) -> rootfs.Rootfs:
    """A test workload: a shell, a few tools, curl and Debian's Python with its stdlib."""
    fs = rootfs.base_rootfs()
    fs.add_program("/bin/sh")
    for program in WORKLOAD_PROGRAMS:
        fs.add_program(rootfs.host_program(program))
    # Debian's interpreter, whose standard library is at a fixed place (not a venv's).
    python = Path("/usr/bin/python3").resolve()
    fs.add_program("/usr/bin/python3")
    stdlib = Path("/usr/lib") / python.name
    fs.add_host_path(str(stdlib))
    for module in sorted((stdlib / "lib-dynload").glob("*.so")):
        for library in rootfs.shared_libraries(module):
            fs.add_host_path(library)
    # Node (a single binary): its fetch ignores the proxy variables (the transparent path).
    node = shutil.which("node")
    if node is not None:
        fs.add_program(node, at=WORKLOAD_NODE)
    fs.add_text(WORKLOAD_CA, ca_pem.read_text())
    return fs


@contextlib.contextmanager
def workload_image_with(engine: Engine, ca_pem: Path, name: str,
                        *trees: Path) -> Iterator[str]:
    """The test workload image plus host directory trees (each at its host path, so the
    same absolute paths work inside), tagged localhost/netfence-test/NAME:PID; removed at
    exit, however the block ends."""
    tag = f"localhost/netfence-test/{name}:{os.getpid()}"
    fs = workload_rootfs(ca_pem)
    for tree in trees:
        fs.add_host_path(str(tree))
        # Compiled extension modules (pydantic_core's, say) load libraries of their own.
        for module in sorted(tree.rglob("*.so")):
            for library in rootfs.shared_libraries(module):
                fs.add_host_path(library)
    try:
        build(engine.client, fs, tag, {TEST_LABEL: "true"})
        yield tag
    finally:
        _remove_image(engine.client, tag)
    if _image_id(engine.client, tag) is not None:
        raise RuntimeError(f"could not remove the test image {tag}")


def _remove_test_objects(client: docker.DockerClient) -> None:
    """What a failed test left: its workloads' containers and networks (by their test
    name prefix), then the shared external network if nothing uses it any more."""
    filters = {"label": f"{LABEL_MANAGED}=true"}

    def ours(labels: dict[str, str] | None) -> bool:
        return (labels or {}).get(LABEL_WORKLOAD, "").startswith(TEST_PREFIX)

    # A workload before the holder of its network: an engine keeps a container others joined.
    found = client.containers.list(all=True, filters=filters)
    for container in sorted(found, key=lambda c: c.labels.get(LABEL_ROLE) == "net"):
        if ours(container.labels):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
    for network in client.networks.list(filters=filters):
        if ours(network.attrs.get("Labels")):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                network.remove()
    if not client.containers.list(all=True, filters={"network": EXTERNAL_NETWORK}):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            client.networks.get(EXTERNAL_NETWORK).remove()


def with_images(client: docker.DockerClient, url: str, ca_pem: Path,
                cleanup: contextlib.ExitStack) -> str:
    """Build the fence images (through the real command) and the test workload image in
    the engine at `url`; their removal is pushed on `cleanup`, and before it (so run
    first) the removal of whatever a failed test left. The workload image's tag."""
    # Images: the fence's through the real command, the workload's with the same code.
    before = {key: _image_id(client, image.local) for key, image in IMAGES.items()}
    for key, image in IMAGES.items():
        if before[key] is None:
            cleanup.callback(_remove_image, client, image.local)
    built = subprocess.run(netfence_argv("images", "build"), capture_output=True,
                           env={**os.environ, "DOCKER_HOST": url}, timeout=300)
    if built.returncode != 0:
        raise RuntimeError(f"netfence images build failed: {built.stderr.decode()}")
    for key, image in IMAGES.items():
        old = before[key]
        if old is not None and old != _image_id(client, image.local):
            _remove_image(client, old)  # the rebuild left it untagged: ours to tidy
    tag = f"localhost/netfence-test/workload:{os.getpid()}"
    cleanup.callback(_remove_image, client, tag)
    build(client, workload_rootfs(ca_pem), tag, {TEST_LABEL: "true"})

    # Registered last, so it runs first: whatever a failed test left, before the images.
    cleanup.callback(_remove_test_objects, client)
    return tag


@contextlib.contextmanager
def podman_engine(ca_pem: Path) -> Iterator[Engine]:
    """A private Podman service with the fence and workload images; all removed at exit."""
    work = Path(tempfile.mkdtemp(prefix="nf-podman-"))
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, work, ignore_errors=True)
        conf = work / "containers.conf"
        conf.write_text(CONTAINERS_CONF)
        registries = work / "registries.conf"
        registries.write_text(REGISTRIES_CONF)
        url = f"unix://{work / 'podman.sock'}"
        log = work / "service.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["podman", "system", "service", "--time=0", url],
                env={**os.environ, "CONTAINERS_CONF": str(conf),
                     "CONTAINERS_REGISTRIES_CONF": str(registries)},
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        cleanup.callback(stop, proc)
        client = wait_for_engine(url, proc, log)
        cleanup.callback(client.close)

        tag = with_images(client, url, ca_pem, cleanup)
        yield Engine(url=url, client=client, workload_image=tag)


def _image_id(client: docker.DockerClient, reference: str) -> str | None:
    try:
        return str(client.images.get(reference).id)
    except docker.errors.ImageNotFound:
        return None


def _remove_image(client: docker.DockerClient, tag: str) -> None:
    with contextlib.suppress(docker.errors.ImageNotFound, docker.errors.APIError):
        client.images.remove(tag, force=True)


def podman_missing_reason() -> str | None:
    """Why the container tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "the container runtime tests need root (a rootful Podman engine)"
    if shutil.which("podman") is None:
        return "podman is not installed (scripts/install installs it)"
    return None
