"""The servers of the simulated internet; runs inside its network namespace as one process.

HTTP on ports 80 and 8080 and HTTPS on 443 (certificate from the test CA), on every address
of the namespace, answer `fakenet ok host=<Host> path=<path>`; DNS on port 53 (UDP and TCP)
answers the fixed names of `ANSWERS` and logs every question to a file. The process prints
`ready` once every socket is bound and exits by itself after `--lifetime` seconds.
"""

from __future__ import annotations

import argparse
import itertools
import socketserver
import ssl
import struct
import sys
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from dnslib import QTYPE, RCODE, RR, A, DNSRecord

HOST_IP = "10.203.0.1"  # the host end of the veth: a host address the fence must deny
SERVER_IPS = ("10.203.0.2", "10.203.0.3", "10.203.0.4")
UNASSIGNED_PRIVATE = "10.203.9.9"  # inside the unreachable test range, outside allow_cidr

ANSWERS: dict[str, tuple[str, ...]] = {
    "allowed.test": ("10.203.0.2",),
    "www.allowed.test": ("10.203.0.2",),
    "other.test": ("10.203.0.3",),
    "denied.test": ("10.203.0.4",),
    "loopback.test": ("127.0.0.1",),
    "metadata.test": ("169.254.169.254",),
    "hostaddr.test": (HOST_IP,),
    "private.test": (UNASSIGNED_PRIVATE,),
    "mixed.test": ("10.203.0.2", "127.0.0.1"),
    # For the conformance suite (tests/conformance): the other orders and mixes of answers,
    # a wildcard allowlist entry and look-alikes of allowed names. Look-alikes resolve to a
    # server so that a fence letting one through shows as an answered request.
    "mixed-first-denied.test": ("127.0.0.1", "10.203.0.2"),
    "mixed-private.test": ("10.203.0.2", UNASSIGNED_PRIVATE),
    "mixed-host.test": ("10.203.0.3", HOST_IP),
    "wild.test": ("10.203.0.3",),
    "a.wild.test": ("10.203.0.3",),
    "b.a.wild.test": ("10.203.0.3",),
    "evilwild.test": ("10.203.0.4",),
    "wild.test.evil.test": ("10.203.0.4",),
    "evilallowed.test": ("10.203.0.4",),
    "allowed.test.other.test": ("10.203.0.4",),
    "allowed.testx": ("10.203.0.4",),
    "www.allowed.test.evil.test": ("10.203.0.4",),
}
# A rebinding name: its answers alternate between these, with TTL 0.
REBIND_NAME = "rebind.test"
REBIND_ANSWERS = ("10.203.0.2", "127.0.0.1")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as two writes: with Nagle on, the body waits for the client's
    # delayed ACK of the headers, and every keep-alive request after the first took 44 ms.
    disable_nagle_algorithm = True

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = f"fakenet ok host={self.headers.get('Host', '')} path={self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        # Which server answered: the address a fence actually dialed.
        address, port = self.connection.getsockname()[:2]
        self.send_header("X-Fakenet-Server", f"{address}:{port}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_HEAD = do_PUT = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass  # the tests read the DNS log, not the HTTP one


class DNSResponder:
    def __init__(self, log: Path) -> None:
        self.log = log
        self.lock = threading.Lock()
        self.rebind: Iterator[str] = itertools.cycle(REBIND_ANSWERS)

    def reply(self, data: bytes) -> bytes | None:
        try:
            request = DNSRecord.parse(data)
        except Exception:  # a malformed packet is ignored, as a real server would
            return None
        name = str(request.q.qname).rstrip(".").lower()
        qtype = QTYPE.get(request.q.qtype, str(request.q.qtype))
        with self.lock:
            with self.log.open("a", encoding="utf-8") as fh:
                fh.write(f"{name} {qtype}\n")
            ttl = 0 if name == REBIND_NAME else 5
            addrs = (next(self.rebind),) if name == REBIND_NAME else ANSWERS.get(name)
        reply = request.reply()
        if addrs is None:
            reply.header.rcode = RCODE.NXDOMAIN
        elif qtype == "A":
            for ip in addrs:
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(ip), ttl=ttl))
        return bytes(reply.pack())


def serve_dns(responder: DNSResponder, address: str) -> list[socketserver.BaseServer]:
    class UDP(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            data, sock = self.request
            answer = responder.reply(data)
            if answer is not None:
                sock.sendto(answer, self.client_address)

    class TCP(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            header = self.rfile.read(2)
            if len(header) != 2:
                return
            answer = responder.reply(self.rfile.read(struct.unpack("!H", header)[0]))
            if answer is not None:
                self.wfile.write(struct.pack("!H", len(answer)) + answer)

    socketserver.ThreadingUDPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    return [socketserver.ThreadingUDPServer((address, 53), UDP),
            socketserver.ThreadingTCPServer((address, 53), TCP)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cert", type=Path, required=True, help="server certificate + key PEM")
    parser.add_argument("--dns-log", type=Path, required=True)
    parser.add_argument("--lifetime", type=float, default=3600.0)
    args = parser.parse_args(argv)

    ThreadingHTTPServer.daemon_threads = True
    servers: list[socketserver.BaseServer] = [ThreadingHTTPServer(("0.0.0.0", port), Handler)
                                              for port in (80, 8080)]
    tls = ThreadingHTTPServer(("0.0.0.0", 443), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert)
    tls.socket = context.wrap_socket(tls.socket, server_side=True)
    servers.append(tls)
    args.dns_log.touch()
    servers += serve_dns(DNSResponder(args.dns_log), SERVER_IPS[0])
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    # Exit after the lifetime even if nobody stops us: a forgotten server cannot linger.
    threading.Event().wait(args.lifetime)
    return 0


if __name__ == "__main__":
    sys.exit(main())
