"""A tiny UDP DNS responder for tests: fixed answers, NXDOMAIN otherwise, every query recorded.

Use it in-process (`TinyDNS` runs in a thread) or as a script inside a network namespace
(`python tinydns.py --listen 127.0.0.1:53 --record FILE --answer name=ip ...`), where each
query it sees is appended to FILE as one `name type` line.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord


def respond(data: bytes, answers: Mapping[str, Sequence[str]]) -> tuple[bytes, str, str] | None:
    """The reply to one query packet plus the (name, type) asked; None for garbage."""
    try:
        request = DNSRecord.parse(data)
    except Exception:  # any malformed packet is simply ignored, as a server would
        return None
    name = str(request.q.qname).rstrip(".").lower()
    qtype = QTYPE[request.q.qtype]
    reply = request.reply()
    addrs = answers.get(name)
    if addrs is None:
        reply.header.rcode = RCODE.NXDOMAIN
    for text in addrs or ():
        ip = ipaddress.ip_address(text)
        if ip.version == 4 and qtype == "A":
            reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(text), ttl=5))
        elif ip.version == 6 and qtype == "AAAA":
            reply.add_answer(RR(request.q.qname, QTYPE.AAAA, rdata=AAAA(text), ttl=5))
    return reply.pack(), name, qtype


class TinyDNS:
    """A responder on a UDP socket in a background thread; `queries` lists (name, type)."""

    def __init__(self, answers: Mapping[str, Sequence[str]], host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.answers = {k.lower(): list(v) for k, v in answers.items()}
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.settimeout(0.2)  # lets the thread notice stop() promptly
        self.host = host
        self.port: int = self.sock.getsockname()[1]
        self.queries: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self, on_query: Callable[[str, str], None] | None = None) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            result = respond(data, self.answers)
            if result is None:
                continue
            packet, name, qtype = result
            self.queries.append((name, qtype))
            if on_query is not None:
                on_query(name, qtype)
            self.sock.sendto(packet, peer)

    def names(self) -> set[str]:
        return {name for name, _ in self.queries}

    def __enter__(self) -> TinyDNS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


def query(name: str, host: str, port: int, qtype: str = "A",
          timeout: float = 2.0) -> tuple[str, list[str]]:
    """Ask a server once: (rcode name, answer addresses)."""
    packet = DNSRecord.question(name, qtype).send(host, port, timeout=timeout)
    reply = DNSRecord.parse(packet)
    return RCODE[reply.header.rcode], [str(rr.rdata) for rr in reply.rr]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:53")
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--answer", action="append", default=[], help="name=ip")
    parser.add_argument("--lifetime", type=float, default=60.0, help="seconds, then exit")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    answers: dict[str, list[str]] = {}
    for item in args.answer:
        name, _, ip = item.partition("=")
        answers.setdefault(name.lower(), []).append(ip)
    server = TinyDNS(answers, host.strip("[]"), int(port))

    def record(name: str, qtype: str) -> None:
        with args.record.open("a", encoding="utf-8") as fh:
            fh.write(f"{name} {qtype}\n")

    args.record.touch()
    print(f"listening {server.host}:{server.port}", flush=True)
    # Serve in this thread until the lifetime ends: a forgotten responder stops by itself.
    deadline = time.monotonic() + args.lifetime
    watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), server._stop.set)
    watchdog.daemon = True
    watchdog.start()
    server._serve(record)
    server.sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
