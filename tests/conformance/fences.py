"""The pieces behind the conformance fixtures: profiles as flags and as policies, the pool
of long-lived fences, and a canary on the host where no fence may ever connect."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from netfence.policy import Policy, compile_policy
from netfence.profile import load_profile, with_overrides
from netfence.runtimes.netns import host_addresses
from tests.conformance.harness import Fenced
from tests.support.fakenet import FakeNet
from tests.support.fakenet_server import HOST_IP
from tests.support.fence import PRIVILEGES
from tests.support.rootless import RootlessUser

BACKENDS = ("envoy", "squid")
FENCE_PREFIX = "nfc-"  # every fence this suite starts is named so
# On a test: against root's fences, then against rootless ones (the session's test user).
both_privileges = pytest.mark.parametrize("fence_user", PRIVILEGES, indirect=True)



@dataclass(frozen=True)
class ProfileSpec:
    """A profile as `netfence run` flags; the test compiles the same one into a Policy."""

    ref: str = "none"
    hosts: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    cidrs: tuple[str, ...] = ()
    learn: bool = False

    def args(self) -> list[str]:
        out = ["--profile", self.ref]
        for flag, values in (("--allow-host", self.hosts), ("--allow-port", self.ports),
                             ("--allow-cidr", self.cidrs)):
            for value in values:
                out += [flag, str(value)]
        return out

    def policy(self) -> Policy:
        profile = with_overrides(load_profile(self.ref), allow_host=self.hosts,
                                 allow_port=self.ports, allow_cidr=self.cidrs)
        # The host's addresses as the runtime reads them when the fence starts.
        return compile_policy(profile, host_addresses(), learn=self.learn)


class Canary:
    """Listeners on host loopback and on the host's fakenet address, on one port the
    fences allow: any connection means a fence dialed an address it must never dial."""

    def __init__(self) -> None:
        self.hits: list[tuple[str, tuple[str, int]]] = []
        self._socks: list[socket.socket] = []
        self._stop = threading.Event()
        self.port = self._bind()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _bind(self) -> int:
        for _ in range(50):
            probe = socket.socket()
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
            probe.close()
            socks: list[socket.socket] = []
            try:
                for address in ("127.0.0.1", HOST_IP):
                    sock = socket.socket()
                    socks.append(sock)
                    sock.bind((address, port))
                    sock.listen(16)
                    sock.settimeout(0.2)
            except OSError:
                for sock in socks:
                    sock.close()
                continue
            self._socks = socks
            return port
        raise RuntimeError("no port free on both canary addresses")

    def _serve(self) -> None:
        while not self._stop.is_set():
            for sock in self._socks:
                try:
                    conn, peer = sock.accept()
                except (TimeoutError, OSError):
                    continue
                self.hits.append((sock.getsockname()[0], peer))
                with contextlib.suppress(OSError):
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\ncanary\n")
                conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for sock in self._socks:
            sock.close()


@dataclass
class Fences:
    fakenet: FakeNet
    canary: Canary
    opened: dict[tuple[str, str, str], tuple[Fenced, Policy]] = field(default_factory=dict)
    specs: dict[str, ProfileSpec] = field(default_factory=dict)

    def get(self, proxy: str, profile: str,
            user: RootlessUser | None = None) -> tuple[Fenced, Policy]:
        """The fence for this backend and profile, root's, or rootless as `user`."""
        key = (proxy, profile, "rootless" if user else "root")
        if key not in self.opened:
            spec = self.specs[profile]
            # The test CA, which the driver's TLS cases open inside the workload's view.
            net = ["--dns-upstream", self.fakenet.dns, "--read", str(self.fakenet.ca_pem_path)]
            suffix = "-rl" if user else ""
            fence = Fenced(f"{FENCE_PREFIX}{profile}-{proxy}{suffix}"[:24], proxy,
                           [*net, *spec.args()], user)
            try:
                fence.start()
            except BaseException:
                fence.close()  # a fence that failed to start is stopped all the same
                raise
            self.opened[key] = (fence, spec.policy())
        return self.opened[key]

    def close(self) -> list[str]:
        problems: list[str] = []
        for (proxy, profile, privilege), (fence, _) in self.opened.items():
            code = fence.close()
            if code != 0:
                problems.append(f"{proxy}/{profile} ({privilege}) exited {code}")
        self.opened.clear()
        return problems


def profile_specs(fakenet: FakeNet, canary_port: int) -> dict[str, ProfileSpec]:
    cidr = (fakenet.cidr,)
    return {
        "allow": ProfileSpec(
            hosts=("allowed.test", "*.wild.test", "10.203.0.3", "fd00::5", "bücher.test",
                   "loopback.test", "metadata.test", "hostaddr.test", "private.test",
                   "mixed.test", "mixed-first-denied.test", "mixed-private.test",
                   "mixed-host.test", "rebind.test", "nonexist.test"),
            ports=(80, 443, canary_port), cidrs=cidr),
        "network": ProfileSpec(ref="network", cidrs=cidr),
        "ports": ProfileSpec(hosts=("allowed.test", "10.203.0.3", "other.test"),
                             ports=(443, 8080), cidrs=cidr),
        "none": ProfileSpec(cidrs=cidr),
    }



FenceGetter = Callable[[str], tuple[Fenced, Policy]]
