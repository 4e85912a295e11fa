"""`netfence render --target kubernetes`: manifests on stdout or in files, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.support.fence import netfence
from tests.support.kubernetes import validate

CLUSTER = ("--fence-ip", "10.96.0.53", "--dns-upstream", "10.96.0.10",
           "--cluster-cidr", "10.96.0.0/12", "--cluster-cidr", "10.244.0.0/16")


def render(*args: str) -> tuple[int, str, str]:
    done = netfence("render", "--target", "kubernetes", *args)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


@pytest.mark.parametrize("proxy", ["envoy", "squid"])
def test_manifests_on_stdout_validate(proxy: str) -> None:
    code, out, err = render("--proxy", proxy, "--name", "fetch", "--namespace", "mcp",
                            "--profile", "network", "--transport", "streamable-http",
                            "--target-port", "8000", *CLUSTER, "--env", "LOG=1", "--",
                            "ghcr.io/example/fetch:1", "--port", "8000")
    assert code == 0, err
    objects = list(yaml.safe_load_all(out))
    assert len(objects) == 8
    for obj in objects:
        validate(obj)
    # How to remove it all, on stderr: stdout is the manifests alone.
    assert ("kubectl delete -n mcp networkpolicy,configmap,service,deployment,pod "
            "-l app.kubernetes.io/instance=fetch") in err
    (workload,) = [o for o in objects if o["kind"] == "Deployment"
                   and o["metadata"]["name"] == "fetch"]
    container = workload["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["--port", "8000"]
    assert {"name": "LOG", "value": "1"} in container["env"]


def test_manifests_in_files(tmp_path: Path) -> None:
    code, out, err = render("--name", "web", *CLUSTER, "--out", str(tmp_path), "--", "img:1")
    assert code == 0, err
    assert out == ""
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[0] == "00-networkpolicy-web-workload.yaml"
    assert names[-1] == "05-pod-web.yaml"
    assert f"wrote {tmp_path / names[0]}" in err


@pytest.mark.parametrize(("args", "message"), [
    ((*CLUSTER, "--", "img"), "--name"),
    (("--name", "web", "--dns-upstream", "10.96.0.10", "--", "img"), "--fence-ip"),
    (("--name", "web", "--fence-ip", "10.96.0.53", "--", "img"), "--dns-upstream"),
    (("--name", "web", *CLUSTER), "IMAGE"),
    (("--name", "9web", *CLUSTER, "--", "img"), "begin with a letter"),
    (("--name", "web", *CLUSTER, "--transport", "sse", "--", "img"), "--target-port"),
    (("--name", "web", *CLUSTER, "--target-port", "80", "--", "img"), "--transport"),
    (("--name", "web", "--fence-ip", "10.96.0.53", "--dns-upstream", "10.96.0.10",
      "--allow-cidr", "10.0.0.0/8", "--", "img"), "--cluster-cidr"),
    (("--name", "web", "--fence-ip", "192.168.0.5", "--dns-upstream", "10.96.0.10",
      "--cluster-cidr", "10.96.0.0/12", "--", "img"), "none of the --cluster-cidr"),
    (("--name", "web", *CLUSTER, "--cluster-cidr", "10.0.0.0/33", "--", "img"),
     "--cluster-cidr"),
    (("--name", "web", "--fence-ip", "nope", "--dns-upstream", "10.96.0.10", "--", "img"),
     "--fence-ip"),
    (("--name", "web", *CLUSTER, "--user", "0", "--", "img"), "root"),
    (("--name", "web", *CLUSTER, "--namespace", "Bad", "--", "img"), "namespace"),
    (("--name", "web", *CLUSTER, "--env", "NOVALUE", "--", "img"), "K=V"),
])
def test_errors_are_one_line_with_status_2(args: tuple[str, ...], message: str) -> None:
    code, out, err = render(*args)
    assert code == 2, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert message in lines[0]


def test_the_configs_target_takes_no_image() -> None:
    done = netfence("render", "--dns-upstream", "127.0.0.1", "--", "img")
    assert done.returncode == 2
    assert "--target kubernetes" in done.stderr.decode()
