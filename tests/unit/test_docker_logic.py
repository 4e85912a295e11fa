"""The docker runtime's pure logic: root filesystems, address plans, image choice, stdio
framing, the backend seam it relies on. The engine itself is exercised for real in
tests/integration/test_docker_runtime.py."""

from __future__ import annotations

import io
import ipaddress
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from netfence.backends import Endpoint, Placement, ProcessSpec, get_backend
from netfence.backends.dnsmasq import dns_setup
from netfence.errors import NetfenceError, UsageError
from netfence.policy import compile_policy
from netfence.profile import load_profile
from netfence.runtimes import get_runtime
from netfence.runtimes.base import SUPPORTED, WorkloadSpec
from netfence.runtimes.docker import containers, engine, images, networks, rootfs
from netfence.runtimes.docker.runtime import DockerRuntime, container_resolver

# --- ldd and root filesystems ----------------------------------------------------------

LDD = """\
\tlinux-vdso.so.1 (0x00007ffd5d9f1000)
\tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f0d2c000000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0d2be1e000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f0d2c10f000)
"""


def test_parse_ldd_lists_libraries_and_loader() -> None:
    assert rootfs.parse_ldd(LDD) == [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/ld-linux-x86-64.so.2",
    ]


def test_parse_ldd_static_binary_needs_nothing() -> None:
    assert rootfs.parse_ldd("\tnot a dynamic executable\n") == []


def test_parse_ldd_missing_library_is_an_error() -> None:
    with pytest.raises(NetfenceError, match=r"libfoo\.so\.1"):
        rootfs.parse_ldd("\tlibfoo.so.1 => not found\n")


def test_real_binary_libraries_exist() -> None:
    for library in rootfs.shared_libraries(Path("/bin/sh")):
        assert Path(library).exists(), library


def _tree(tmp_path: Path) -> Path:
    """usr/bin/prog, a merged-/usr style `bin -> usr/bin`, a link loop, a dir link."""
    base = tmp_path / "host"
    (base / "usr" / "bin").mkdir(parents=True)
    (base / "usr" / "bin" / "prog").write_text("#!/bin/true\n")
    (base / "usr" / "bin" / "prog").chmod(0o755)
    (base / "bin").symlink_to("usr/bin")
    (base / "usr" / "bin" / "alias").symlink_to("prog")
    (base / "usr" / "share" / "data").mkdir(parents=True)
    (base / "usr" / "share" / "data" / "a.txt").write_text("a")
    (base / "usr" / "share" / "data" / "__pycache__").mkdir()
    (base / "usr" / "share" / "data" / "loop").symlink_to("..")
    return base


def test_host_path_keeps_symlinks_and_their_targets(tmp_path: Path) -> None:
    base = _tree(tmp_path)
    fs = rootfs.Rootfs()
    fs.add_host_path(str(base / "bin" / "alias"))
    entries = fs.entries
    assert entries[str(base / "bin")] == ("symlink", "usr/bin")
    assert entries[str(base / "usr" / "bin" / "alias")] == ("symlink", "prog")
    assert entries[str(base / "usr" / "bin" / "prog")] == ("file", str(base / "usr/bin/prog"))
    assert entries[str(base / "usr")] == ("dir", "")


def test_tree_is_copied_without_caches_and_survives_link_loops(tmp_path: Path) -> None:
    base = _tree(tmp_path)
    fs = rootfs.Rootfs()
    fs.add_host_path(str(base / "usr" / "share"))
    data = base / "usr" / "share" / "data"
    assert fs.entries[str(data / "a.txt")][0] == "file"
    assert str(data / "__pycache__") not in fs.entries
    assert fs.entries[str(data / "loop")] == ("symlink", "..")


def test_missing_host_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(NetfenceError, match="does not exist"):
        rootfs.Rootfs().add_host_path(str(tmp_path / "nope"))


def test_build_context_has_dockerfile_files_links_and_modes(tmp_path: Path) -> None:
    base = _tree(tmp_path)
    fs = rootfs.Rootfs()
    fs.add_program(str(base / "usr" / "bin" / "prog"), at="/usr/local/bin/prog")
    fs.add_host_path(str(base / "bin"))
    fs.add_text("/etc/passwd", "root:x:0:0::/root:/bin/sh\n")
    fs.add_dir("/tmp", 0o1777)
    buffer = io.BytesIO()
    rootfs.write_context(fs, buffer, labels={"io.netfence.image": "x"})
    buffer.seek(0)
    with tarfile.open(fileobj=buffer) as tar:
        members = {m.name: m for m in tar.getmembers()}
        dockerfile = tar.extractfile("Dockerfile")
        assert dockerfile is not None
        text = dockerfile.read().decode()
    assert text.startswith("FROM scratch\nCOPY rootfs/ /\n")
    assert 'LABEL "io.netfence.image"="x"' in text and "ENV PATH=" in text
    prog = members["rootfs/usr/local/bin/prog"]
    assert prog.isfile() and prog.mode == 0o755 and prog.uid == 0
    link = members["rootfs" + str(base / "bin")]
    assert link.issym() and link.linkname == "usr/bin"
    assert members["rootfs/tmp"].mode == 0o1777
    assert members["rootfs/etc/passwd"].size > 0


def test_account_lines_keep_only_named_entries(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0::/root:/bin/sh\nproxy:x:13:13::/bin:/usr/sbin/nologin\n"
                      "alice:x:1000:1000::/home/alice:/bin/bash\n")
    lines = rootfs.account_lines(passwd, ("root", "proxy"))
    assert lines.splitlines() == ["root:x:0:0::/root:/bin/sh",
                                  "proxy:x:13:13::/bin:/usr/sbin/nologin"]


# --- networks ---------------------------------------------------------------------------


