"""runtimes/kubernetes/fence.py: where the backends are told to listen, how their files
reach the pod (placed by the shell code the containers run, executed here for real), and
the fence's containers."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from netfence.backends import Endpoint, FileSpec, ProcessSpec, ProxySetup, get_backend
from netfence.errors import UsageError
from netfence.runtimes.kubernetes import fence
from netfence.runtimes.kubernetes.cluster import Addresses
from netfence.runtimes.kubernetes.manifests import render
from tests.support.kubernetes import FENCE_IP, by_kind, cluster, workload_spec

ADDRESSES = Addresses(fence=FENCE_IP, workload="web.mcp.svc.cluster.local")


def test_placement_listens_on_the_pod_and_dials_the_workload_by_name() -> None:
    spec = workload_spec("fetch", "streamable-http")
    proxy, dns = fence.placements(spec, ADDRESSES)
    assert proxy.egress_listen == Endpoint("0.0.0.0", 3128)
    assert proxy.ingress_listen == Endpoint("0.0.0.0", 8080)
    assert proxy.ingress_upstream == Endpoint("web.mcp.svc.cluster.local", 8000)
    assert proxy.workload_proxy == f"{FENCE_IP}:3128"
    assert proxy.upstream_resolver == Endpoint("10.96.0.10", 53)
    assert proxy.transparent_listen == ()  # no redirect on a cluster: policies instead
    # dnsmasq answers on every address of the pod; the proxy, beside it, asks on loopback.
    assert dns.dns_listen == Endpoint("0.0.0.0", 53)
    assert proxy.dns_listen == Endpoint("127.0.0.1", 53)
    assert proxy.state_dir == fence.STATE_DIR
    stdio, _ = fence.placements(workload_spec("fetch", "stdio"), ADDRESSES)
    assert stdio.ingress_listen is None and stdio.ingress_upstream is None


def test_a_fence_needs_its_upstream_resolver() -> None:
    with pytest.raises(UsageError, match="--dns-upstream"):
        fence.placements(workload_spec(dns_upstream=None), ADDRESSES)


def test_an_ipv6_fence_address_is_bracketed() -> None:
    proxy, _ = fence.placements(workload_spec(), Addresses("fd00::53", "w"))
    assert proxy.workload_proxy == "[fd00::53]:3128"


@pytest.mark.parametrize("proxy", ["envoy", "squid"])
def test_each_file_belongs_to_one_process(proxy: str) -> None:
    spec = workload_spec("fetch", "sse", proxy)
    setup = fence.fence_setup(spec, get_backend(proxy), _policy(spec), ADDRESSES)
    owned = fence.files_of(setup)
    assert sorted(f.path for files in owned.values() for f in files) == sorted(
        f.path for f in setup.files)
    assert [f.path.name for f in owned["dns"]] == ["dnsmasq.conf", "dnsmasq-servers.conf"]
    if proxy == "envoy":
        # The bootstrap, and the listener and route files it reads (envoy-xds/).
        assert [str(f.path.relative_to(fence.STATE_DIR)) for f in owned["egress"]] == [
            "envoy.json", "envoy-xds/routes-egress.json", "envoy-xds/routes-ingress.json",
            "envoy-xds/listeners.json"]
    else:
        egress = {f.path.name for f in owned["egress"]}
        assert {"squid-egress.conf", "squid-egress-access.log", "ERR_NOT_ALLOWLISTED"} <= egress
        assert "squid-ingress.conf" in {f.path.name for f in owned["ingress"]}
        # Each Squid its own pages: the ingress's are all under its names.
        assert all("squid-ingress" in str(f.path) for f in owned["ingress"])


def test_a_file_no_process_names_is_an_error() -> None:
    process = ProcessSpec("p", ("prog", "/run/netfence/a.conf"), (), Path("/run/netfence/o"),
                          Path("/run/netfence/e"), role="egress")
    stray = ProxySetup(files=(FileSpec(Path("/run/netfence/b.conf"), "x\n"),),
                       processes=(process,))
    with pytest.raises(ValueError, match=r"b\.conf"):
        fence.files_of(stray)


def test_files_are_placed_exactly_with_their_modes(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # The shell code the containers run, run here by /bin/sh (dash, as in the images).
    state, config = tmp_path / "state", tmp_path / "config"
    state.mkdir()
    config.mkdir()
    monkeypatch.setattr(fence, "STATE_DIR", state)
    monkeypatch.setattr(fence, "CONFIG_DIR", config)
    tricky = "a\\nb \\\\ %s $HOME `x` 'q' \"d\"\n\n  indented\ttab\n" + "y" * 5000 + "\n"
    files = [
        FileSpec(state / "one.conf", tricky),
        FileSpec(state / "sub" / "page", "page\n", mode=0o644),
        FileSpec(state / "access.log", ""),
    ]
    (state / "sub").mkdir()
    for spec in files:
        (config / fence.config_key(spec)).write_text(spec.content)
    (state / "access.log").write_text("kept from before a restart\n")
    script = "set -e\n" + fence.place_files(files)
    for _ in range(2):  # a restarted container places them again
        subprocess.run(["/bin/sh", "-c", script], check=True, timeout=30)
    assert (state / "one.conf").read_text() == tricky
    assert (state / "sub" / "page").read_text() == "page\n"
    assert (state / "access.log").read_text() == "kept from before a restart\n"
    assert (state / "one.conf").stat().st_mode & 0o777 == 0o600
    assert (state / "sub" / "page").stat().st_mode & 0o777 == 0o644


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
def test_an_owned_file_is_given_to_its_owner(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import pwd

    monkeypatch.setattr(fence, "CONFIG_DIR", tmp_path)
    monkeypatch.setattr(fence, "STATE_DIR", tmp_path)
    (tmp_path / "log").write_text("")
    spec = FileSpec(tmp_path / "log", "", owner="nobody")
    subprocess.run(["/bin/sh", "-c", "set -e\n" + fence.place_files([spec])], check=True,
                   timeout=30)
    assert (tmp_path / "log").stat().st_uid == pwd.getpwnam("nobody").pw_uid


def test_what_the_shell_copy_cannot_make_is_refused() -> None:
    for spec in (FileSpec(fence.STATE_DIR / "x", "no newline at the end"),
                 FileSpec(fence.STATE_DIR / "y", "#!/bin/sh\n", mode=0o700)):
        with pytest.raises(ValueError, match="cannot be placed"):
            fence.place_files([spec])


def test_configs_too_large_for_a_configmap_are_refused() -> None:
    big = ProxySetup(files=(FileSpec(fence.STATE_DIR / "envoy.json", "x" * 1_000_001),),
                     processes=())
    with pytest.raises(UsageError, match="ConfigMap"):
        fence.config_map("web", "mcp", big)


@pytest.mark.parametrize("proxy", ["envoy", "squid"])
def test_the_fence_pod(proxy: str) -> None:
    objects = render(workload_spec("fetch", "sse", proxy), get_backend(proxy), cluster())
    deployment = by_kind(objects, "Deployment")["web-fence"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    containers = {c["name"]: c for c in pod["containers"]}
    assert set(containers) == ({"egress", "dns"} if proxy == "envoy"
                               else {"egress", "ingress", "dns"})
    backend = get_backend(proxy)
    setup = fence.fence_setup(workload_spec("fetch", "sse", proxy), backend,
                              _policy(workload_spec("fetch", "sse", proxy)), ADDRESSES)
    for process in setup.processes:
        container = containers[process.role]
        security = container["securityContext"]
        assert security["capabilities"] == {"drop": ["ALL"],
                                            "add": list(process.capabilities)}
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert container["command"] == ["/bin/sh"]
        # The backend's argv, unchanged, at the end; its output to its files.
        args = container["args"]
        assert tuple(args[-len(process.argv):]) == process.argv
        assert args[2:5] == ["netfence", str(process.stdout), str(process.stderr)]
        assert "ports" not in container  # Podman would publish them on the host
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts[str(fence.CONFIG_DIR)]["readOnly"] is True
        assert str(fence.STATE_DIR) in mounts
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"] == {"name": "web-fence", "defaultMode": 0o400}
    config = by_kind(objects, "ConfigMap")["web-fence"]["data"]
    assert "dnsmasq.conf" in config
    if proxy == "squid":
        # The error pages' directories exist as volumes of their own (no mkdir in images).
        assert "/run/netfence/squid-egress-errors" in {
            m["mountPath"] for m in containers["egress"]["volumeMounts"]}
        assert "squid-egress-errors.ERR_NOT_ALLOWLISTED" in config
        assert "cache_peer web.mcp.svc.cluster.local parent 8000" in config[
            "squid-ingress.conf"]
    else:
        ingress = [c for c in json.loads(config["envoy.json"])["static_resources"]["clusters"]
                   if c["name"] == "ingress_upstream"]
        assert ingress[0]["type"] == "STRICT_DNS"


def test_images_are_the_docker_runtimes_and_overridable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from netfence.runtimes.docker.images import IMAGES

    objects = render(workload_spec(), get_backend("envoy"), cluster())
    pod = by_kind(objects, "Deployment")["web-fence"]["spec"]["template"]["spec"]
    images = {c["name"]: c["image"] for c in pod["containers"]}
    assert images == {"egress": IMAGES["envoy"].pinned, "dns": IMAGES["dns"].pinned}
    monkeypatch.setenv("NETFENCE_DNS_IMAGE", "registry.example/dnsmasq:2.90")
    objects = render(workload_spec(), get_backend("envoy"), cluster())
    pod = by_kind(objects, "Deployment")["web-fence"]["spec"]["template"]["spec"]
    assert {c["name"]: c["image"] for c in pod["containers"]}["dns"] == (
        "registry.example/dnsmasq:2.90")


def test_a_new_config_rolls_the_fence() -> None:
    def digest(profile: str) -> str:
        objects = render(workload_spec(profile), get_backend("envoy"), cluster())
        template = by_kind(objects, "Deployment")["web-fence"]["spec"]["template"]
        return str(template["metadata"]["annotations"]["netfence.io/config-sha256"])

    assert digest("fetch") == digest("fetch")
    assert digest("fetch") != digest("github")


def _policy(spec: object) -> object:
    from netfence.runtimes.kubernetes.cluster import fence_policy

    return fence_policy(spec, cluster())  # type: ignore[arg-type]
