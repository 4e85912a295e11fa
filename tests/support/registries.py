"""Package registries served on loopback, for installers that must reach nothing else.

From the artifacts scripts/install fetched (tests send nothing off this machine):
`pypi_index` serves a PEP 503 simple index of a directory of wheels (pip and uv speak it),
`npm_registry` a minimal npm registry of a directory of tarballs (a package document per
name, `/<name>` or `/@scope%2fname`, its versions' `dist.tarball` pointing back here).
`tripwire` is a proxy that forwards nothing: installers pointed at it for everything but
loopback fail at once, and the test reads what they tried. Each records the requests it
answered, so a test can say that an installer used it, or that nothing did.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import http.server
import json
import re
import tarfile
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
PACKAGES = Path(__file__).parent / "packages"
WHEELS = PACKAGES / "wheels"
TARBALLS = PACKAGES / "tarballs"
# What a route answers: (status, content type, body).
Answer = tuple[int, str, bytes]


@dataclass
class Served:
    """A server on loopback: its base URL, and "METHOD PATH" of each request, in order."""

    url: str
    requests: list[str] = field(default_factory=list)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, route: Callable[[str, str], Answer], served: Served) -> None:
        super().__init__((LOOPBACK, 0), _Handler)
        self.route = route
        self.served = served


class _Handler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.0 (the default): a connection per request. Keep-alive was measured slower
    with pip here (headers and body go out as two writes, which meet delayed ACKs)."""

    server: _Server

    def _answer(self) -> None:
        self.server.served.requests.append(f"{self.command} {self.path}")
        status, kind, body = self.server.route(self.command, self.path)
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_CONNECT = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the requests are recorded; stderr stays the test's


@contextlib.contextmanager
def serve(route: Callable[[str, str], Answer]) -> Iterator[Served]:
    """`route` answering on 127.0.0.1 at a free port until the block ends."""
    served = Served("")
    server = _Server(route, served)
    served.url = f"http://{LOOPBACK}:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name="loopback-registry", daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _not_found(what: str) -> Answer:
    return 404, "text/plain", f"not here: {what}\n".encode()


def missing_artifacts() -> str | None:
    """Why the registries cannot be served (scripts/install has not fetched what the pins
    name, or fetched it for older pins), or None. The stamp is `sha256sum < PINS`."""
    for directory, pins in ((WHEELS, PACKAGES / "requirements.txt"),
                            (TARBALLS, PACKAGES / "npm" / "package-lock.json")):
        want = f"{hashlib.sha256(pins.read_bytes()).hexdigest()}  -"
        try:
            stamp = (directory / ".fetched").read_text().strip()
        except OSError:
            stamp = ""
        if stamp != want:
            return f"{directory} does not hold what {pins.name} pins: run scripts/install"
    return None


# --- PyPI ---------------------------------------------------------------------------------


def normalise(name: str) -> str:
    """A project name as PEP 503 spells it in URLs."""
    return re.sub(r"[-_.]+", "-", name).lower()


@contextlib.contextmanager
def pypi_index(wheels: Path = WHEELS) -> Iterator[Served]:
    """A simple index (PEP 503) of the wheels in `wheels`: `URL/simple/`."""
    projects: dict[str, list[tuple[str, str]]] = {}
    for wheel in sorted(wheels.glob("*.whl")):
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        projects.setdefault(normalise(wheel.name.split("-")[0]), []).append(
            (wheel.name, digest))

    def page(links: list[tuple[str, str]]) -> Answer:
        anchors = "".join(f'<a href="{html.escape(href)}">{html.escape(text)}</a>\n'
                          for href, text in links)
        body = f"<!DOCTYPE html>\n<html><body>\n{anchors}</body></html>\n"
        return 200, "text/html", body.encode()

    def route(method: str, path: str) -> Answer:
        path = urllib.parse.urlsplit(path).path
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"read-only\n"
        if path == "/simple/":
            return page([(f"/simple/{name}/", name) for name in projects])
        if m := re.fullmatch(r"/simple/([^/]+)/?", path):
            files = projects.get(normalise(m[1]))
            if files is None:
                return _not_found(m[1])
            return page([(f"/files/{name}#sha256={digest}", name) for name, digest in files])
        if m := re.fullmatch(r"/files/([^/]+\.whl)", path):
            wheel = wheels / m[1]
            if wheel.is_file():
                return 200, "application/octet-stream", wheel.read_bytes()
        return _not_found(path)

    with serve(route) as served:
        yield served


# --- npm ----------------------------------------------------------------------------------


def _manifest(tarball: Path) -> dict[str, Any]:
    """The package.json inside an npm tarball (under its one top directory)."""
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if len(parts) == 2 and parts[1] == "package.json" and member.isfile():
                data = tar.extractfile(member)
                assert data is not None
                manifest = json.loads(data.read())
                assert isinstance(manifest, dict)
                return manifest
    raise ValueError(f"{tarball}: no package.json")


def _version_key(version: str) -> tuple[tuple[int, ...], int, str]:
    """Semver order, enough for picking `latest`: releases after their pre-releases."""
    core, _, pre = version.partition("-")
    numbers = tuple(int(n) if n.isdigit() else 0 for n in core.split("+")[0].split("."))
    return numbers, 0 if pre else 1, pre


@contextlib.contextmanager
def npm_registry(tarballs: Path = TARBALLS) -> Iterator[Served]:
    """An npm registry of the tarballs in `tarballs`: `URL/`. Each name's `latest` is the
    highest version here."""
    versions: dict[str, dict[str, tuple[dict[str, Any], Path]]] = {}
    for tarball in sorted(tarballs.glob("*.tgz")):
        manifest = _manifest(tarball)
        versions.setdefault(manifest["name"], {})[manifest["version"]] = (manifest, tarball)
    files = {t.name: t for by_version in versions.values() for _, t in by_version.values()}

    def document(name: str, base: str) -> dict[str, Any]:
        entries: dict[str, Any] = {}
        for version, (manifest, tarball) in versions[name].items():
            data = tarball.read_bytes()
            integrity = base64.b64encode(hashlib.sha512(data).digest()).decode()
            entries[version] = {
                **manifest, "_id": f"{name}@{version}",
                "dist": {"tarball": f"{base}/-/tarballs/{tarball.name}",
                         "integrity": f"sha512-{integrity}",
                         "shasum": hashlib.sha1(data).hexdigest()}}  # npm's own
        latest = max(entries, key=_version_key)
        return {"name": name, "dist-tags": {"latest": latest}, "versions": entries}

    def route(method: str, path: str) -> Answer:
        path = urllib.parse.urlsplit(path).path
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"read-only\n"
        if m := re.fullmatch(r"/-/tarballs/([^/]+\.tgz)", path):
            tarball = files.get(m[1])
            if tarball is not None:
                return 200, "application/octet-stream", tarball.read_bytes()
            return _not_found(path)
        name = urllib.parse.unquote(path.removeprefix("/"))
        if name not in versions:
            return 404, "application/json", json.dumps({"error": "Not found"}).encode()
        body = json.dumps(document(name, served.url)).encode()
        return 200, "application/json", body

    with serve(route) as served:
        yield served


# --- the tripwire -------------------------------------------------------------------------


@contextlib.contextmanager
def tripwire() -> Iterator[Served]:
    """A proxy that refuses every request (403) and records it: set as an installer's
    proxy for everything but loopback, it catches any request that would leave."""
    message = b"refused: a test's installer may reach loopback only\n"
    with serve(lambda method, path: (403, "text/plain", message)) as served:
        yield served
