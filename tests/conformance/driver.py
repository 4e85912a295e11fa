"""The conformance driver: runs inside the fence as the workload (stdlib only, any python3).

It reads one JSON case per line on stdin and answers one JSON result per line on stdout,
so a test keeps one fence open and sends it as many requests as it likes. Every request
goes raw over a socket to the fence's egress proxy (127.0.0.1:3128), exactly as written,
so malformed and smuggling shapes reach the proxy unchanged.

Case kinds:
- http: connect to the proxy, then for each chunk of `sends`: send it and read `reads[i]`
  HTTP responses (keep-alive: several requests on one connection, in turn).
- connect: send `sends[0]` (a CONNECT); when answered 200, speak `tunnel` (an HTTP
  request, over TLS when `tls_name` is set) through the tunnel and read its response.
- dial: a direct TCP connect or UDP exchange to `addr`:`port`, ignoring the proxy.
- direct: as http, but to `addr`:`port` itself, ignoring the proxy (the transparent path);
  over TLS when `tls` is set, sending `tls_name` as the SNI (none when it is null).
Every operation is bounded by `timeout` seconds; reads are bounded in size.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import sys
import time
from typing import Any

PROXY = ("127.0.0.1", 3128)
MAX_BODY = 4096
MAX_READ = 1 << 20


class Closed(Exception):
    pass


class Reader:
    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.buf = b""
        self.deadline = deadline
        self.total = 0

    def _more(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        self.sock.settimeout(left)
        data = self.sock.recv(65536)
        if not data:
            raise Closed()
        self.total += len(data)
        if self.total > MAX_READ:
            raise Closed()
        self.buf += data

    def until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            self._more()
        head, _, self.buf = self.buf.partition(marker)
        return head

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._more()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def rest(self) -> bytes:
        try:
            while True:
                self._more()
        except (Closed, TimeoutError, OSError):
            pass
        out, self.buf = self.buf, b""
        return out


def read_response(reader: Reader, method: str) -> dict[str, Any]:
    """One final HTTP/1.x response (interim 1xx ones skipped): status, headers, body."""
    while True:
        response = read_one(reader, method)
        status = response["status"]
        if status is None or not 100 <= status < 200 or status == 101:
            return response


def read_one(reader: Reader, method: str) -> dict[str, Any]:
    head = reader.until(b"\r\n\r\n").decode("latin-1")
    lines = head.split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    body = b""
    no_body = method in ("HEAD", "CONNECT") and status is not None and 200 <= status < 300
    if no_body or status in (204, 304) or (status is not None and 100 <= status < 200):
        pass
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int(reader.until(b"\r\n").split(b";")[0].strip() or b"0", 16)
            if size == 0:
                reader.until(b"\r\n")
                break
            body += reader.exactly(size)
            reader.exactly(2)
    elif "content-length" in headers and headers["content-length"].isdigit():
        body = reader.exactly(int(headers["content-length"]))
    else:
        body = reader.rest()
    return {"status": status, "headers": headers,
            "body": body[:MAX_BODY].decode("utf-8", "replace")}


def method_of(data: bytes) -> str:
    return data.split(b" ", 1)[0].decode("latin-1")


def run_http(case: dict[str, Any], deadline: float, to: tuple[str, int] = PROXY) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    error = None
    family = socket.AF_INET6 if ":" in to[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    channel: socket.socket = sock
    try:
        sock.settimeout(5)
        sock.connect(to)
        if case.get("tls"):
            context = ssl.create_default_context(cafile=case.get("cafile"))
            if case.get("tls_name") is None:  # no SNI: nothing to check the certificate by
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            channel = context.wrap_socket(sock, server_hostname=case.get("tls_name"))
        reader = Reader(channel, deadline)
        for i, chunk in enumerate(case["sends"]):
            data = base64.b64decode(chunk)
            channel.sendall(data)
            for _ in range(case.get("reads", [1] * len(case["sends"]))[i]):
                results.append(read_response(reader, method_of(data)))
    except Closed:
        error = "closed"
    except TimeoutError:
        error = "timeout"
    except ssl.SSLError as exc:
        error = f"tls {exc.reason}"
    except OSError as exc:
        error = f"oserror {exc.errno}"
    finally:
        channel.close()
    return {"responses": results, "error": error}


def run_connect(case: dict[str, Any], deadline: float) -> dict[str, Any]:
    sock = socket.create_connection(PROXY, timeout=5)
    results: list[dict[str, Any]] = []
    tunnel = None
    error = None
    try:
        reader = Reader(sock, deadline)
        data = base64.b64decode(case["sends"][0])
        sock.sendall(data)
        response = read_response(reader, "CONNECT")
        results.append(response)
        if response["status"] == 200 and case.get("tunnel"):
            request = base64.b64decode(case["tunnel"])
            channel: socket.socket = sock
            if case.get("tls_name"):
                context = ssl.create_default_context(cafile=case["cafile"])
                channel = context.wrap_socket(sock, server_hostname=case["tls_name"])
                # Anything the proxy sent past its 200 belongs to the TLS stream: none.
            channel.sendall(request)
            inner = Reader(channel, deadline)
            inner.buf = reader.buf if channel is sock else b""
            tunnel = read_response(inner, method_of(request))
    except Closed:
        error = "closed"
    except TimeoutError:
        error = "timeout"
    except ssl.SSLError as exc:
        error = f"tls {exc.reason}"
    except OSError as exc:
        error = f"oserror {exc.errno}"
    finally:
        sock.close()
    return {"responses": results, "tunnel": tunnel, "error": error}


def run_dial(case: dict[str, Any], deadline: float) -> dict[str, Any]:
    family = socket.AF_INET6 if ":" in case["addr"] else socket.AF_INET
    kind = socket.SOCK_DGRAM if case.get("udp") else socket.SOCK_STREAM
    sock = socket.socket(family, kind)
    sock.settimeout(max(0.1, deadline - time.monotonic()))
    try:
        sock.connect((case["addr"], case["port"]))
        payload = base64.b64decode(case.get("payload", ""))
        if payload:
            sock.sendall(payload)
            return {"connected": True, "reply": base64.b64encode(sock.recv(4096)).decode()}
        return {"connected": True}
    except TimeoutError:
        return {"connected": False, "error": "timeout"}
    except OSError as exc:
        return {"connected": False, "error": f"oserror {exc.errno}"}
    finally:
        sock.close()


def main() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        case = json.loads(line)
        deadline = time.monotonic() + float(case.get("timeout", 5))
        kind = case["kind"]
        try:
            if kind == "connect":
                result = run_connect(case, deadline)
            elif kind == "dial":
                result = run_dial(case, deadline)
            elif kind == "direct":
                result = run_http(case, deadline, (case["addr"], case["port"]))
            else:
                result = run_http(case, deadline)
        except OSError as exc:
            result = {"responses": [], "error": f"oserror {exc.errno}"}
        result["id"] = case["id"]
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


main()
