"""`netfence images build | list | remove`: the fence's container images (docker runtime)."""

from __future__ import annotations

import click

from netfence.cli import output


@click.group()
def images() -> None:
    """The container images the docker runtime runs the fence in."""


@images.command()
@click.argument("which", nargs=-1, type=click.Choice(["envoy", "squid", "dns"]))
def build(which: tuple[str, ...]) -> None:
    """Build the fence images from this host's own Envoy, Squid and dnsmasq (no registry).

    The docker runtime uses them whenever they are present (unless NETFENCE_*_IMAGE says
    otherwise). WHICH: some of envoy, squid, dns; default all.
    """
    from netfence.runtimes.docker.engine import connect
    from netfence.runtimes.docker.images import build_fence_images

    client = connect()
    for tag in build_fence_images(client, which):
        output.err.print(f"netfence: built {tag}", markup=False)


@images.command(name="list")
def list_images() -> None:
    """Which image each fence container would run, and where it comes from."""
    import os

    from rich.table import Table

    from netfence.runtimes.docker.engine import connect
    from netfence.runtimes.docker.images import IMAGES, present

    client = connect()
    table = Table("IMAGE", "RUNS", "SOURCE", box=None)
    for image in IMAGES.values():
        override = os.environ.get(image.env_var, "").strip()
        if override:
            table.add_row(image.key, override, image.env_var)
        elif present(client, image.local):
            table.add_row(image.key, image.local, "built locally")
        else:
            table.add_row(image.key, image.pinned, "pinned")
    output.out.print(table)


@images.command()
def remove() -> None:
    """Remove the images `netfence images build` made."""
    from netfence.runtimes.docker.engine import connect
    from netfence.runtimes.docker.images import remove_fence_images

    for tag in remove_fence_images(connect()):
        output.err.print(f"netfence: removed {tag}", markup=False)
