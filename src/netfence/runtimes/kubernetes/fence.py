"""The fence's pod: the backends' files in a ConfigMap, their processes as containers.

One pod (a Deployment `NAME-fence`) holds every fence process, each in a container named
after its role (`egress`, `ingress`, `dns`) and started with the argv its backend gave,
its output sent to the backend's files, as the docker runtime does. The processes share
the pod's network: dnsmasq listens on all its addresses, the proxy asks it on loopback.

The state directory is an emptyDir (the proxies write their logs and Envoy its admin
socket there). Each container first places the files its own process uses there, from
the ConfigMap, with their modes and owners as write_setup gives them on one machine: a
ConfigMap volume is read-only (the Squid wrapper's chown of its error pages would fail on
it) and sets no owner, and Podman 4.3's `kube play` mounts no subPath and races with its
own removal of an exited init container. The fence images hold a shell and the proxy, not
cp or mkdir: the copy is a shell loop, and each directory of the state tree is an
emptyDir of its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shlex
from pathlib import Path, PurePosixPath

from netfence.backends import (
    DNS_PORT,
    Endpoint,
    FileSpec,
    NetworkProxy,
    Placement,
    ProcessSpec,
    ProxySetup,
)
from netfence.backends.dnsmasq import dns_setup
from netfence.errors import UsageError
from netfence.policy import Policy
from netfence.runtimes.base import WORKLOAD_PROXY_PORT, WorkloadSpec
from netfence.runtimes.docker.containers import fence_command
from netfence.runtimes.docker.images import IMAGES
from netfence.runtimes.kubernetes.cluster import Addresses, Cluster
from netfence.runtimes.kubernetes.objects import (
    FENCE,
    Json,
    container_security,
    labels,
    metadata,
    pod_defaults,
    pod_security,
    selector,
)

STATE_DIR = Path("/run/netfence")
CONFIG_DIR = PurePosixPath("/etc/netfence")
# The ingress listener's port in the fence's pod (the docker runtime's too).
INGRESS_PORT = 8080
# A ConfigMap holds at most 1 MiB, its keys and metadata included.
CONFIGMAP_LIMIT = 1_000_000
# A state file from the ConfigMap, line by line (every generated file ends in a newline),
# an empty one (a log) kept if it is there: umask gives the mode, chown (in the Squid image,
# whose wrapper uses it too) the owner.
_PUT = ('put() { umask "$3"; if [ -s "$C/$1" ]; then while IFS= read -r l || [ -n "$l" ]; '
        'do printf "%s\\n" "$l"; done < "$C/$1" > "$2"; else : >> "$2"; fi; '
        '[ -z "$4" ] || chown "$4" "$2"; }')


def fence_name(name: str) -> str:
    return f"{name}-fence"


def placements(spec: WorkloadSpec, addresses: Addresses) -> tuple[Placement, Placement]:
    """The proxy's placement and dnsmasq's: listeners on every address of the pod."""
    if spec.dns_upstream is None:
        raise UsageError("a cluster's fence needs --dns-upstream IP[:PORT]",
                         remedy="usually the cluster DNS: kubectl -n kube-system get "
                                "service kube-dns")
    ingress_listen = ingress_upstream = None
    if spec.transport != "stdio":
        assert spec.target_port is not None
        ingress_listen = Endpoint("0.0.0.0", INGRESS_PORT)
        ingress_upstream = Endpoint(addresses.workload, spec.target_port)
    proxy = Placement(
        state_dir=STATE_DIR,
        egress_listen=Endpoint("0.0.0.0", WORKLOAD_PROXY_PORT),
        workload_proxy=str(Endpoint(addresses.fence, WORKLOAD_PROXY_PORT)),
        # dnsmasq, in the same pod, answers on loopback too.
        dns_listen=Endpoint("127.0.0.1", DNS_PORT),
        upstream_resolver=spec.dns_upstream,
        ingress_listen=ingress_listen,
        ingress_upstream=ingress_upstream,
        workload_name=spec.name,
        # The images have the programs on PATH.
        programs={"envoy": "envoy"},
    )
    return proxy, dataclasses.replace(proxy, dns_listen=Endpoint("0.0.0.0", DNS_PORT))


def fence_setup(spec: WorkloadSpec, backend: NetworkProxy, policy: Policy,
                addresses: Addresses) -> ProxySetup:
    proxy, dns = placements(spec, addresses)
    return backend.setup(policy, proxy) + dns_setup(policy, dns)


def image(process: ProcessSpec, backend: NetworkProxy) -> str:
    """The docker runtime's image for the process: its environment variable, else the
    pinned reference (a cluster pulls it; nothing here asks an engine)."""
    entry = IMAGES["dns" if process.role == "dns" else backend.name]
    return os.environ.get(entry.env_var, "").strip() or entry.pinned


def config_key(spec: FileSpec) -> str:
    return str(spec.path.relative_to(STATE_DIR)).replace("/", ".")


def config_map(name: str, namespace: str, setup: ProxySetup) -> Json:
    data: dict[str, str] = {}
    for spec in setup.files:
        key = config_key(spec)
        if key in data:
            raise ValueError(f"two state files map to the ConfigMap key {key!r}")
        data[key] = spec.content
    size = sum(len(k) + len(v.encode()) for k, v in data.items())
    if size > CONFIGMAP_LIMIT:
        raise UsageError(f"the fence's configs take {size} bytes, more than a ConfigMap holds "
                         f"({CONFIGMAP_LIMIT})", remedy="allow fewer names, e.g. with *.suffix")
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": metadata(fence_name(name), namespace, name, FENCE), "data": data}


def files_of(setup: ProxySetup) -> dict[str, list[FileSpec]]:
    """Each process's files, by role: those it reads (ProcessSpec.reads), those its argv
    names (or whose directory it names), and its stdout and stderr. Every file belongs to
    exactly one process."""
    found: dict[str, list[FileSpec]] = {p.role: [] for p in setup.processes}
    for spec in setup.files:
        owners = [p.role for p in setup.processes
                  if spec.path in (p.stdout, p.stderr, *p.reads)
                  or any(str(spec.path) in arg or str(spec.path.parent) == arg
                         for arg in p.argv)]
        if len(owners) != 1:
            raise ValueError(f"{spec.path}: used by {len(owners)} fence processes, not one")
        found[owners[0]].append(spec)
    return found


def place_files(files: list[FileSpec]) -> str:
    """The shell lines that place a process's files before it starts."""
    lines = [f"C={CONFIG_DIR}", _PUT]
    for spec in files:
        if spec.mode & 0o111 or (spec.content and not spec.content.endswith("\n")):
            # The shell copy makes neither executables nor files without a last newline.
            raise ValueError(f"{spec.path}: cannot be placed from the ConfigMap")
        umask = 0o777 & ~spec.mode
        args = [config_key(spec), str(spec.path), f"{umask:03o}"]
        if spec.owner is not None:
            args.append(spec.owner)
        lines.append("put " + " ".join(shlex.quote(a) for a in args))
    return "\n".join(lines)


