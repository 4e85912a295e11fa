"""Everything one fenced workload needs on a cluster, and the form `podman kube play` runs.

The cluster form, in the order `kubectl apply` should create it (policies before any pod,
Services before the pods that look them up, the fence before its workload): the
NetworkPolicies, the fence's ConfigMap and Services, the workload's Service, the fence's
Deployment, the workload's Pod or Deployment.

The played form (Podman 4.3 runs Pods, Deployments and ConfigMaps, not Services or
NetworkPolicies) differs in two things only, both here: the pods find each other by their
own addresses on Podman networks instead of through Services, and the Services and
NetworkPolicies are left out. The isolation the policies give on a cluster comes from the
networks instead: the workload's pod joins an internal network only, the fence's pod that
network and an external one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from netfence.backends import NetworkProxy
from netfence.runtimes.base import WorkloadSpec
from netfence.runtimes.kubernetes import fence, netpol, workload
from netfence.runtimes.kubernetes.cluster import Addresses, Cluster, cluster_addresses, fence_policy
from netfence.runtimes.kubernetes.objects import (
    COMPONENT,
    FENCE,
    NETWORK_POLICY,
    SERVICE,
    Json,
    to_yaml,
)

CLUSTER_ONLY = frozenset({SERVICE, NETWORK_POLICY})


def render(spec: WorkloadSpec, backend: NetworkProxy, cluster: Cluster,
           addresses: Addresses | None = None) -> list[Json]:
    """The cluster form; `addresses` replace the Services' (the played form's)."""
    if spec.transport != "stdio" and spec.target_port is None:
        raise ValueError("an HTTP transport needs the workload's port")
    found = addresses or cluster_addresses(spec, cluster)
    policy = fence_policy(spec, cluster)
    setup = fence.fence_setup(spec, backend, policy, found)
    workload_side = workload.objects(spec, setup.env, cluster, found)
    return [
        *netpol.policies(spec, policy, cluster),
        fence.config_map(spec.name, cluster.namespace, setup),
        *fence.services(spec, cluster),
        # Before the fence starts: Squid resolves its ingress's peer at start, then seldom.
        *[o for o in workload_side if o["kind"] == SERVICE],
        fence.deployment(spec, backend, setup, cluster),
        *[o for o in workload_side if o["kind"] != SERVICE],
    ]


@dataclass(frozen=True)
class Played:
    """fence: play with `--network EXTERNAL --network INTERNAL:ip=FENCE_IP`; workload: with
    `--network INTERNAL:ip=WORKLOAD_IP` (an internal network: no route but to the fence)."""

    fence: list[Json]
    workload: list[Json]


def played(spec: WorkloadSpec, backend: NetworkProxy, cluster: Cluster, fence_ip: str,
           workload_ip: str) -> Played:
    """The played form: the cluster form with the pods' own addresses for the Services',
    without the objects Podman does not run."""
    objects = render(spec, backend, cluster, Addresses(fence=fence_ip, workload=workload_ip))
    kept = [o for o in objects if o["kind"] not in CLUSTER_ONLY]
    return Played(fence=[o for o in kept if component(o) == FENCE],
                  workload=[o for o in kept if component(o) != FENCE])


def component(obj: Json) -> str:
    return str(obj["metadata"]["labels"][COMPONENT])


def file_name(index: int, obj: Json) -> str:
    """`kubectl apply -f DIR` reads a directory's files in name order: numbered so."""
    return f"{index:02d}-{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"


def write(objects: list[Json], directory: Path) -> list[Path]:
    """One file per object in `directory` (created if missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, obj in enumerate(objects):
        path = directory / file_name(index, obj)
        path.write_text(to_yaml([obj]), encoding="utf-8")
        paths.append(path)
    return paths
