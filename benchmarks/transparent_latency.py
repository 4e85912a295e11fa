"""Latency and requests/s of the fence's transparent path beside its proxy path, in one run.

For HTTP, a request straight to the name (transparent: the connection lands at Envoy's
transparent listener) against the same request in absolute form through the proxy at
127.0.0.1:3128; for HTTPS, TLS straight to the name with SNI against a CONNECT tunnel. One
keep-alive connection per case and round, the cases interleaved within one fenced workload
(benchmarks/transparent_latency_client.py). The baseline, "direct", sends the same requests
from the host namespace to the server's address, no fence, before and after the fenced run;
"added" is a path's p50 minus direct's p50. Target (issue 10): the transparent path within
10% of the proxy path. `--squid` also measures Squid's proxy path (it has no transparent one).

The servers are the tests' simulated internet (tests/support/fakenet.py): a network namespace
of this script's own at 10.203.0.0/24; nothing else is sent anywhere. It uses the test suite's
fixed addresses, so run it as root under the suite's lock:

    flock /tmp/netfence-integration.lock .venv/bin/python benchmarks/transparent_latency.py
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.fakenet import FakeNet, fakenet
from tests.support.fakenet_server import ANSWERS

CLIENT = Path(__file__).with_name("transparent_latency_client.py")
# The system interpreter: the one a fenced workload sees, so the baseline uses it too.
PYTHON = "/usr/bin/python3"
NAME = "allowed.test"
ADDRESS = ANSWERS[NAME][0]
FENCE_START = 60.0  # seconds a fence may take to start and stop, on top of the budget

LABELS = {
    "http-direct": "http  direct (no fence)",
    "http-transparent": "http  transparent",
    "http-proxy": "http  proxy (absolute-form)",
    "https-direct": "https direct (no fence)",
    "https-transparent": "https transparent (SNI)",
    "https-proxy": "https proxy (CONNECT)",
}
FENCED = ("http-transparent", "http-proxy", "https-transparent", "https-proxy")
PROXY_ONLY = ("http-proxy", "https-proxy")
DIRECT = ("http-direct", "https-direct")



class Round(TypedDict):
    first: float  # seconds: the first request, connection set-up included
    times: list[float]  # seconds: every further request on the connection


Rounds = dict[str, list[Round]]


def _client(prefix: list[str], client: Path, ca: Path, cases: tuple[str, ...],
            args: argparse.Namespace, requests: int) -> Rounds:
    argv = [*prefix, PYTHON, str(client), *cases, "--ca", str(ca), "--name", NAME,
            "--address", ADDRESS, "--requests", str(requests), "--rounds", str(args.rounds),
            "--seconds", str(args.seconds)]
    done = subprocess.run(argv, capture_output=True, text=True,
                          timeout=args.seconds + FENCE_START)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise SystemExit(f"measuring client failed (exit {done.returncode}): "
                         f"{(done.stderr or done.stdout).strip()[-2000:]}")
    result = json.loads(lines[-1])
    if result["out_of_time"]:
        raise SystemExit(f"the client ran out of its {args.seconds:g} s budget: "
                         "lower --requests/--rounds or raise --seconds")
    rounds_of: Rounds = result["rounds"]
    return rounds_of


def _fenced(proxy: str, net: FakeNet, work: Path) -> list[str]:
    return [sys.executable, "-m", "netfence", "run", "--proxy", proxy,
            "--dns-upstream", net.dns, "--allow-cidr", net.cidr, "--allow-host", NAME,
            "--read", str(work), "--read", str(net.ca_pem_path), "--"]


def _percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted samples."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _summary(rounds: list[Round]) -> dict[str, float]:
    """Percentiles over every request of every round (microseconds); requests/s and the
    first request (connection set-up included) as the median over rounds."""
    times = [r["times"] for r in rounds]
    ordered = sorted(t for ts in times for t in ts)
    return {
        "p50_us": _percentile(ordered, 0.50) * 1e6,
        "p90_us": _percentile(ordered, 0.90) * 1e6,
        "p99_us": _percentile(ordered, 0.99) * 1e6,
        "req_per_s": statistics.median(len(ts) / sum(ts) for ts in times),
        "first_us": statistics.median(r["first"] for r in rounds) * 1e6,
        "requests": len(ordered),
    }


def _round_p50s(rounds: list[Round]) -> list[float]:
    return [statistics.median(r["times"]) * 1e6 for r in rounds]


def _verdict(summary: dict[str, dict[str, float]], scheme: str) -> dict[str, float]:
    """The transparent path against the proxy path: added p50 and requests/s."""
    direct = summary[f"{scheme}-direct"]["p50_us"]
    ours, theirs = summary[f"{scheme}-transparent"], summary[f"{scheme}-proxy"]
    added, added_proxy = ours["p50_us"] - direct, theirs["p50_us"] - direct
    latency_ratio = added / added_proxy if added_proxy > 0 else math.inf
    rps_ratio = ours["req_per_s"] / theirs["req_per_s"]
    return {"added_p50_us": added, "proxy_added_p50_us": added_proxy,
            "added_ratio": latency_ratio, "req_per_s_ratio": rps_ratio}


def _holds(verdict: dict[str, float]) -> bool:
    """The target: added latency and requests/s within 10% of the proxy path's."""
    return verdict["added_ratio"] <= 1.10 and verdict["req_per_s_ratio"] >= 0.90


