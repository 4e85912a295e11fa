"""What every object shares: names, labels, metadata, security contexts, the YAML form.

Every object carries the `app.kubernetes.io/*` labels, so that one selector finds all a
workload owns (`kubectl delete ... -l app.kubernetes.io/instance=NAME`); pods are told
apart by `app.kubernetes.io/component` (the workload, or its fence), which is what the
Services and NetworkPolicies select on.
"""

from __future__ import annotations

import re
from typing import Any

from netfence.errors import UsageError

Json = dict[str, Any]

INSTANCE = "app.kubernetes.io/instance"
COMPONENT = "app.kubernetes.io/component"
WORKLOAD = "workload"
FENCE = "fence"
# Object names are NAME plus at most this suffix ("-ingress"): a Service name is a DNS-1035
# label, at most 63 characters; a workload name is at most 24 (state.check_name).
_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# The kinds only a cluster has: Podman's `kube play` does not run them (played.py).
SERVICE, NETWORK_POLICY = "Service", "NetworkPolicy"


def check_name(name: str) -> str:
    """A workload name every object can be named after (Service names begin with a letter)."""
    from netfence.runtimes.state import check_name as check_workload_name

    check_workload_name(name)
    if not _LABEL.match(name):
        raise UsageError(f"invalid name {name!r} for Kubernetes: begin with a letter and end "
                         "with a letter or digit")
    return name


def check_namespace(namespace: str) -> str:
    if len(namespace) > 63 or not _NAMESPACE.match(namespace):
        raise UsageError(f"invalid namespace {namespace!r}: use at most 63 lower-case "
                         "letters, digits and '-'")
    return namespace


def labels(name: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "netfence",
        INSTANCE: name,
        COMPONENT: component,
        "app.kubernetes.io/managed-by": "netfence",
    }


def selector(name: str, component: str) -> dict[str, str]:
    """The labels that pick one component's pods (a Service's or a policy's selector)."""
    return {INSTANCE: name, COMPONENT: component}


def metadata(object_name: str, namespace: str, name: str, component: str) -> Json:
    return {"name": object_name, "namespace": namespace, "labels": labels(name, component)}


def pod_security() -> Json:
    """Every pod: the container runtime's default seccomp profile."""
    return {"seccompProfile": {"type": "RuntimeDefault"}}


def container_security(add: tuple[str, ...] = ()) -> Json:
    """Every container: no privilege, no escalation, a read-only root file system, every
    capability dropped but `add`."""
    capabilities: Json = {"drop": ["ALL"]}
    if add:
        capabilities["add"] = list(add)
    return {
        "privileged": False,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": capabilities,
    }


# No container declares its ports (`containerPort`): a cluster needs them for nothing here
# (Services and policies give numbers), and Podman 4.3's `kube play` publishes each one on
# every address of the host.


def pod_defaults() -> Json:
    """What neither the workload nor the fence needs: the API's token, other Services'
    addresses in the environment."""
    return {"automountServiceAccountToken": False, "enableServiceLinks": False}


def port(number: int, protocol: str = "TCP") -> Json:
    return {"protocol": protocol, "port": number}


def to_yaml(objects: list[Json]) -> str:
    """One YAML document per object; multi-line strings (the configs) as literal blocks."""
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True  # a mount list shared by containers is written out each time

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return yaml.dump_all(objects, Dumper=Dumper, sort_keys=False, explicit_start=True,
                         width=100)
