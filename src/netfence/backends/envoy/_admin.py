"""What the running Envoy applies, asked of its admin API (a Unix socket in the state dir):
whether it took a setup's listener and route files (`NetworkProxy.settled`)."""

from __future__ import annotations

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


def _quoted(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._" else f"%{ord(c):02X}" for c in text)


_STATS_FILTER_QUOTED = _quoted(_STATS_FILTER)


def admin_get(admin: Path, path: str) -> str:
    """GET an admin path; OSError when Envoy does not answer in time or not with 200.
    HTTP/1.1 with `Connection: close` (Envoy answers HTTP/1.0 with 426), read to the end;
    no http.client: importing it costs every start about 15 ms."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT_S)
        sock.connect(str(admin))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: envoy-admin\r\nConnection: close\r\n\r\n"
                     .encode())
        chunks: list[bytes] = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or status[1] != b"200":
        raise OSError(f"envoy admin {path}: {head[:80]!r}")
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunked(body)
    return body.decode("utf-8", "replace")


def _dechunked(body: bytes) -> bytes:
    out: list[bytes] = []
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            raise OSError("envoy admin: a malformed chunked body") from None
        if size == 0:
            break
        out.append(rest[:size])
        body = rest[size + 2:]
    return b"".join(out)


def stats(admin: Path, pattern: str) -> dict[str, str]:
    """The stats whose names match `pattern` (Envoy's /stats filter, a regex it searches
    each name for), by name, each value as text (a text readout without its quotes)."""
    text = admin_get(admin, "/stats?filter=" + _quoted(pattern))
    found: dict[str, str] = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        found[name] = value.strip().strip('"')
    return found


def reported(admin: Path) -> tuple[str | None, dict[str, str], int]:
    """(the LDS version, the RDS versions by route config name, listeners warming)."""
    text = admin_get(admin, "/stats?filter=" + _STATS_FILTER_QUOTED)
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
