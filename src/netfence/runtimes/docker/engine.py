"""The connection to the container engine (Docker, or Podman's Docker-compatible API).

The engine is found like the `docker` CLI finds it: DOCKER_HOST, else the default Docker
socket; then Podman's rootful and rootless sockets. Every engine error that reaches the
user is one line (NetfenceError), never a traceback.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from netfence.errors import NetfenceError, UsageError

if TYPE_CHECKING:
    from docker import DockerClient

# Labels on everything netfence creates, so `ps`, `stop` and clean-up find it all.
LABEL_MANAGED = "io.netfence.managed"
LABEL_WORKLOAD = "io.netfence.workload"
LABEL_ROLE = "io.netfence.role"
LABEL_PROXY = "io.netfence.proxy"
LABEL_COMMAND = "io.netfence.command"
LABEL_STARTED = "io.netfence.started"

API_TIMEOUT = 120  # seconds: image builds and pulls are single long calls
_REMEDY = ("start Docker, or Podman's API (`systemctl start podman.socket` or "
           "`podman system service --time=0 &`), or point DOCKER_HOST at its socket")


def candidate_urls() -> list[str]:
    """Where to look for an engine, in order."""
    if os.environ.get("DOCKER_HOST"):
        return [os.environ["DOCKER_HOST"]]
    sockets = [Path("/var/run/docker.sock"), Path("/run/podman/podman.sock")]
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        sockets.append(Path(runtime_dir) / "podman" / "podman.sock")
    found = [f"unix://{s}" for s in sockets if s.exists()]
    return found or [f"unix://{sockets[0]}"]


def connect() -> DockerClient:
    """A client for the first engine that answers; a one-line error when none does."""
    return connect_to()[0]


def connect_to() -> tuple[DockerClient, str]:
    """connect(), and the URL of the engine that answered."""
    try:
        import docker
        import docker.errors
    except ImportError:
        raise NetfenceError("the `docker` Python package is not installed",
                            remedy="pip install docker") from None
    failures: list[str] = []
    for url in candidate_urls():
        try:
            # Asks the engine for its API version at once: this is the first contact.
            client = docker.DockerClient(base_url=url, timeout=API_TIMEOUT)
        except (docker.errors.DockerException, OSError) as exc:
            failures.append(f"{url}: {_reason(exc)}")
            continue
        try:
            client.ping()
            return client, url
        except (docker.errors.DockerException, OSError) as exc:
            client.close()
            failures.append(f"{url}: {_reason(exc)}")
    raise UsageError(f"no container engine answers ({'; '.join(failures)})", remedy=_REMEDY)


def _reason(exc: BaseException) -> str:
    text = str(getattr(exc, "explanation", None) or exc).strip()
    for marker in ("No such file or directory", "Connection refused", "Permission denied"):
        if marker in text:
            return marker.lower()
    return text.splitlines()[0][:160] if text else type(exc).__name__


@contextlib.contextmanager
def engine_errors(what: str = "") -> Iterator[None]:
    """Turn a lost or failing engine into a one-line NetfenceError."""
    import docker.errors
    import requests.exceptions

    try:
        yield
    except NetfenceError:
        raise
    except docker.errors.APIError as exc:
        prefix = f"{what}: " if what else ""
        raise NetfenceError(f"{prefix}container engine error: {_reason(exc)}") from None
    except (requests.exceptions.RequestException, docker.errors.DockerException) as exc:
        raise NetfenceError(f"lost the container engine: {_reason(exc)}",
                            remedy=_REMEDY) from None


def is_conflict(exc: Exception) -> bool:
    """Whether the engine refused a name that is taken (Docker says "already in use" or
    "already exists"; Podman says "already used" too, for a network's name)."""
    text = str(exc).lower()
    return getattr(exc, "status_code", None) == 409 or any(
        words in text for words in ("already in use", "already exists", "already used"))


def is_podman(client: DockerClient) -> bool:
    """Whether the engine is Podman (its version names a "Podman Engine" component)."""
    with engine_errors("engine version"):
        components = client.version().get("Components") or []
    return any(isinstance(c, dict) and "podman" in str(c.get("Name", "")).lower()
               for c in components)


def is_rootless(client: DockerClient) -> bool:
    """Whether the engine runs without root: Docker lists a "rootless" security option,
    Podman (4.3's compatible API) says `"Rootless": true` instead."""
    with engine_errors("engine info"):
        info = client.info()
    options = info.get("SecurityOptions") or []
    return info.get("Rootless") is True or any(
        "name=rootless" in str(option).split(",") for option in options)


def refuse_rootless(client: DockerClient) -> None:
    """One line, exit 2, for an engine without root: its containers' network namespaces
    belong to its own user namespace, where netfence can neither probe the fence nor set
    the workload's rules (and the configs' owners are that namespace's users)."""
    if is_rootless(client):
        raise UsageError(
            "the docker runtime cannot fence workloads on a rootless container engine (its "
            "containers' networks live in the engine's user namespace, out of netfence's reach)",
            remedy="use --runtime namespace, which runs without root, or a rootful engine")


def describe(client: DockerClient) -> str:
    """The engine's product and version, e.g. "Docker Engine 20.10.24" or "Podman 4.3.1"
    (with the API version it serves)."""
    with engine_errors("engine version"):
        version = client.version()
    components = [c for c in version.get("Components") or [] if isinstance(c, dict)]
    podman = next((c for c in components if "podman" in str(c.get("Name", "")).lower()), None)
    if podman is not None:
        name, number = "Podman", podman.get("Version") or version.get("Version")
    else:
        name, number = "Docker Engine", version.get("Version")
    api = version.get("ApiVersion")
    return f"{name} {number or '(version unknown)'}" + (f" (API {api})" if api else "")
