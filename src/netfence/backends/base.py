"""The seam between the policy and the proxies: one interface, one module per backend.

A backend turns a Policy plus a Placement (where things listen, where they forward, the
state directory) into a ProxySetup: the files to write, the processes to start and the
environment the workload needs. It is pure: it writes nothing and starts nothing, and it
knows nothing of namespaces or containers beyond the opaque `netns` path that a Placement
may attach to a listener (only backends with `listens_in_netns` ever see one).
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from netfence.policy import LOOPBACK_HOSTS, Policy

STATE_DIR_MODE = 0o700
# The port DNS is served on: the fence's, and the only one Squid can ask upstream.
DNS_PORT = 53
FILE_MODE = 0o600


@dataclass(frozen=True)
class Endpoint:
    """A TCP/UDP address; `netns` names the network namespace file the socket lives in."""

    host: str
    port: int
    netns: Path | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class Forward:
    """An L4 relay: TCP connections, or UDP datagrams and their answers, that arrive at
    `listen` go to `target` (for a piece that cannot listen where it is reached)."""

    listen: Endpoint
    target: Endpoint
    protocol: Literal["tcp", "udp"] = "tcp"


@dataclass(frozen=True)
class Placement:
    """Where the fence's pieces live, decided by the runtime.

    egress_listen: where the egress proxy listens.
    workload_proxy: host:port of the egress proxy as the workload addresses it.
    ingress_listen / ingress_upstream: the client-facing listener and the workload's
        address as the ingress proxy reaches it (or a name the upstream resolver answers,
        such as a cluster's Service); both None for stdio workloads.
    dns_listen: where the DNS server listens. upstream_resolver: the real resolver.
    relays: L4 forwards the proxy carries beside its own listeners (only backends that
        `carry_relays` get any; the runtime runs relay.relay_setup for the others).
    transparent_listen: where connections the workload made to any address arrive,
        redirected with their original destination (SO_ORIGINAL_DST), to be decided by
        the name they carry (TLS SNI, HTTP Host); empty when the runtime redirects none
        (only backends that are `transparent` get any).
    transparent_proxy_protocol: connections on transparent_listen arrive through a relay
        that states each one's original destination in a PROXY protocol v2 header sent
        first (the listener cannot be in the workload's namespace, so SO_ORIGINAL_DST
        would name the relay's target); the backend takes the destination from that
        header instead, and refuses a connection without one.
    unprivileged: the fence runs as the calling user, without root: a backend changes no
        file's owner and switches no process's user.
    An Endpoint on 0.0.0.0 listens on every address of wherever the runtime places it
    (a container's own network namespace).
    """

    state_dir: Path
    egress_listen: Endpoint
    workload_proxy: str
    dns_listen: Endpoint
    upstream_resolver: Endpoint
    ingress_listen: Endpoint | None = None
    ingress_upstream: Endpoint | None = None
    workload_name: str = "workload"
    transparent_listen: tuple[Endpoint, ...] = ()
    relays: tuple[Forward, ...] = ()
    transparent_proxy_protocol: bool = False
    unprivileged: bool = False
    # How to invoke a program by name where the runtime runs it (a container image has
    # its own paths); a backend falls back to the host's program.
    programs: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FileSpec:
    """A file to write before start; `owner` is a user name when not root's."""

    path: Path
    content: str
    mode: int = FILE_MODE
    owner: str | None = None


@dataclass(frozen=True)
class Reload:
    """How a running process takes new versions of the files it reads (`netfence update`).

    signal: sent to it once the files are replaced; None: it notices the replacement by
        itself (Envoy watches its xDS files), and NetworkProxy.settled says when it has.
    restart_for: files whose change it cannot take while it runs: it is restarted instead,
        on the same addresses.
    """

    signal: int | None = None
    restart_for: tuple[Path, ...] = ()


@dataclass(frozen=True)
class ProcessSpec:
    """A process to start and supervise; stdout/stderr go to files in the state dir."""

    name: str
    argv: tuple[str, ...]
    ready: tuple[Endpoint, ...]
    stdout: Path
    stderr: Path
    # The signal that ends the process promptly and cleanly (Squid: SIGINT skips the
    # shutdown_lifetime wait that SIGTERM grants open connections).
    stop_signal: int = signal.SIGTERM
    # How long after its stop signal the process still does anything that matters (its
    # log complete); then it may be killed. None: as long as it takes it to exit. A
    # runtime may kill it sooner, once it sleeps holding no TCP socket (listeners closed,
    # every connection ended): a proxy that logs each transaction as it ends is done.
    stop_grace: float | None = None
    # The part of the fence it is: "egress" (Envoy's process also serves ingress),
    # "ingress" or "dns". Runtimes that run each process apart (containers) name and order
    # them by it: the ingress needs the workload started, the others must precede it.
    role: str = ""
    # The Linux capabilities the process needs when started as root on its own (a runtime
    # that drops every other one, as the docker runtime does for its containers).
    capabilities: tuple[str, ...] = ()
    # The generated files it reads, and how it takes a change to them while it runs; with
    # no Reload, a change to any of them restarts it.
    reads: tuple[Path, ...] = ()
    reload: Reload | None = None
    # Files it leaves behind when it is killed rather than let finish (glob patterns in
    # the host's file system), which the runtime removes once it has stopped.
    leaves: tuple[str, ...] = ()
    # Started as root, it gives root up at once (dnsmasq: to nobody), which clears a
    # parent-death signal (prctl(2)): arming one then only costs its start a full fork.
    drops_root: bool = False
    # Directories it watches (inotify), removed by a runtime that stops it for good before
    # its stop signal: a process that exits holding watches waits for one RCU grace period
    # per watch, one after the other (Envoy's three: about 20 ms of every fence's end);
    # watches whose directory went are released in one batch, while it is stopping.
    watches: tuple[Path, ...] = ()


@dataclass(frozen=True)
class ProxySetup:
    files: tuple[FileSpec, ...]
    processes: tuple[ProcessSpec, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    # Files that hold one line per request decision (access logs), for `netfence logs`.
    decision_logs: tuple[Path, ...] = ()

    def __add__(self, other: ProxySetup) -> ProxySetup:
        return ProxySetup(
            files=self.files + other.files,
            processes=self.processes + other.processes,
            env={**self.env, **other.env},
            decision_logs=self.decision_logs + other.decision_logs,
        )


@dataclass(frozen=True)
class DecisionRecord:
    """One request's decision, the same fields whichever backend logged it."""

    time: str
    method: str
    host: str
    port: int | None
    allowed: bool
    reason: str  # a policy.Reason value, or "allowed"
    status: int
    upstream_ip: str | None = None
    bytes_up: int = 0
    bytes_down: int = 0
    duration_ms: int = 0
    # For an address denial: the address, or the denied range holding it when the backend
    # knows only that. remedy: what would allow it (policy.decision.remedy_text).
    address: str | None = None
    remedy: str | None = None
    # Decided on the transparent path (a connection the workload made to any address,
    # redirected to the fence), not asked of the proxy. status is 0 there for a TLS or
    # plain TCP connection: no HTTP response.
    transparent: bool = False

    def log_entry(self, workload: str) -> dict[str, object]:
        """The decision log's JSON line: LOG_FIELDS first, then every other field."""
        fields = dataclasses.asdict(self)
        entry: dict[str, object] = {
            "time": self.time,
            "workload": workload,
            "decision": "allow" if self.allowed else "deny",
        }
        entry = {name: entry.get(name, fields.get(name)) for name in LOG_FIELDS}
        # The rest (status, upstream_ip, ...; `allowed` for readers of the older lines).
        entry.update((k, v) for k, v in fields.items() if k not in entry)
        return entry


# The fields of every decision-log line, whichever backend logged it (`netfence logs --json`).
LOG_FIELDS = ("time", "workload", "method", "host", "port", "decision", "reason",
              "bytes_up", "bytes_down", "duration_ms")


def proxy_env(workload_proxy: str) -> dict[str, str]:
    """Proxy variables for the workload: both cases, since curl ignores HTTP_PROXY."""
    url = f"http://{workload_proxy}"
    no_proxy = ",".join(p.name for p in LOOPBACK_HOSTS)
    env: dict[str, str] = {}
    for key, value in (("http_proxy", url), ("https_proxy", url), ("no_proxy", no_proxy)):
        env[key] = env[key.upper()] = value
    return env


class NetworkProxy(abc.ABC):
    """A proxy backend: egress forward proxy plus ingress reverse proxy."""

    name: str
    # Whether its listeners can be created inside another network namespace while the
    # process itself runs (and dials out) in the host's. Envoy can; Squid cannot.
    listens_in_netns: bool = False
    # Whether its process, unable to do that, can be handed a listening socket made there
    # for an address it binds: it keeps inherited descriptors and binds with the C
    # library's bind() (a runtime's shim answers that bind with the socket). Squid can.
    takes_sockets: bool = False
    # Whether it decides redirected connections by the name they carry (SNI, Host), so
    # that programs ignoring the proxy variables get through (Placement.transparent_listen).
    transparent: bool = False
    # Whether its process can carry L4 relays across namespaces (Placement.relays).
    carries_relays: bool = False

    @abc.abstractmethod
    def setup(self, policy: Policy, placement: Placement) -> ProxySetup:
        """Files, processes and workload environment for this policy and placement."""

    @abc.abstractmethod
    def validate_command(self, setup: ProxySetup) -> list[tuple[str, ...]]:
        """Commands that check the generated config with the real binary (exit 0 = valid)."""

    @abc.abstractmethod
    def parse_decision(self, line: str) -> DecisionRecord | None:
        """One line of this backend's decision log as a record; None for other lines."""

    def settled(self, setup: ProxySetup) -> bool:
        """Whether the running processes now apply this setup's files, after a Reload
        without a signal (they pick the files up by themselves)."""
        return True


def write_setup(setup: ProxySetup, state_dir: Path) -> None:
    """Write a setup's files: state dirs 0700, files 0600 (never wider), owners applied."""
    state_dir.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
    os.chmod(state_dir, STATE_DIR_MODE)
    for spec in setup.files:
        write_file(spec)


def write_file(spec: FileSpec) -> None:
    """One file, complete before it appears under its name: a process that watches it, or
    reads it on a signal, never sees half of it."""
    import pwd

    spec.path.parent.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
    tmp = spec.path.with_name(f".{spec.path.name}.new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, spec.mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(spec.content)
            os.fchmod(fh.fileno(), spec.mode)
            if spec.owner is not None:
                pw = pwd.getpwnam(spec.owner)
                os.fchown(fh.fileno(), pw.pw_uid, pw.pw_gid)
        os.replace(tmp, spec.path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
