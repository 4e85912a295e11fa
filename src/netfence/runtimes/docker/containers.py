"""The fence's containers and the workload's: creation, readiness, stdio, removal.

A fence process (a backend's ProcessSpec) runs in a container of its own, named after its
role, with the workload's state directory bind-mounted at the same path: the configs the
backend wrote are where its argv says, and its logs land where `netfence logs` reads them.
Its stdout and stderr are redirected to the ProcessSpec's files by /bin/sh in the image,
as the namespace runtime does on the host.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from netfence.backends import ProcessSpec
from netfence.errors import NetfenceError, UsageError
from netfence.runtimes.docker.engine import engine_errors, is_conflict
from netfence.runtimes.grants import FileGrants
from netfence.runtimes.logs import tail
from netfence.runtimes.netns import accepts
from netfence.runtimes.waiting import wait_for

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container
    from docker.types import Mount

READY_TIMEOUT = 30.0
READY_INTERVAL = 0.05
_REDIRECT = 'o=$1 e=$2; shift 2; exec "$@" >>"$o" 2>>"$e"'


def container_name(workload: str, role: str) -> str:
    return f"{workload}-{role}"


def fence_command(spec: ProcessSpec) -> list[str]:
    """The container's argv: the backend's, with its output sent to the spec's files."""
    return ["-c", _REDIRECT, "netfence", str(spec.stdout), str(spec.stderr), *spec.argv]


def workload_command(command: Sequence[str]) -> tuple[str, list[str] | None]:
    """IMAGE [--] [ARGS...] -> the image and the command (None: the image's own)."""
    if not command:
        raise UsageError("--runtime docker needs an IMAGE to run")
    image, rest = command[0], list(command[1:])
    if rest[:1] == ["--"]:
        rest = rest[1:]
    return image, rest or None


def grant_mounts(files: FileGrants | None) -> list[Mount]:
    """The workload's grants as bind mounts at their own paths: `read` read-only, `write`
    read-write, each granted Unix socket, and /dev/null over every other host socket found
    inside a grant (connect() to it is refused). Never an engine socket (grants.check)."""
    from docker.types import Mount

    if files is None:
        return []
    mounts = [Mount(target=b.path, source=b.source, type="bind", read_only=not b.writable)
              for b in files.binds]
    mounts += [Mount(target=s.path, source=s.source, type="bind", read_only=True)
               for s in files.sockets]
    mounts += [Mount(target=m.path, source="/dev/null", type="bind", read_only=True)
               for m in files.masked]
    return mounts


def create(client: DockerClient, name: str, image: str, **options: Any) -> Container:
    """A container, or a one-line error naming what is wrong (the name, the image)."""
    import docker.errors

    with engine_errors(f"container {name}"):
        try:
            return client.containers.create(image, name=name, **options)
        except docker.errors.ImageNotFound:
            raise UsageError(f"image {image} is not present in the container engine",
                                remedy=f"build or pull it first (e.g. `docker pull {image}`)"
                                ) from None
        except docker.errors.APIError as exc:
            if is_conflict(exc):
                raise UsageError(f"a container named {name!r} already exists",
                                 remedy="pick another --name, or remove that container"
                                 ) from None
            raise


def remove(client: DockerClient, ident: str) -> None:
    """Remove a container by id or name, stopping it first; gone already is fine."""
    import docker.errors

    with engine_errors(f"container {ident}"):
        try:
            client.containers.get(ident).remove(force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if getattr(exc, "status_code", None) != 404 and "removal" not in str(exc):
                raise


@dataclass
class Readiness:
    """Waits until a fence container's endpoints accept connections."""

    container: Container
    spec: ProcessSpec

    def _netns(self) -> Path | None:
        self.container.reload()
        status = self.container.attrs.get("State", {})
        if status.get("Status") in ("exited", "dead") or status.get("Running") is False:
            raise NetfenceError(
                f"{self.container.name} exited with status {status.get('ExitCode')} while "
                f"starting: {tail(self.spec.stderr) or tail(self.spec.stdout) or 'no output'}"
            )
        pid = status.get("Pid") or 0
        path = Path(f"/proc/{pid}/ns/net")
        return path if pid and os.access(path, os.R_OK) else None

    def wait(self, timeout: float = READY_TIMEOUT) -> None:
        pending = list(self.spec.ready)

        def listening() -> bool:
            netns = self._netns()
            if netns is None:
                # Not this host's engine (or not root): no way to probe from inside, so a
                # container still running after a moment is taken as ready.
                time.sleep(1.0)
                self._netns()
                return True
            pending[:] = [e for e in pending if not accepts(e, netns)]
            return not pending

        if not wait_for(listening, timeout, READY_INTERVAL):
            raise NetfenceError(f"{self.container.name} did not start listening on "
                                f"{', '.join(map(str, pending))} within {timeout:.0f} s")


def published_port(container: Container, port: int) -> int:
    """The host port the engine bound for a container port."""
    container.reload()
    bindings = (container.attrs.get("NetworkSettings", {}).get("Ports") or {}).get(
        f"{port}/tcp") or []
    for binding in bindings:
        if binding.get("HostPort"):
            return int(binding["HostPort"])
    raise NetfenceError(f"{container.name}: port {port} was not published")


# --- the workload's stdio --------------------------------------------------------------


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def pump_frames(sock: socket.socket, stdout_fd: int, stderr_fd: int) -> None:
    """Copy the engine's multiplexed attach stream (one frame per write, its header naming
    the stream) to our stdout and stderr, byte for byte, until the stream ends."""
    from docker.utils.socket import STDERR, STDOUT, frames_iter

    fds = {STDOUT: stdout_fd, STDERR: stderr_fd}
    with contextlib.suppress(OSError):
        for stream, payload in frames_iter(sock, tty=False):  # type: ignore[no-untyped-call]
            fd = fds.get(stream)
            if fd is not None and payload:
                with contextlib.suppress(BrokenPipeError):
                    _write_all(fd, payload)


class Attachment:
    """The workload's stdin, stdout and stderr joined to ours while it runs."""

    def __init__(self, client: DockerClient, container: Container, stdin: bool) -> None:
        params = {"stdin": int(stdin), "stdout": 1, "stderr": 1, "stream": 1}
        with engine_errors("attach"):
            wrapped = client.api.attach_socket(container.id or "", params=params)
        raw = getattr(wrapped, "_sock", wrapped)
        if not isinstance(raw, socket.socket):
            raise NetfenceError("the container engine's attach stream is not a socket")
        self.wrapped = wrapped
        self.sock = raw
        self.stdin = stdin
        self.threads: list[threading.Thread] = []

    def start(self, stdin_fd: int = 0, stdout_fd: int = 1, stderr_fd: int = 2) -> None:
        reader = threading.Thread(target=pump_frames, args=(self.sock, stdout_fd, stderr_fd),
                                  name="netfence-stdout", daemon=True)
        reader.start()
        self.threads.append(reader)
        if self.stdin:
            # Daemon: a terminal that never closes must not keep netfence alive.
            threading.Thread(target=self._pump_in, args=(stdin_fd,), name="netfence-stdin",
                             daemon=True).start()

    def _pump_in(self, fd: int) -> None:
        try:
            while True:
                data = os.read(fd, 65536)
                if not data:
                    break
                self.sock.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            # Half-close: the workload reads EOF on its stdin.
            self.sock.shutdown(socket.SHUT_WR)

    def finish(self, timeout: float = 10.0) -> None:
        """Wait for the output stream to drain (the engine closes it at exit)."""
        for thread in self.threads:
            thread.join(timeout)
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        with contextlib.suppress(Exception):
            self.wrapped.close()
