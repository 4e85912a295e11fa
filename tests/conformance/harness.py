"""Drive one long-lived fence per backend and profile: the driver (driver.py) runs inside it
as the workload and answers requests over its stdin/stdout, one JSON line each.

Only a test's own processes are ever signalled, by their PIDs; every fence is stopped (and
its supervisor killed if it will not stop) when the `Fenced` context ends, also on failure.
A fence started rootless (`user`) is run, and asked for its log, as that user.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.support.fence import acting_as, acting_as_root, netfence, netfence_argv
from tests.support.rootless import RootlessUser

DRIVER = Path(__file__).with_name("driver.py")
Case = dict[str, Any]
Result = dict[str, Any]
START_TIMEOUT = 20.0
STOP_TIMEOUT = 30.0


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def http_case(case_id: str, *requests: bytes, reads: Sequence[int] | None = None,
              timeout: float = 5.0) -> Case:
    """Requests sent in turn on one connection, reading `reads[i]` responses after each."""
    return {"id": case_id, "kind": "http", "sends": [b64(r) for r in requests],
            "reads": list(reads) if reads is not None else [1] * len(requests),
            "timeout": timeout}


def connect_case(case_id: str, request: bytes, tunnel: bytes | None = None,
                 tls_name: str | None = None, cafile: str | None = None,
                 timeout: float = 5.0) -> Case:
    case: Case = {"id": case_id, "kind": "connect", "sends": [b64(request)],
                  "timeout": timeout}
    if tunnel is not None:
        case["tunnel"] = b64(tunnel)
    if tls_name is not None:
        case.update(tls_name=tls_name, cafile=cafile)
    return case


def direct_case(case_id: str, addr: str, port: int, *requests: bytes,
                tls: bool = False, tls_name: str | None = None, cafile: str | None = None,
                timeout: float = 5.0) -> Case:
    """Requests sent straight to addr:port (the transparent path), over TLS when `tls`,
    with `tls_name` as the SNI (none when None); one response read after each."""
    return {"id": case_id, "kind": "direct", "addr": addr, "port": port,
            "sends": [b64(r) for r in requests], "reads": [1] * len(requests),
            "tls": tls, "tls_name": tls_name, "cafile": cafile, "timeout": timeout}


def dial_case(case_id: str, addr: str, port: int, *, udp: bool = False,
              payload: bytes = b"", timeout: float = 3.0) -> Case:
    return {"id": case_id, "kind": "dial", "addr": addr, "port": port, "udp": udp,
            "payload": b64(payload), "timeout": timeout}


def get(target: str, host: str, *, method: str = "GET", version: str = "HTTP/1.1",
        extra: Sequence[str] = (), close: bool = True) -> bytes:
    """One request line with a Host header; `target` is the request target as written."""
    lines = [f"{method} {target} {version}", f"Host: {host}", *extra]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def connect(authority: str, host: str | None = None) -> bytes:
    return (f"CONNECT {authority} HTTP/1.1\r\nHost: {host or authority}\r\n\r\n"
            ).encode("latin-1")


class Fenced:
    """`netfence run --name NAME ARGS -- python3 -c DRIVER`, talked to over its stdio."""

    def __init__(self, name: str, proxy: str, args: Sequence[str],
                 user: RootlessUser | None = None) -> None:
        self.name = name
        self.proxy = proxy
        self.args = list(args)
        self.user = user
        # Kept open for the fence's whole life, closed in close().
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self.proc: subprocess.Popen[bytes] | None = None
        self._pending = b""

    def _as_starter(self) -> contextlib.AbstractContextManager[object]:
        """netfence as the one who started this fence, whoever the test acts as now."""
        return acting_as(self.user) if self.user else acting_as_root()

    def start(self) -> None:
        with self._as_starter():
            argv = netfence_argv("run", "--proxy", self.proxy, "--name", self.name, *self.args,
                                 "--", "python3", "-u", "-c", DRIVER.read_text())
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr)
        # The first answer proves the fence and the driver are up.
        probe = self.send([{"id": "start", "kind": "dial", "addr": "127.0.0.1",
                            "port": 3128, "timeout": 2}], timeout=START_TIMEOUT)
        assert probe[0]["connected"], f"{self.name}: proxy not reachable: {probe}"

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def send(self, cases: Sequence[Case], timeout: float | None = None) -> list[Result]:
        """Every case's result, in order; the whole batch bounded in time."""
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        budget = timeout if timeout is not None else 10.0 + sum(
            float(c.get("timeout", 5)) for c in cases)
        payload = "".join(json.dumps(c) + "\n" for c in cases).encode()
        self.proc.stdin.write(payload)
        self.proc.stdin.flush()
        out: list[Result] = []
        deadline = time.monotonic() + budget
        fd = self.proc.stdout.fileno()
        while len(out) < len(cases):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: {len(out)}/{len(cases)} answers in "
                                   f"{budget:.0f} s; stderr: {self.stderr()[-2000:]}")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise RuntimeError(f"{self.name}: the fence ended early "
                                   f"(exit {self.proc.poll()}): {self.stderr()[-2000:]}")
            self._pending += chunk
            while b"\n" in self._pending:
                line, self._pending = self._pending.split(b"\n", 1)
                out.append(json.loads(line))
        for case, result in zip(cases, out, strict=True):
            result["kind"] = case["kind"]
        return out

    def one(self, case: Case) -> Result:
        return self.send([case])[0]

    def decisions(self, want: int = 0, timeout: float = 15.0) -> list[dict[str, Any]]:
        """The fence's decision log (`netfence logs --json`), waiting for `want` lines."""
        deadline = time.monotonic() + timeout
        while True:
            with self._as_starter():
                done = netfence("logs", self.name, "--json", timeout=30)
            records = [json.loads(line) for line in done.stdout.decode().splitlines()
                       if line.strip()]
            if len(records) >= want or time.monotonic() > deadline:
                return records
            time.sleep(0.25)

    def close(self) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        with contextlib.suppress(OSError):
            if proc.stdin:
                proc.stdin.close()  # the driver ends at EOF; the fence with it
        try:
            code = proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            # Our own child, by PID: SIGTERM lets netfence tear the fence down; SIGKILL
            # only if it will not (its proxies die with it, the next run reaps the rest).
            proc.terminate()
            try:
                code = proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()
        self._stderr.close()
        return code


@contextlib.contextmanager
def fenced(name: str, proxy: str, args: Sequence[str]) -> Iterator[Fenced]:
    fence = Fenced(name, proxy, args)
    try:
        fence.start()
        yield fence
    finally:
        fence.close()
