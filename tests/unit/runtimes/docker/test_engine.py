"""Finding the container engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from netfence.errors import UsageError
from netfence.runtimes.docker import engine


def test_no_engine_is_a_usage_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/missing.sock")
    with pytest.raises(UsageError, match="no container engine answers") as info:
        engine.connect()
    assert "\n" not in str(info.value)


def test_docker_host_is_the_only_candidate_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2375")
    assert engine.candidate_urls() == ["tcp://127.0.0.1:2375"]


class _Versioned:
    def __init__(self, version: dict[str, object]) -> None:
        self._version = version

    def version(self) -> dict[str, object]:
        return self._version


def test_podman_is_told_from_docker_by_its_version() -> None:
    podman = {"Components": [{"Name": "Podman Engine", "Version": "4.3.1"}]}
    docker = {"Components": [{"Name": "Engine", "Version": "20.10.24"},
                             {"Name": "containerd"}]}
    assert engine.is_podman(_Versioned(podman))  # type: ignore[arg-type]
    assert not engine.is_podman(_Versioned(docker))  # type: ignore[arg-type]
    assert not engine.is_podman(_Versioned({}))  # type: ignore[arg-type]


def test_the_engine_is_described_by_product_and_version() -> None:
    # The shapes Podman 4.3 and Docker Engine 20.10 answer GET /version with.
    podman = {"Version": "4.3.1", "ApiVersion": "1.41",
              "Components": [{"Name": "Podman Engine", "Version": "4.3.1"}]}
    docker = {"Version": "20.10.24+dfsg1", "ApiVersion": "1.41",
              "Components": [{"Name": "Engine", "Version": "20.10.24+dfsg1"},
                             {"Name": "containerd", "Version": "1.6.20~ds1"}]}
    assert engine.describe(_Versioned(podman)) == "Podman 4.3.1 (API 1.41)"  # type: ignore[arg-type]
    assert engine.describe(_Versioned(docker)) == \
        "Docker Engine 20.10.24+dfsg1 (API 1.41)"  # type: ignore[arg-type]
    assert engine.describe(_Versioned({})) == "Docker Engine (version unknown)"  # type: ignore[arg-type]