def test_address_plan_skips_the_gateway() -> None:
    plan = networks.plan_addresses("10.89.3.0/24", "10.89.3.1")
    assert (plan.dns, plan.egress, plan.ingress, plan.workload) == (
        "10.89.3.2", "10.89.3.3", "10.89.3.4", "10.89.3.5")


def test_address_plan_without_gateway_starts_at_the_first_host() -> None:
    plan = networks.plan_addresses("172.20.0.0/16", None)
    assert plan.dns == "172.20.0.1" and plan.workload == "172.20.0.4"


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


# --- containers -------------------------------------------------------------------------


@pytest.mark.parametrize(("command", "expected"), [
    (("img",), ("img", None)),
    (("img", "--"), ("img", None)),
    (("img", "--", "a", "--"), ("img", ["a", "--"])),
    (("img", "sh", "-c", "x"), ("img", ["sh", "-c", "x"])),
])
def test_workload_command(command: tuple[str, ...],
                          expected: tuple[str, list[str] | None]) -> None:
    assert containers.workload_command(command) == expected


def test_workload_command_needs_an_image() -> None:
    with pytest.raises(UsageError):
        containers.workload_command(())


def test_fence_command_sends_output_to_the_spec_files(tmp_path: Path) -> None:
    spec = ProcessSpec("p", ("sh", "-c", "echo out; echo err >&2"), (), tmp_path / "o.log",
                       tmp_path / "e.log")
    argv = containers.fence_command(spec)
    subprocess.run(["/bin/sh", *argv], check=True, timeout=10)
    assert (tmp_path / "o.log").read_text() == "out\n"
    assert (tmp_path / "e.log").read_text() == "err\n"


def _frame(kind: int, data: bytes) -> bytes:
    return bytes([kind, 0, 0, 0]) + len(data).to_bytes(4, "big") + data


def test_demuxer_splits_frames_across_chunks() -> None:
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    payload = bytes(range(256)) * 3
    stream = _frame(1, payload) + _frame(2, b"warning\n") + _frame(1, b"") + _frame(1, b"end")
    demux = containers.Demuxer(out_w, err_w)
    for i in range(0, len(stream), 7):  # chunk boundaries inside headers and payloads
        demux.feed(stream[i:i + 7])
    os.close(out_w)
    os.close(err_w)
    with os.fdopen(out_r, "rb") as out, os.fdopen(err_r, "rb") as err:
        assert out.read() == payload + b"end"
        assert err.read() == b"warning\n"


# --- images -----------------------------------------------------------------------------


def test_every_pinned_image_has_a_digest() -> None:
    assert set(images.IMAGES) == {"envoy", "squid", "dns"}
    for image in images.IMAGES.values():
        _, _, digest = image.pinned.partition("@sha256:")
        assert len(digest) == 64 and all(c in "0123456789abcdef" for c in digest), image
        assert image.env_var == f"NETFENCE_{image.key.upper()}_IMAGE"
        assert image.local.startswith("localhost/netfence/")


class FakeImages:
    def __init__(self, present: set[str], pullable: set[str]) -> None:
        self.present = set(present)
        self.pullable = pullable
        self.pulled: list[str] = []

    def get(self, name: str) -> object:
        import docker.errors

        if name not in self.present:
            raise docker.errors.ImageNotFound(name)
        return object()

    def pull(self, name: str) -> object:
        import docker.errors

        self.pulled.append(name)
        if name not in self.pullable:
            raise docker.errors.APIError(f"pull {name}: connection refused")
        self.present.add(name)
        return object()


class FakeClient:
    def __init__(self, present: set[str] = frozenset(),  # type: ignore[assignment]
                 pullable: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.images = FakeImages(present, pullable)


def _resolve(client: FakeClient, key: str) -> str:
    fake: Any = client
    return images.resolve(fake, key)


def test_image_override_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETFENCE_ENVOY_IMAGE", "mine/envoy:1")
    client = FakeClient({"mine/envoy:1", images.IMAGES["envoy"].local})
    assert _resolve(client, "envoy") == "mine/envoy:1"


def test_local_build_beats_the_pinned_image(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NETFENCE_SQUID_IMAGE", raising=False)
    client = FakeClient({images.IMAGES["squid"].local, images.IMAGES["squid"].pinned})
    assert _resolve(client, "squid") == images.IMAGES["squid"].local


def test_pinned_image_is_pulled_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NETFENCE_DNS_IMAGE", raising=False)
    pinned = images.IMAGES["dns"].pinned
    client = FakeClient(set(), {pinned})
    assert _resolve(client, "dns") == pinned
    assert client.images.pulled == [pinned]


def test_unavailable_image_is_a_usage_error_with_a_remedy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETFENCE_DNS_IMAGE", "nowhere/dns:1")
    with pytest.raises(UsageError) as info:
        _resolve(FakeClient(), "dns")
    text = str(info.value)
    assert "nowhere/dns:1" in text and "NETFENCE_DNS_IMAGE" in text
    assert "netfence images build" in text and "\n" not in text


def test_unknown_image_to_build_is_a_usage_error() -> None:
    fake: Any = FakeClient()
    with pytest.raises(UsageError, match="unknown image"):
        list(images.build_fence_images(fake, ("nginx",)))


# --- engine and runtime selection -------------------------------------------------------


def test_no_engine_is_a_usage_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/missing.sock")
    with pytest.raises(UsageError, match="no container engine answers") as info:
        engine.connect()
    assert "\n" not in str(info.value)


def test_docker_host_is_the_only_candidate_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2375")
    assert engine.candidate_urls() == ["tcp://127.0.0.1:2375"]


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


# --- the backend seam the runtime relies on ---------------------------------------------


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
