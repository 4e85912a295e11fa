"""The workload's pod: a Pod for stdio (a client attaches to it), a Deployment with a
Service for HTTP transports (the fence's ingress reaches it by that Service's name).

It runs as an unprivileged user with no capability, no privilege escalation, a read-only
root file system (a fresh /tmp), no service account token and no other Service's address
in its environment. Its DNS is the fence's (`dnsPolicy: None`) and its proxy variables
name the fence; the NetworkPolicies (netpol.py) leave it no other way out.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from netfence.errors import UsageError
from netfence.runtimes.base import WorkloadSpec
from netfence.runtimes.kubernetes.cluster import Addresses, Cluster
from netfence.runtimes.kubernetes.objects import (
    WORKLOAD,
    Json,
    container_security,
    labels,
    metadata,
    pod_defaults,
    pod_security,
    selector,
)

log = logging.getLogger("netfence")

# nobody: when --user does not say otherwise (a pod needs a number to be sure it is not root).
DEFAULT_USER = 65534


def image_and_args(command: tuple[str, ...]) -> tuple[str, list[str]]:
    """IMAGE [--] [ARGS...]: ARGS replace the image's CMD, as with the docker runtime."""
    if not command or not command[0]:
        raise UsageError("--target kubernetes needs an IMAGE to run: -- IMAGE [ARGS...]")
    rest = list(command[1:])
    return command[0], rest[1:] if rest[:1] == ["--"] else rest


def run_as(user: str | None) -> tuple[int, int]:
    """--user UID[:GID], numeric and not root; nobody by default."""
    if user is None:
        return DEFAULT_USER, DEFAULT_USER
    uid_text, _, gid_text = user.partition(":")
    try:
        uid, gid = int(uid_text), int(gid_text or uid_text)
    except ValueError:
        raise UsageError(f"--user {user!r}: a pod needs numeric UID[:GID]") from None
    if uid <= 0 or gid < 0:
        raise UsageError(f"--user {user!r}: the workload never runs as root")
    return uid, gid


def grant_volumes(spec: WorkloadSpec) -> tuple[list[Json], list[Json]]:
    """The profile's `read` and `write` as hostPath volumes at the same path (the node's
    files, read-only or read-write); Unix sockets are not shown on a cluster."""
    profile = spec.profile
    volumes: list[Json] = []
    mounts: list[Json] = []
    for index, (path, writable) in enumerate(
            [(p, False) for p in profile.read] + [(p, True) for p in profile.write]):
        volumes.append({"name": f"grant-{index}", "hostPath": {"path": path}})
        mounts.append({"name": f"grant-{index}", "mountPath": path, "readOnly": not writable})
    if profile.allow_unix_socket:
        log.warning("%s: allow_unix_socket is not rendered: a cluster's workload connects to "
                    "no socket of its node", spec.name)
    if volumes:
        log.warning("%s: read/write grants are hostPath volumes: the node's files (a "
                    "namespace enforcing the baseline Pod Security level refuses them)",
                    spec.name)
    return volumes, mounts


def _env(spec: WorkloadSpec, proxy_env: Mapping[str, str]) -> list[Json]:
    merged = {**spec.env, **proxy_env}
    return [{"name": key, "value": merged[key]} for key in sorted(merged)]


def pod_spec(spec: WorkloadSpec, proxy_env: Mapping[str, str], addresses: Addresses) -> Json:
    image, args = image_and_args(spec.command)
    uid, gid = run_as(spec.user)
    grants, grant_mounts = grant_volumes(spec)
    container: Json = {
        "name": WORKLOAD,
        "image": image,
        "env": _env(spec, proxy_env),
        "securityContext": container_security(),
        "volumeMounts": [{"name": f"{spec.name}-tmp", "mountPath": "/tmp"}, *grant_mounts],
    }
    if args:
        container["args"] = args
    if spec.transport == "stdio":
        # A client attaches (kubectl attach -i): MCP over the container's stdin and stdout.
        container.update(stdin=True, stdinOnce=True, tty=False)
    pod: Json = {
        **pod_defaults(),
        "securityContext": {**pod_security(), "runAsNonRoot": True, "runAsUser": uid,
                            "runAsGroup": gid},
        # Names resolve at the fence only: allowlisted ones, nothing of the cluster's.
        "dnsPolicy": "None",
        "dnsConfig": {"nameservers": [addresses.fence], "searches": [],
                      "options": [{"name": "timeout", "value": "2"},
                                  {"name": "attempts", "value": "2"}]},
        "containers": [container],
        # Named after the workload: Podman 4.3 shares an emptyDir among pods by name.
        "volumes": [{"name": f"{spec.name}-tmp", "emptyDir": {}}, *grants],
    }
    if spec.transport == "stdio":
        pod["restartPolicy"] = "Never"  # one MCP session: its end is the workload's
    return pod


def objects(spec: WorkloadSpec, proxy_env: Mapping[str, str], cluster: Cluster,
            addresses: Addresses) -> list[Json]:
    """The workload: a Pod (stdio), or a Deployment and its Service (HTTP)."""
    name, namespace = spec.name, cluster.namespace
    pod = pod_spec(spec, proxy_env, addresses)
    if spec.transport == "stdio":
        return [{"apiVersion": "v1", "kind": "Pod",
                 "metadata": metadata(name, namespace, name, WORKLOAD), "spec": pod}]
    assert spec.target_port is not None
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(name, namespace, name, WORKLOAD),
        "spec": {"selector": selector(name, WORKLOAD),
                 "ports": [{"name": "mcp", "port": spec.target_port,
                            "targetPort": spec.target_port, "protocol": "TCP"}]},
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(name, namespace, name, WORKLOAD),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector(name, WORKLOAD)},
            "template": {"metadata": {"labels": labels(name, WORKLOAD)}, "spec": pod},
        },
    }
    return [service, deployment]