def command(process: ProcessSpec, files: list[FileSpec]) -> list[str]:
    """/bin/sh's arguments: place the files, then the docker runtime's command (the
    backend's argv, its output sent to its files)."""
    flag, script, *rest = fence_command(process)
    return [flag, f"set -e\n{place_files(files)}\n{script}", *rest]


def state_dirs(setup: ProxySetup) -> list[Path]:
    """The state dir and each directory in it that holds files (an emptyDir each)."""
    found = {spec.path.parent for spec in setup.files} | {STATE_DIR}
    return sorted(found)


def _volume_name(name: str, index: int) -> str:
    # Prefixed with the workload's name: Podman 4.3 makes an emptyDir a volume named so,
    # shared by every pod that names one alike.
    return f"{fence_name(name)}-state" + (f"-{index}" if index else "")


def _container(process: ProcessSpec, files: list[FileSpec], backend: NetworkProxy,
               mounts: list[Json]) -> Json:
    container: Json = {
        "name": process.role,
        "image": image(process, backend),
        # Pinned by digest: what is there is what was asked for.
        "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/sh"],
        "args": command(process, files),
        "securityContext": container_security(process.capabilities),
        "volumeMounts": mounts,
    }
    if process.ready:
        container["readinessProbe"] = {"tcpSocket": {"port": process.ready[0].port},
                                       "periodSeconds": 5}
    return container


def deployment(spec: WorkloadSpec, backend: NetworkProxy, setup: ProxySetup,
               cluster: Cluster) -> Json:
    name = spec.name
    dirs = state_dirs(setup)
    mounts = [{"name": "config", "mountPath": str(CONFIG_DIR), "readOnly": True}]
    mounts += [{"name": _volume_name(name, i), "mountPath": str(d)}
               for i, d in enumerate(dirs)]
    volumes: list[Json] = [{"name": "config", "configMap": {
        "name": fence_name(name), "defaultMode": 0o400}}]
    volumes += [{"name": _volume_name(name, i), "emptyDir": {}} for i in range(len(dirs))]
    files = files_of(setup)
    digest = hashlib.sha256("\0".join(f"{f.path}\0{f.content}" for f in setup.files).encode())
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(fence_name(name), cluster.namespace, name, FENCE),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector(name, FENCE)},
            "template": {
                # A new config rolls the pod (a mounted ConfigMap's change would not).
                "metadata": {"labels": labels(name, FENCE),
                             "annotations": {"netfence.io/config-sha256": digest.hexdigest()}},
                "spec": {
                    **pod_defaults(),
                    # Root, with each process's capabilities only: Squid and dnsmasq drop
                    # to their own users once their ports are open.
                    "securityContext": {**pod_security(), "runAsUser": 0, "runAsGroup": 0},
                    "containers": [_container(p, files[p.role], backend, mounts)
                                   for p in setup.processes],
                    "volumes": volumes,
                },
            },
        },
    }


def services(spec: WorkloadSpec, cluster: Cluster) -> list[Json]:
    """The workload's side (its proxy and DNS, at the fixed cluster IP) and, for HTTP
    transports, the clients' side (the ingress)."""
    name = spec.name
    workload_side = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(fence_name(name), cluster.namespace, name, FENCE),
        "spec": {
            "clusterIP": str(cluster.fence_ip),
            "selector": selector(name, FENCE),
            "ports": [
                {"name": "proxy", "port": WORKLOAD_PROXY_PORT, "targetPort": WORKLOAD_PROXY_PORT,
                 "protocol": "TCP"},
                {"name": "dns", "port": DNS_PORT, "targetPort": DNS_PORT, "protocol": "UDP"},
                {"name": "dns-tcp", "port": DNS_PORT, "targetPort": DNS_PORT,
                 "protocol": "TCP"},
            ],
        },
    }
    if spec.transport == "stdio":
        return [workload_side]
    ingress = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(f"{name}-ingress", cluster.namespace, name, FENCE),
        "spec": {
            "selector": selector(name, FENCE),
            "ports": [{"name": "ingress", "port": INGRESS_PORT, "targetPort": INGRESS_PORT,
                       "protocol": "TCP"}],
        },
    }
    return [workload_side, ingress]
