"""Reaching a fenced HTTP workload through its ingress, as a client on the host does."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

ECHO_BODY = b"inside the fence /index.html\n"


def echo_server(bind: str, port: int) -> str:
    """Python source of an HTTP server that answers every GET with ECHO_BODY's shape."""
    return ("import http.server as h\n"
            "class H(h.BaseHTTPRequestHandler):\n"
            " def do_GET(self):\n"
            "  body = b'inside the fence ' + self.path.encode() + b'\\n'\n"
            "  self.send_response(200); self.send_header('Content-Length', str(len(body)))\n"
            "  self.end_headers(); self.wfile.write(body)\n"
            f"h.HTTPServer(({bind!r}, {port}), H).serve_forever()\n")


def get(url: str, host: str | None = None) -> tuple[int, bytes]:
    """Status and body of a GET to a loopback URL, never through a proxy."""
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=5) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


def get_when_up(url: str, timeout: float) -> tuple[int, bytes]:
    """GET until the workload answers 200 or `timeout` seconds pass; the last answer."""
    status, body = 0, b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status, body = get(url)
            if status == 200:
                break
        except OSError:
            pass
        time.sleep(0.2)
    return status, body
