"""Which image each fence container runs, and building the local ones."""

from __future__ import annotations

from typing import Any

import pytest

from netfence.errors import UsageError
from netfence.runtimes.docker import images


def test_every_pinned_image_has_a_digest() -> None:
    assert set(images.IMAGES) == {"envoy", "squid", "dns"}
    for image in images.IMAGES.values():
        _, _, digest = image.pinned.partition("@sha256:")
        assert len(digest) == 64 and all(c in "0123456789abcdef" for c in digest), image
        assert image.env_var == f"NETFENCE_{image.key.upper()}_IMAGE"
        assert image.local.startswith("localhost/netfence/")


class FakeImages:
    def __init__(self, present: set[str], pullable: set[str]) -> None:
        self.present = set(present)
        self.pullable = pullable
        self.pulled: list[str] = []

    def get(self, name: str) -> object:
        import docker.errors

        if name not in self.present:
            raise docker.errors.ImageNotFound(name)
        return object()

    def pull(self, name: str) -> object:
        import docker.errors

        self.pulled.append(name)
        if name not in self.pullable:
            raise docker.errors.APIError(f"pull {name}: connection refused")
        self.present.add(name)
        return object()


class FakeClient:
    def __init__(self, present: set[str] = frozenset(),  # type: ignore[assignment]
                 pullable: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.images = FakeImages(present, pullable)


def _resolve(client: FakeClient, key: str) -> str:
    fake: Any = client
    return images.resolve(fake, key)


def test_image_override_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETFENCE_ENVOY_IMAGE", "mine/envoy:1")
    client = FakeClient({"mine/envoy:1", images.IMAGES["envoy"].local})
    assert _resolve(client, "envoy") == "mine/envoy:1"


def test_local_build_beats_the_pinned_image(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NETFENCE_SQUID_IMAGE", raising=False)
    client = FakeClient({images.IMAGES["squid"].local, images.IMAGES["squid"].pinned})
    assert _resolve(client, "squid") == images.IMAGES["squid"].local


def test_pinned_image_is_pulled_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NETFENCE_DNS_IMAGE", raising=False)
    pinned = images.IMAGES["dns"].pinned
    client = FakeClient(set(), {pinned})
    assert _resolve(client, "dns") == pinned
    assert client.images.pulled == [pinned]


def test_unavailable_image_is_a_usage_error_with_a_remedy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETFENCE_DNS_IMAGE", "nowhere/dns:1")
    with pytest.raises(UsageError) as info:
        _resolve(FakeClient(), "dns")
    text = str(info.value)
    assert "nowhere/dns:1" in text and "NETFENCE_DNS_IMAGE" in text
    assert "netfence images build" in text and "\n" not in text


def test_unknown_image_to_build_is_a_usage_error() -> None:
    fake: Any = FakeClient()
    with pytest.raises(UsageError, match="unknown image"):
        list(images.build_fence_images(fake, ("nginx",)))
