"""Start-up cost of the fence, per backend: time from `netfence run` to the workload's
first instruction, and the overhead of `netfence run -- true` over `true`.

Run as root: `.venv/bin/python benchmarks/run_overhead.py [--runs N]`. It sends no traffic
anywhere (the upstream resolver is set to loopback and never asked).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

BACKENDS = ("envoy", "squid")


def _netfence(proxy: str, *command: str) -> list[str]:
    return [sys.executable, "-m", "netfence", "run", "--proxy", proxy,
            "--dns-upstream", "127.0.0.1", "--", *command]


def _timed(argv: list[str]) -> tuple[float, bytes]:
    start = time.time()
    done = subprocess.run(argv, capture_output=True, check=True, timeout=60)
    return start, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    base = []
    for _ in range(args.runs):
        start = time.perf_counter()
        subprocess.run(["true"], check=True)
        base.append(time.perf_counter() - start)
    print(f"true alone: median {statistics.median(base) * 1000:.1f} ms")
    for proxy in BACKENDS:
        to_start, total = [], []
        for _ in range(args.runs):
            start, out = _timed(_netfence(proxy, "python3", "-S", "-c",
                                          "import time; print(time.time())"))
            to_start.append(float(out.decode().strip()) - start)
            begin = time.perf_counter()
            subprocess.run(_netfence(proxy, "true"), check=True, capture_output=True,
                           timeout=60)
            total.append(time.perf_counter() - begin)
        overhead = statistics.median(total) - statistics.median(base)
        print(f"{proxy}: run -> workload start median {statistics.median(to_start):.3f} s "
              f"(min {min(to_start):.3f}); `run -- true` overhead median {overhead:.3f} s "
              f"(min {min(total) - statistics.median(base):.3f}) over {args.runs} runs")


if __name__ == "__main__":
    main()
