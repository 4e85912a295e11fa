"""The measuring client of benchmarks/transparent_latency.py (standard library only: it runs
inside the fence, as an unprivileged user, with only its own directory and the CA granted).

Each case opens ONE keep-alive connection per round and sends `--requests` GETs on it; the
first request (connect, DNS, TLS handshake, CONNECT) is timed apart. The cases take turns
within each round, in reverse order every other round, so machine noise falls on all alike.
Prints one line of JSON: per case and round, the first request's time and every other
request's time, in seconds.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import ssl
import sys
import time

# case -> (scheme, how it connects)
#   direct:      to the server's address, no fence (run from the host namespace)
#   transparent: to the name, as a program that ignores the proxy variables would
#   proxy:       through the fence's proxy: absolute-form for HTTP, a CONNECT tunnel for HTTPS
CASES = {
    "http-direct": ("http", "direct"),
    "http-transparent": ("http", "transparent"),
    "http-proxy": ("http", "proxy"),
    "https-direct": ("https", "direct"),
    "https-transparent": ("https", "transparent"),
    "https-proxy": ("https", "proxy"),
}
PORTS = {"http": 80, "https": 443}


class PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to a given address with the SNI and certificate check of `host`: the direct
    baseline sends the same TLS as the fenced cases without a resolver for the test names."""

    def __init__(self, host: str, address: str, context: ssl.SSLContext,
                 timeout: float) -> None:
        super().__init__(host, PORTS["https"], context=context, timeout=timeout)
        self.address = address
        self.tls = context

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)


def connection(case: str, args: argparse.Namespace,
               tls: ssl.SSLContext) -> tuple[http.client.HTTPConnection, str]:
    """The connection for a case and the request target to send on it."""
    scheme, path = CASES[case]
    port = PORTS[scheme]
    proxy_host, _, proxy_port = args.proxy.rpartition(":")
    if scheme == "http":
        if path == "direct":
            return http.client.HTTPConnection(args.address, port, timeout=args.timeout), "/"
        if path == "transparent":
            return http.client.HTTPConnection(args.name, port, timeout=args.timeout), "/"
        return (http.client.HTTPConnection(proxy_host, int(proxy_port), timeout=args.timeout),
                f"http://{args.name}/")
    if path == "direct":
        return PinnedHTTPS(args.name, args.address, context=tls, timeout=args.timeout), "/"
    if path == "transparent":
        return (http.client.HTTPSConnection(args.name, port, context=tls, timeout=args.timeout),
                "/")
    conn = http.client.HTTPSConnection(proxy_host, int(proxy_port), context=tls,
                                       timeout=args.timeout)
    conn.set_tunnel(args.name, port)
    return conn, "/"


def get(conn: http.client.HTTPConnection, target: str, name: str) -> str:
    conn.request("GET", target, headers={"Host": name})
    response = conn.getresponse()
    body = response.read()
    if response.status != 200 or not body.startswith(b"fakenet ok"):
        raise RuntimeError(f"status {response.status}: {body[:200]!r}")
    return response.getheader("X-Fakenet-Server", "")


def one_round(case: str, args: argparse.Namespace, tls: ssl.SSLContext,
              deadline: float) -> dict[str, object]:
    conn, target = connection(case, args, tls)
    try:
        start = time.perf_counter()
        server = get(conn, target, args.name)
        first = time.perf_counter() - start
        # The server that answered: the request really went through to the simulated
        # internet, at the address the name resolves to.
        if server != f"{args.address}:{PORTS[CASES[case][0]]}":
            raise RuntimeError(f"answered by {server!r}")
        times = []
        for _ in range(args.requests):
            if time.monotonic() > deadline:
                break
            start = time.perf_counter()
            get(conn, target, args.name)
            times.append(time.perf_counter() - start)
        return {"first": first, "times": times}
    finally:
        conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("cases", nargs="+", choices=sorted(CASES))
    parser.add_argument("--ca", required=True, help="CA certificate (PEM) of the test servers")
    parser.add_argument("--name", default="allowed.test", help="host name requested")
    parser.add_argument("--address", required=True, help="address the name resolves to")
    parser.add_argument("--proxy", default="127.0.0.1:3128", help="the fence's proxy")
    parser.add_argument("--requests", type=int, default=500, help="per connection")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=120, help="time budget, in all")
    parser.add_argument("--timeout", type=float, default=10, help="per socket operation")
    args = parser.parse_args()
    tls = ssl.create_default_context(cafile=args.ca)
    deadline = time.monotonic() + args.seconds
    rounds: dict[str, list[dict[str, object]]] = {case: [] for case in args.cases}
    for number in range(args.rounds):
        if time.monotonic() > deadline:
            break
        # Every other round in reverse order: no case always runs right after another.
        for case in args.cases if number % 2 == 0 else reversed(args.cases):
            rounds[case].append(one_round(case, args, tls, deadline))
    out_of_time = time.monotonic() > deadline
    print(json.dumps({"requests": args.requests, "out_of_time": out_of_time,
                      "rounds": rounds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
