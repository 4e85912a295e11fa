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
