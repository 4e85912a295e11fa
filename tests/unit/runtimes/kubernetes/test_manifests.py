"""runtimes/kubernetes/manifests.py: every rendered object validates against a current
Kubernetes release's schemas (offline, strictly), for both backends, every transport and
several profiles; the order, the labels, the YAML; the played form's difference."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from netfence.backends import get_backend
from netfence.runtimes.kubernetes.manifests import CLUSTER_ONLY, played, render, write
from netfence.runtimes.kubernetes.objects import INSTANCE, to_yaml
from tests.support.kubernetes import (
    FENCE_IP,
    PROFILES,
    TRANSPORTS,
    by_kind,
    cluster,
    validate,
    workload_spec,
)

BACKENDS = ("envoy", "squid")


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("proxy", BACKENDS)
def test_every_object_validates_against_the_schemas(proxy: str, transport: str,
                                                    profile: str) -> None:
    spec = workload_spec(profile, transport, proxy)
    objects = render(spec, get_backend(proxy), cluster())
    for obj in objects:
        assert validate(obj), obj["metadata"]["name"]
    # What kubectl reads is the YAML: the same objects, in the same order.
    assert list(yaml.safe_load_all(to_yaml(objects))) == objects


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("proxy", BACKENDS)
def test_the_played_form_validates_too(proxy: str, transport: str) -> None:
    form = played(workload_spec("fetch", transport, proxy), get_backend(proxy), cluster(),
                  fence_ip="10.213.0.3", workload_ip="10.213.0.5")
    for obj in [*form.fence, *form.workload]:
        validate(obj)


def test_a_field_the_schema_does_not_know_is_refused() -> None:
    import kubernetes_validate

    objects = render(workload_spec(), get_backend("envoy"), cluster())
    pod = by_kind(objects, "Pod")["web"]
    pod["spec"]["containers"][0]["stdinOnly"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(pod)


@pytest.mark.parametrize("proxy", BACKENDS)
def test_what_is_rendered_in_which_order(proxy: str) -> None:
    http = render(workload_spec("fetch", "streamable-http", proxy), get_backend(proxy),
                  cluster())
    # Policies before any pod exists, Services before the pods that resolve them (Squid
    # looks its ingress's peer up at start, then seldom), the fence before its workload.
    assert [(o["kind"], o["metadata"]["name"]) for o in http] == [
        ("NetworkPolicy", "web-workload"), ("NetworkPolicy", "web-fence"),
        ("ConfigMap", "web-fence"), ("Service", "web-fence"), ("Service", "web-ingress"),
        ("Service", "web"), ("Deployment", "web-fence"), ("Deployment", "web"),
    ]
    stdio = render(workload_spec("fetch", "stdio", proxy), get_backend(proxy), cluster())
    assert [(o["kind"], o["metadata"]["name"]) for o in stdio] == [
        ("NetworkPolicy", "web-workload"), ("NetworkPolicy", "web-fence"),
        ("ConfigMap", "web-fence"), ("Service", "web-fence"), ("Deployment", "web-fence"),
        ("Pod", "web"),
    ]


def test_one_label_finds_everything_and_only_it() -> None:
    objects = render(workload_spec("fetch", "sse"), get_backend("squid"), cluster())
    for obj in objects:
        assert obj["metadata"]["namespace"] == "mcp"
        assert obj["metadata"]["labels"][INSTANCE] == "web"
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "netfence"
        template = obj.get("spec", {}).get("template")
        if template:  # the pods a Deployment makes carry them too
            assert template["metadata"]["labels"][INSTANCE] == "web"
    other = render(workload_spec("fetch", "sse", name="other"), get_backend("squid"),
                   cluster())
    names = {o["metadata"]["name"] for o in objects}
    assert not names & {o["metadata"]["name"] for o in other}


def test_services_select_the_right_pods() -> None:
    objects = render(workload_spec("fetch", "streamable-http"), get_backend("envoy"),
                     cluster())
    services = by_kind(objects, "Service")
    deployments = by_kind(objects, "Deployment")
    fence = services["web-fence"]["spec"]
    assert fence["clusterIP"] == FENCE_IP
    assert {(p["port"], p["protocol"]) for p in fence["ports"]} == {
        (3128, "TCP"), (53, "UDP"), (53, "TCP")}
    pod_labels = deployments["web-fence"]["spec"]["template"]["metadata"]["labels"]
    for name in ("web-fence", "web-ingress"):
        selector = services[name]["spec"]["selector"]
        assert selector.items() <= pod_labels.items()
    assert services["web-ingress"]["spec"]["ports"][0]["targetPort"] == 8080
    workload_labels = deployments["web"]["spec"]["template"]["metadata"]["labels"]
    assert services["web"]["spec"]["selector"].items() <= workload_labels.items()
    assert not services["web"]["spec"]["selector"].items() <= pod_labels.items()
    assert services["web"]["spec"]["ports"][0]["targetPort"] == 8000


def _flatten(value: Any, path: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{path}/{key}"))
        return out
    if isinstance(value, list):
        out = {}
        for index, item in enumerate(value):
            out.update(_flatten(item, f"{path}/{index}"))
        return out
    return {path: value}


@pytest.mark.parametrize("proxy", BACKENDS)
def test_the_played_form_differs_in_addresses_and_cluster_only_kinds_alone(
        proxy: str) -> None:
    spec = workload_spec("fetch", "streamable-http", proxy)
    objects = render(spec, get_backend(proxy), cluster())
    form = played(spec, get_backend(proxy), cluster(), fence_ip="10.213.0.3",
                  workload_ip="10.213.0.5")
    kept = [o for o in objects if o["kind"] not in CLUSTER_ONLY]
    assert {o["kind"] for o in objects} - {o["kind"] for o in kept} == {
        "Service", "NetworkPolicy"}
    assert [o["metadata"]["name"] for o in kept] == [
        o["metadata"]["name"] for o in [*form.fence, *form.workload]]
    assert all(o["metadata"]["labels"]["app.kubernetes.io/component"] == "fence"
               for o in form.fence)
    differing: dict[str, tuple[Any, Any]] = {}
    for cluster_obj, played_obj in zip(kept, [*form.fence, *form.workload], strict=True):
        ours, theirs = _flatten(cluster_obj), _flatten(played_obj)
        assert ours.keys() == theirs.keys()
        prefix = f"{cluster_obj['kind']}:{cluster_obj['metadata']['name']}"
        differing.update({f"{prefix}{k}": (ours[k], theirs[k]) for k in ours
                          if ours[k] != theirs[k]})
    config = {"envoy": "envoy.json", "squid": "squid-ingress.conf"}[proxy]
    # The proxy variables and DNS server name the fence pod's address, the ingress dials
    # the workload pod's: nothing else changes (the config digest follows the config).
    for path, (ours, theirs) in differing.items():
        if path.endswith("/value") and "/env/" in path:
            assert ours.replace(FENCE_IP, "10.213.0.3") == theirs, path
        elif path.endswith("/dnsConfig/nameservers/0"):
            assert (ours, theirs) == (FENCE_IP, "10.213.0.3")
        elif path == f"ConfigMap:web-fence/data/{config}":
            _same_but_the_ingress_upstream(proxy, ours, theirs)
        else:
            assert path.endswith("netfence.io/config-sha256"), path


def _same_but_the_ingress_upstream(proxy: str, ours: str, theirs: str) -> None:
    if proxy == "squid":
        assert ours.replace("web.mcp.svc.cluster.local", "10.213.0.5") == theirs
        return
    # Envoy: the workload's Service by name (resolved), or its pod's address (static).
    ours_json, theirs_json = json.loads(ours), json.loads(theirs)
    clusters = []
    for bootstrap in (ours_json, theirs_json):
        found = bootstrap["static_resources"]["clusters"]
        (ingress,) = [c for c in found if c["name"] == "ingress_upstream"]
        found.remove(ingress)
        clusters.append(ingress)
    assert ours_json == theirs_json
    address = [c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
               ["socket_address"] for c in clusters]
    assert address == [{"address": "web.mcp.svc.cluster.local", "port_value": 8000},
                       {"address": "10.213.0.5", "port_value": 8000}]
    assert [c["type"] for c in clusters] == ["STRICT_DNS", "STATIC"]


def test_write_numbers_the_files_in_apply_order(tmp_path: Path) -> None:
    objects = render(workload_spec(), get_backend("envoy"), cluster())
    paths = write(objects, tmp_path / "out")
    assert [p.name for p in paths] == sorted(p.name for p in paths)
    assert paths[0].name == "00-networkpolicy-web-workload.yaml"
    assert [yaml.safe_load(p.read_text()) for p in paths] == objects


def test_yaml_writes_configs_as_blocks_and_no_aliases() -> None:
    objects = render(workload_spec("fetch", "sse", "squid"), get_backend("squid"), cluster())
    text = to_yaml(objects)
    assert "&id" not in text and "*id" not in text
    assert "  squid-egress.conf: |\n    # Generated by netfence (egress)" in text


def test_a_cluster_range_is_denied_by_the_fence_whatever_is_lifted() -> None:
    spec = workload_spec("lifted", "stdio", "envoy")
    objects = render(spec, get_backend("envoy"), cluster())
    # The address rules ride with the egress routes (the listeners take them from there).
    routes = by_kind(objects, "ConfigMap")["web-fence"]["data"]["envoy-xds.routes-egress.json"]
    # 10.0.0.0/8 is lifted, 10.96.0.0/12 (the Services) stays denied as the cluster's own.
    assert "10.96.0.0" in routes and "host_address" in routes


def test_names_that_cannot_name_every_object_are_refused() -> None:
    from netfence.errors import UsageError
    from netfence.runtimes.kubernetes.objects import check_name, check_namespace

    for bad in ("9web", "web-", "Web", "a" * 25, "we_b"):
        with pytest.raises(UsageError):
            check_name(bad)
    assert check_name("web-1") == "web-1"
    with pytest.raises(UsageError):
        check_namespace("Mcp")
    assert check_namespace("mcp-servers") == "mcp-servers"
