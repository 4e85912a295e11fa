"""runtimes/kubernetes/workload.py: the workload's pod, as the issue asks for it."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from netfence.backends import get_backend
from netfence.errors import UsageError
from netfence.profile import with_overrides
from netfence.runtimes.kubernetes import workload
from netfence.runtimes.kubernetes.manifests import render
from tests.support.kubernetes import FENCE_IP, Json, by_kind, cluster, workload_spec


def pod_of(transport: str = "stdio", **changes: object) -> tuple[Json, Json]:
    objects = render(workload_spec("fetch", transport, **changes), get_backend("envoy"),
                     cluster())
    if transport == "stdio":
        pod = by_kind(objects, "Pod")["web"]
        return pod["spec"], pod["spec"]["containers"][0]
    spec = by_kind(objects, "Deployment")["web"]["spec"]["template"]["spec"]
    return spec, spec["containers"][0]


@pytest.mark.parametrize("transport", ["stdio", "sse"])
def test_unprivileged_with_nothing_to_lose(transport: str) -> None:
    pod, container = pod_of(transport)
    assert pod["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"},
                                      "runAsNonRoot": True, "runAsUser": 65534,
                                      "runAsGroup": 65534}
    assert container["securityContext"] == {
        "privileged": False, "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    # A writable /tmp of its own, on an otherwise read-only root.
    assert container["volumeMounts"][0] == {"name": "web-tmp", "mountPath": "/tmp"}
    assert {"name": "web-tmp", "emptyDir": {}} in pod["volumes"]


def test_its_dns_and_proxy_are_the_fence() -> None:
    pod, container = pod_of()
    assert pod["dnsPolicy"] == "None"
    assert pod["dnsConfig"]["nameservers"] == [FENCE_IP]
    assert pod["dnsConfig"]["searches"] == []
    env = {e["name"]: e["value"] for e in container["env"]}
    for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        assert env[key] == f"http://{FENCE_IP}:3128"
    assert env["no_proxy"] == env["NO_PROXY"] == "localhost,127.0.0.1,::1"


def test_stdio_is_a_pod_a_client_attaches_to() -> None:
    pod, container = pod_of("stdio")
    assert container["stdin"] is True and container["stdinOnce"] is True
    assert container["tty"] is False
    assert pod["restartPolicy"] == "Never"
    assert container["image"] == "ghcr.io/example/mcp:1.0"
    assert container["args"] == ["--verbose"]


def test_http_is_a_deployment_behind_a_service() -> None:
    pod, container = pod_of("streamable-http")
    assert "stdin" not in container and "restartPolicy" not in pod
    assert "ports" not in container


def test_arguments_and_environment() -> None:
    _, container = pod_of(command=("img:1", "--", "serve", "--port", "9"),
                          env={"TOKEN": "t", "HTTP_PROXY": "mine"})
    assert container["args"] == ["serve", "--port", "9"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["TOKEN"] == "t"
    assert env["HTTP_PROXY"] == f"http://{FENCE_IP}:3128"  # the fence's, always
    _, bare = pod_of(command=("img:1",))
    assert "args" not in bare  # the image's own command


def test_an_image_is_needed() -> None:
    with pytest.raises(UsageError, match="IMAGE"):
        workload.image_and_args(())


def test_user() -> None:
    assert workload.run_as(None) == (65534, 65534)
    assert workload.run_as("1000") == (1000, 1000)
    assert workload.run_as("1000:2000") == (1000, 2000)
    for bad in ("0", "0:0", "node", "1000:staff", "-1"):
        with pytest.raises(UsageError):
            workload.run_as(bad)
    pod, _ = pod_of(user="1000:2000")
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (
        1000, 2000)


def test_grants_are_the_nodes_files(caplog: pytest.LogCaptureFixture) -> None:
    spec = workload_spec()
    granted = dataclasses.replace(spec, profile=with_overrides(
        spec.profile, read=["/srv/data"], write=["/srv/notes"],
        allow_unix_socket=["/run/app.sock"]))
    caplog.set_level(logging.WARNING, logger="netfence")
    objects = render(granted, get_backend("envoy"), cluster())
    pod = by_kind(objects, "Pod")["web"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["/srv/data"]["readOnly"] is True
    assert mounts["/srv/notes"]["readOnly"] is False
    assert volumes[mounts["/srv/data"]["name"]]["hostPath"] == {"path": "/srv/data"}
    assert "/run/app.sock" not in mounts
    assert "allow_unix_socket is not rendered" in caplog.text
    assert "hostPath" in caplog.text