def _print(args: argparse.Namespace, summary: dict[str, dict[str, float]],
           diffs: dict[str, list[float]], target: dict[str, dict[str, float]]) -> None:
    squid = f"; squid: {args.squid_requests} requests x {args.rounds} rounds, a fence of " \
        "its own" if args.squid else ""
    print(f"Transparent vs proxy path (Envoy), {os.cpu_count()} CPUs. One keep-alive connection "
          f"per case and round, {args.requests} requests x {args.rounds} rounds, the cases "
          f"interleaved in one fence; direct: {2 * args.rounds} rounds from the host "
          f"namespace, no fence{squid}.\np50/p90/p99 over all requests; added p50: minus "
          "direct's; req/s and first request (set-up, and for transparent the client's DNS "
          "lookup, included): median over rounds.")
    print(f"{'path':<34} {'p50 us':>7} {'p90 us':>7} {'p99 us':>7} {'added p50':>9} "
          f"{'req/s':>6} {'first us':>8}")
    for case, row in summary.items():
        scheme = case.removeprefix("squid-").split("-")[0]
        added = row["p50_us"] - summary[f"{scheme}-direct"]["p50_us"]
        label = LABELS[case.removeprefix("squid-")]
        if case.startswith("squid-"):
            label = label.replace("proxy", "squid proxy")
        shown = "" if case in DIRECT else f"{added:+.0f}"
        print(f"{label:<34} {row['p50_us']:7.0f} {row['p90_us']:7.0f} {row['p99_us']:7.0f} "
              f"{shown:>9} {row['req_per_s']:6.0f} {row['first_us']:8.0f}")
    for scheme, per_round in diffs.items():
        print(f"{scheme}: transparent - proxy p50 per round: "
              + " ".join(f"{d:+.0f}" for d in per_round) + " us")
    for scheme, v in target.items():
        print(f"{scheme}: the transparent path adds {v['added_p50_us']:.0f} us at p50, the proxy "
              f"path {v['proxy_added_p50_us']:.0f} us ({(v['added_ratio'] - 1) * 100:+.1f}%); "
              f"req/s {(v['req_per_s_ratio'] - 1) * 100:+.1f}%; target within 10%: "
              f"{'holds' if _holds(v) else 'MISSED'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500, help="per connection and round")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=120,
                        help="time budget of each measuring client")
    parser.add_argument("--squid", action="store_true", help="also Squid's proxy path")
    parser.add_argument("--squid-requests", type=int, default=50,
                        help="per connection and round for Squid (keep-alive requests take "
                             "about 44 ms through it with this server)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the results here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces): run it with sudo, under "
                         "flock /tmp/netfence-integration.lock")

    work = Path(tempfile.mkdtemp(prefix="nf-bench-"))
    try:
        # World-readable: the fenced client runs as an unprivileged user.
        work.chmod(0o755)
        client = work / CLIENT.name
        shutil.copyfile(CLIENT, client)
        client.chmod(0o644)
        with fakenet(lifetime=args.seconds * 4 + FENCE_START * 3) as net:
            ca = net.ca_pem_path
            before = _client([], client, ca, DIRECT, args, args.requests)
            fenced = _client(_fenced("envoy", net, work), client, ca, FENCED, args,
                             args.requests)
            squid = (_client(_fenced("squid", net, work), client, ca, PROXY_ONLY, args,
                             args.squid_requests) if args.squid else {})
            after = _client([], client, ca, DIRECT, args, args.requests)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rounds: Rounds = {case: before[case] + after[case] for case in DIRECT}
    rounds.update(fenced)
    rounds.update({f"squid-{case}": r for case, r in squid.items()})
    order = ("http-direct", "http-transparent", "http-proxy", "squid-http-proxy",
             "https-direct", "https-transparent", "https-proxy", "squid-https-proxy")
    summary = {case: _summary(rounds[case]) for case in order if case in rounds}
    diffs = {scheme: [t - p for t, p in zip(_round_p50s(rounds[f"{scheme}-transparent"]),
                                           _round_p50s(rounds[f"{scheme}-proxy"]), strict=True)]
             for scheme in ("http", "https")}
    target = {scheme: _verdict(summary, scheme) for scheme in ("http", "https")}
    _print(args, summary, diffs, target)
    if args.json:
        result = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
                  "kernel": platform.release(), "requests": args.requests,
                  "rounds": args.rounds, "direct_rounds": 2 * args.rounds, "summary": summary,
                  "transparent_minus_proxy_p50_us_per_round": diffs,
                  "target": {scheme: {**v, "holds": _holds(v)} for scheme, v in target.items()}}
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
