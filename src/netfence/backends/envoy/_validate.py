"""`python -m netfence.backends.envoy._validate ENVOY BOOTSTRAP`: validate a live layout
with the real Envoy binary.

Envoy's `--mode validate` reads the bootstrap only, never the listener and route files it
names (seen with 1.40: a listener file with a bad port validated "OK"). So the files are put
into one static bootstrap, as Envoy takes them (_xds.inline refuses a file Envoy would
refuse: not a discovery response, a route file without its one route configuration), and
that is validated. Exit status: Envoy's, or 1 when the files cannot be assembled.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from netfence.backends.base import FILE_MODE
from netfence.backends.envoy._xds import inline


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m netfence.backends.envoy._validate ENVOY BOOTSTRAP",
              file=sys.stderr)
        return 2
    envoy, path = argv
    try:
        whole = inline(json.loads(Path(path).read_text()), lambda p: p.read_text())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"netfence: {path}: cannot assemble the Envoy configuration: {exc}",
              file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="netfence-validate-") as tmp:
        static = Path(tmp) / "envoy.json"
        fd = os.open(static, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(whole, fh, separators=(",", ":"))
        return subprocess.run([envoy, "--mode", "validate", "-c", str(static)],
                              check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
