"""`netfence render --target kubernetes`: the options a cluster needs, and the output."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from netfence.backends import NetworkProxy
from netfence.cli import output
from netfence.cli.options import parse_env
from netfence.errors import UsageError
from netfence.runtimes.base import WorkloadSpec
from netfence.runtimes.resolver import parse_endpoint

if TYPE_CHECKING:
    from netfence.profile.model import Profile  # the loader and pydantic: not for every run

# What removes everything one render made (kubectl's `all` leaves policies and ConfigMaps).
KINDS = "networkpolicy,configmap,service,deployment,pod"


def kubernetes_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--user", default=None, metavar="UID[:GID]",
                     help="kubernetes: the workload's user (default 65534, nobody)."),
        click.option("--env", "env_pairs", multiple=True, metavar="K=V",
                     help="kubernetes: environment variable for the workload."),
        click.option("--cluster-domain", default="cluster.local", show_default=True,
                     help="kubernetes: the cluster's DNS domain."),
        click.option("--cluster-cidr", multiple=True, metavar="CIDR",
                     help="kubernetes: a range of the cluster's (pods, Services, nodes, the "
                          "API server): denied whatever --allow-cidr lifts."),
        click.option("--fence-ip", default=None, metavar="IP",
                     help="kubernetes: a free address of the Service range for the fence's "
                          "Service (the workload's DNS server and proxy)."),
        click.option("--namespace", default="default", show_default=True,
                     help="kubernetes: the namespace."),
        click.option("--name", default=None, help="kubernetes: the workload's name."),
    ]
    for option in options:
        fn = option(fn)
    return fn



def render_kubernetes(backend: NetworkProxy, profile: Profile, *, name: str | None,
                      namespace: str, fence_ip: str | None, cluster_cidr: tuple[str, ...],
                      cluster_domain: str, dns_upstream: str | None, transport: str,
                      target_port: int | None, env_pairs: tuple[str, ...], user: str | None,
                      command: tuple[str, ...], out_dir: Path | None) -> None:
    from netfence.runtimes.kubernetes.cluster import Cluster, parse_cidrs, parse_ip
    from netfence.runtimes.kubernetes.manifests import render, write
    from netfence.runtimes.kubernetes.objects import check_name, check_namespace, to_yaml

    if name is None:
        raise UsageError("--target kubernetes needs --name (every object is named after it)")
    if fence_ip is None:
        raise UsageError("--target kubernetes needs --fence-ip: the workload's DNS server is "
                         "an address, so the fence's Service gets a fixed one",
                         remedy="pick a free address of the cluster's Service range")
    if transport != "stdio" and target_port is None:
        raise UsageError(f"--transport {transport} needs --target-port (the workload's port)")
    if transport == "stdio" and target_port is not None:
        raise UsageError("--target-port needs --transport sse or streamable-http")
    cluster = Cluster(fence_ip=parse_ip(fence_ip, "--fence-ip"),
                      namespace=check_namespace(namespace), cidrs=parse_cidrs(cluster_cidr),
                      domain=cluster_domain)
    spec = WorkloadSpec(
        name=check_name(name), command=command, profile=profile, proxy=backend.name,
        transport=transport,  # type: ignore[arg-type]
        target_port=target_port, env=parse_env(env_pairs),
        dns_upstream=parse_endpoint(dns_upstream) if dns_upstream else None, user=user)
    objects = render(spec, backend, cluster)
    if out_dir is not None:
        for path in write(objects, out_dir):
            output.err.print(f"wrote {path}", markup=False)
    else:
        sys.stdout.write(to_yaml(objects))
        sys.stdout.flush()
    output.err.print(f"netfence: remove it all with: kubectl delete -n {namespace} {KINDS} "
                     f"-l app.kubernetes.io/instance={name}", markup=False)
