"""A fenced curl against the tests' simulated internet: what gets through and what does not.

The simulated internet (tests/support/fakenet.py) is a network namespace of its own with
HTTP and DNS servers at 10.203.0.0/24; nothing leaves this machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.fakenet import fakenet

# (title, command, whether it reaches the simulated internet: with Envoy, with Squid)
CASES = (
    ("allowed: a host on the allowlist", "curl -sS -m 5 http://allowed.test/demo",
     (True, True)),
    ("denied: a host not on the allowlist", "curl -sS -m 5 http://other.test/", (False, False)),
    ("ignoring the proxy: decided by name all the same (Envoy; Squid has no such path)",
     "curl -sS -m 5 --noproxy '*' http://allowed.test/demo", (True, False)),
    ("denied: ignoring the proxy, to a host not on the allowlist",
     "curl -sS -m 5 --noproxy '*' --resolve other.test:80:10.203.0.2 http://other.test/",
     (False, False)),
    ("denied: a name resolving to the host itself", "curl -sS -m 5 http://hostaddr.test/",
     (False, False)),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--proxy", default="envoy", choices=("envoy", "squid"))
    args = parser.parse_args()
    failures = 0
    with fakenet(lifetime=300) as net:
        for title, command, expected in CASES:
            should_pass = expected[0] if args.proxy == "envoy" else expected[1]
            argv = [sys.executable, "-m", "netfence", "run", "--proxy", args.proxy,
                    "--allow-host", "allowed.test", "--allow-host", "hostaddr.test",
                    "--dns-upstream", net.dns, "--allow-cidr", net.cidr,
                    "--", "sh", "-c", command]
            print(f"\n== {title}\n$ netfence run --proxy {args.proxy} --allow-host allowed.test "
                  f"... -- {command}", flush=True)
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            print((done.stdout + done.stderr).rstrip(), flush=True)
            passed = done.returncode == 0 and "fakenet ok" in done.stdout
            if passed != should_pass:
                failures += 1
                print("!! unexpected outcome", flush=True)
    print(f"\n{len(CASES) - failures}/{len(CASES)} outcomes as expected", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
