"""Memory and publishing time of the gateway (backends/envoy/gateway.py): one Envoy serving
N workloads, each with examples/fetch.yaml's policy in a network namespace of its own.

Envoy's PSS (/proc/PID/smaps_rollup) empty, then with 1, 10 and 20 workloads published
(added one at a time as the daemon adds them: route files and clusters, `applied` on the
clusters, then listeners and limits, `applied` on everything); the time from writing the
N-th workload's files to `applied`; removing one at N; and a kill -9 and restart with N.
No traffic at all: the namespaces only hold the listeners (no dnsmasq is started; its
memory is its own, about 0.7 MiB each). Root (namespaces); it creates namespaces
`nfgwb-PID-I` and removes them at the end. `--flat` puts every watched file into one
directory, to compare (a rename there makes every subscription read its file again).

    flock /tmp/netfence-integration.lock .venv/bin/python benchmarks/gateway_memory.py
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netfence.backends.base import Endpoint, FileSpec, write_file
from netfence.backends.envoy import _gateway_paths as paths
from netfence.backends.envoy import gateway
from netfence.backends.envoy._admin import admin_get
from netfence.backends.envoy.gateway import (
    Publication,
    Slot,
    WorkloadResources,
    applied,
    gateway_process,
    publication,
    workload_resources,
)
from netfence.policy import compile_policy
from netfence.profile.loader import load_profile
from netfence.runtimes import netns

REPO = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024


def pss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no Pss in smaps_rollup")


def allocated(directory: Path) -> int:
    """What Envoy's allocator reports in use (admin /memory): steadier than PSS, which
    counts pages the allocator keeps after freeing them."""
    return int(json.loads(admin_get(paths.admin_socket(directory), "/memory"))["allocated"])


def inotify_instances(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    return sum(1 for fd in fds.iterdir() if os.readlink(fd) == "anon_inode:inotify")


def wait(condition: Callable[[], bool], timeout: float = 60.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return time.monotonic() - start
        time.sleep(0.002)
    raise RuntimeError("timed out")


class Gateway:
    def __init__(self, directory: Path, drain_time_s: int) -> None:
        self.directory = directory
        self.drain_time_s = drain_time_s
        self.published = publication(directory, [])
        self.workloads: list[WorkloadResources] = []
        self.proc: subprocess.Popen[bytes] | None = None
        for spec in self.published.files:
            write_file(spec)

    def start(self) -> float:
        bootstrap, process = gateway_process(self.directory, drain_time_s=self.drain_time_s)
        write_file(bootstrap)
        start = time.monotonic()
        self.stderr = process.stderr
        with process.stderr.open("ab") as err:
            self.proc = subprocess.Popen(process.argv, stdout=subprocess.DEVNULL, stderr=err)
        wait(lambda: applied(self.directory, self.published.files))
        return time.monotonic() - start

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)

    def _write(self, files: Sequence[FileSpec]) -> None:
        old = {f.path: f.content for f in self.published.files}
        for spec in files:
            if old.get(spec.path) != spec.content:
                write_file(spec)

    def add(self, workload: WorkloadResources) -> tuple[float, float]:
        """(seconds to the clusters applied, to everything applied), from the first write."""
        start = time.monotonic()
        new = publication(self.directory, [*self.workloads, workload])
        self._write([*new.routes, new.clusters])
        wait(lambda: applied(self.directory, [new.clusters]))
        clusters = time.monotonic() - start
        self._write([new.listeners, new.runtime])
        wait(lambda: applied(self.directory, new.files))
        self.workloads.append(workload)
        self.published = new
        return clusters, time.monotonic() - start

    def remove(self, name: str) -> float:
        start = time.monotonic()
        self.workloads = [w for w in self.workloads if w.name != name]
        new: Publication = publication(self.directory, self.workloads)
        self._write([new.listeners, new.runtime])
        wait(lambda: applied(self.directory, [new.listeners, new.runtime]))
        self._write([new.clusters])
        wait(lambda: applied(self.directory, new.files))
        self.published = new
        return time.monotonic() - start


def flatten() -> None:
    """Every watched file in one directory (for --flat)."""
    def flat(name: str) -> Callable[[Path], Path]:
        return lambda directory: paths.xds_dir(directory) / name
    paths.clusters_path = flat("clusters.json")  # type: ignore[assignment]
    paths.listeners_path = flat("listeners.json")  # type: ignore[assignment]
    paths.runtime_path = flat("runtime.json")  # type: ignore[assignment]
    paths.routes_dir = paths.xds_dir  # type: ignore[assignment]
    paths.route_path = (  # type: ignore[assignment]
        lambda directory, workload, route: paths.xds_dir(directory) / f"{route}.json")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", type=int, default=20)
    parser.add_argument("--profile", default=str(REPO / "examples" / "fetch.yaml"))
    parser.add_argument("--drain-time-s", type=int, default=gateway.DRAIN_TIME_S)
    parser.add_argument("--flat", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root (network namespaces)", file=sys.stderr)
        return 2
    if args.flat:
        flatten()
    policy = compile_policy(load_profile(args.profile), netns.host_addresses())
    marks = {1, 10, args.workloads}
    with contextlib.ExitStack() as cleanup, tempfile.TemporaryDirectory(
            prefix="nf-gwbench-") as tmp:
        directory = Path(tmp) / "gw"
        directory.mkdir(mode=0o700)
        gw = Gateway(directory, args.drain_time_s)
        cleanup.callback(gw.stop, signal.SIGKILL)
        gw.start()
        assert gw.proc is not None
        time.sleep(0.5)
        empty, empty_allocated = pss(gw.proc.pid), allocated(directory)
        print(f"Envoy {args.profile}: empty PSS {empty / MiB:.1f} MiB, allocated "
              f"{empty_allocated / MiB:.1f} MiB")
        compiled = 0.0
        for index in range(1, args.workloads + 1):
            ns_name = f"nfgwb-{os.getpid()}-{index}"
            nsfile = netns.create(ns_name)
            cleanup.callback(netns.remove, ns_name)
            name = f"w{index}"
            logs = directory / "logs" / name
            logs.mkdir(parents=True)
            slot = Slot(name, nsfile, Endpoint("127.0.0.1", 20000 + index),
                        Endpoint("127.0.0.1", 53), logs)
            start = time.monotonic()
            resources = workload_resources(policy, slot, directory)
            compiled += time.monotonic() - start
            clusters, everything = gw.add(resources)
            if index in marks:
                time.sleep(0.5)
                now, now_allocated = pss(gw.proc.pid), allocated(directory)
                size = sum(len(f.content) for f in gw.published.files)
                listeners = len(gw.published.listeners.content)
                print(f"{index:3d} workloads: PSS {now / MiB:6.1f} MiB "
                      f"(+{(now - empty) / index / MiB:.2f} MiB per workload), allocated "
                      f"{now_allocated / MiB:.1f} MiB "
                      f"(+{(now_allocated - empty_allocated) / index / MiB:.2f}); "
                      f"the {index}th applied {everything * 1000:.0f} ms after its files "
                      f"were written (clusters {clusters * 1000:.0f} ms); files "
                      f"{size / MiB:.1f} MiB (listeners {listeners / index / 1024:.0f} KiB "
                      f"per workload); inotify instances "
                      f"{inotify_instances(gw.proc.pid)}, fds "
                      f"{len(os.listdir(f'/proc/{gw.proc.pid}/fd'))}")
        print(f"compiling a workload's resources: {compiled / args.workloads * 1000:.0f} ms "
              "on average")
        print(f"removing one of {args.workloads}: {gw.remove('w1') * 1000:.0f} ms")
        gw.stop(signal.SIGKILL)
        print(f"kill -9, then a new Envoy with {len(gw.workloads)}: applied "
              f"{gw.start():.2f} s after exec")
    return 0


if __name__ == "__main__":
    sys.exit(main())
