"""What the running Envoy applies, asked of its admin API (a Unix socket in the state dir):
whether it took a setup's listener and route files (`NetworkProxy.settled`)."""

from __future__ import annotations

import http.client
import json
import re
import socket
from pathlib import Path

from netfence.backends.base import ProxySetup
from netfence.backends.envoy._xds import LISTENERS_NAME, route_name_of, version_of

# Bounded: settled is polled in a loop; one stats read takes about a millisecond.
TIMEOUT_S = 1.0
LDS_VERSION = "listener_manager.lds.version_text"
WARMING = "listener_manager.total_listeners_warming"
# RDS stats sit under the HCM's stat prefix: http.PREFIX.rds.NAME.version_text.
_RDS_VERSION = re.compile(r"^http\.[^:]*\.rds\.(.+)\.version_text$")
_STATS_FILTER = r"(lds\.version_text|total_listeners_warming|\.rds\..*\.version_text)$"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("envoy-admin", timeout=TIMEOUT_S)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT_S)
        try:
            sock.connect(str(self._path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


def admin_get(admin: Path, path: str) -> str:
    """GET an admin path; OSError (http.client's errors included) when Envoy does not answer."""
    conn = _UnixConnection(admin)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read().decode("utf-8", "replace")
        if response.status != 200:
            raise OSError(f"envoy admin {path}: HTTP {response.status}")
        return body
    except http.client.HTTPException as exc:
        raise OSError(f"envoy admin {path}: {exc}") from exc
    finally:
        conn.close()


def reported(admin: Path) -> tuple[str | None, dict[str, str], int]:
    """(the LDS version, the RDS versions by route config name, listeners warming)."""
    from urllib.parse import quote

    text = admin_get(admin, "/stats?filter=" + quote(_STATS_FILTER))
    lds: str | None = None
    rds: dict[str, str] = {}
    warming = 0
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        value = value.strip().strip('"')
        if name == LDS_VERSION:
            lds = value
        elif name == WARMING:
            warming = int(value) if value.isdigit() else 0
        elif (found := _RDS_VERSION.match(name)) is not None:
            rds[found.group(1)] = value
    return lds, rds, warming


def applies(setup: ProxySetup, bootstrap_name: str) -> bool:
    """Whether the Envoy of `setup` (its admin socket named in its bootstrap) reports the
    versions of exactly the setup's listener and route files, with no listener warming."""
    bootstraps = [f for f in setup.files if f.path.name == bootstrap_name]
    if len(bootstraps) != 1:
        return True  # no Envoy here
    admin = Path(json.loads(bootstraps[0].content)["admin"]["address"]["pipe"]["path"])
    want_lds: str | None = None
    want_rds: dict[str, str | None] = {}
    for spec in setup.files:
        if spec.path.name == LISTENERS_NAME:
            want_lds = version_of(spec.content)
        elif (name := route_name_of(spec.path)) is not None:
            want_rds[name] = version_of(spec.content)
    try:
        lds, rds, warming = reported(admin)
    except OSError:
        return False
    return (lds == want_lds and warming == 0
            and all(rds.get(name) == version for name, version in want_rds.items()))
