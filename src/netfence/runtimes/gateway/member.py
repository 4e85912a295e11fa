"""One workload's part of the shared gateway: its network namespace (loopback only, every
other destination redirected to its listeners there), its own dnsmasq on the host's
loopback, and the Envoy resources its policy compiles to, which the daemon publishes.

The policy is compiled once per start or update, with the host's addresses read at the
start (as an own fence does): the bytes published for one workload never change because
another came or went.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from netfence.backends import (
    Endpoint,
    FileSpec,
    Placement,
    ProcessSpec,
    ProxySetup,
    write_file,
    write_setup,
)
from netfence.backends.dnsmasq import dns_setup
from netfence.backends.envoy.gateway import Slot, WorkloadResources, workload_resources
from netfence.errors import NetfenceError
from netfence.policy import compile_policy
from netfence.runtimes import netns, reload, state
from netfence.runtimes.base import WORKLOAD_PROXY_PORT
from netfence.runtimes.control import ControlServer
from netfence.runtimes.gateway import spares
from netfence.runtimes.namespace import processes
from netfence.runtimes.namespace.launch import LOOPBACK, free_port, ns_name

if TYPE_CHECKING:
    from netfence.profile.hosts import IPAddress
    from netfence.profile.model import IPNetwork, Profile

log = logging.getLogger("netfence")

MEMBER_NAME = "gateway-member.json"


@dataclasses.dataclass(frozen=True)
class Ingress:
    """A workload that serves HTTP: its port in the namespace, and the host's loopback
    port clients use."""

    target_port: int
    port: int


class Member:
    """Built by `start` and `ready` (between them, the daemon publishes its resources),
    removed by `close` (also after a failed start); `update` swaps the policy, and
    `publish` (the daemon's) makes Envoy apply what `resources` holds."""

    def __init__(self, directory: Path, record: state.WorkloadState, pidfd: int, logs: Path,
                 upstream_resolver: Endpoint, learn: bool,
                 publish: Callable[[], None], made: spares.Spares | None = None) -> None:
        self.directory = directory  # the gateway's
        self.record = record
        self.name = record.name
        self.state_dir = Path(record.state_dir)
        # Readable once the workload's process (its forwarder) has exited.
        self.pidfd = pidfd
        self.logs = logs
        self.upstream_resolver = upstream_resolver
        self.learn = learn
        self.publish = publish
        self.made = made  # namespaces made ahead (none for a workload taken over)
        self.undo = contextlib.ExitStack()
        self.host_addresses: tuple[IPAddress | IPNetwork, ...] = ()
        self.dns: Endpoint | None = None
        self.dnsmasq: tuple[ProcessSpec, subprocess.Popen[bytes]] | None = None
        # Started by `start`, not yet seen listening (`ready`): not the main loop's to
        # start again (a failure fails the start, which removes it all).
        self.dnsmasq_starting = False
        self.written: dict[Path, str] = {}
        self.resources: WorkloadResources | None = None
        # Its control socket, for `netfence update` (the daemon's: set once it is up).
        self.control: ControlServer | None = None
        self.ingress: Ingress | None = None
        self.ingress_upstream: Endpoint | None = None
        self.namespace_made = False

    @property
    def ns_name(self) -> str:
        """One per run, not per name: Envoy hands a removed UDP listener's socket (kept
        while it drains) to a new listener on the same address and namespace path, so a
        name started again at once would get its DNS in the old namespace."""
        return f"{ns_name(self.name)}-{self.record.supervisor_pid:x}"

    @property
    def nsfile(self) -> Path:
        return netns.netns_path(self.ns_name)

    def start(self, profile: Profile, ingress: Ingress | None = None) -> None:
        """Its namespace, redirect and resources, and its dnsmasq started: `ready` waits
        for that (the daemon publishes the resources meanwhile: both take milliseconds).
        The namespace is one made ahead (spares.py), or made with its redirect in a thread
        of its own, mostly waiting for `ip` and `nft`, while this one compiles the policy
        (which only names the namespace's path)."""
        self.record.netns = self.ns_name
        state.save(self.record)
        self.undo.callback(self._remove_namespace)
        # Leaving the block waits for the namespace (also when the compilation failed: its
        # error is then the one reported, and the undo stack removes what was made).
        with ThreadPoolExecutor(1, thread_name_prefix="netfence-member") as aside:
            made = aside.submit(self._make_namespace)
            self.ingress = ingress
            self._fence(profile, free_port(), wait=False)
        made.result()

    def _make_namespace(self) -> None:
        if self.made is None or not self.made.take(self.ns_name):
            spares.make(self.ns_name)
        self.namespace_made = True

    def _remove_namespace(self) -> None:
        if self.namespace_made:
            netns.remove(self.ns_name)

    def ready(self) -> None:
        """Until the dnsmasq `start` started listens; NetfenceError if it exited (`close`
        then removes everything `start` made)."""
        assert self.dnsmasq is not None
        processes.wait_ready(*self.dnsmasq)
        self.dnsmasq_starting = False

    def adopt(self) -> None:
        """Take over a running workload's fence after a daemon restart: its namespace
        (and redirect) as they are, its dnsmasq started again on its port, its policy
        compiled again (the Envoy that served it died with the old daemon)."""
        saved = json.loads((self.state_dir / MEMBER_NAME).read_text())
        self.namespace_made = True  # by the run the old daemon started
        self.undo.callback(self._remove_namespace)
        if not self.nsfile.exists():
            raise NetfenceError(f"{self.name}: its network namespace is gone")
        from netfence.profile.loader import parse_profile

        profile = parse_profile(saved["profile"], self.record.policy or "netfence run")
        if saved.get("ingress"):
            self.ingress = Ingress(*saved["ingress"])
        self._fence(profile, int(saved["dns_port"]))

    def _fence(self, profile: Profile, dns_port: int, wait: bool = True) -> None:
        self.host_addresses = netns.host_addresses()
        self.dns = Endpoint(LOOPBACK, dns_port)
        if self.ingress is not None:
            self._relay_ingress(self.ingress)
        self._save(profile)
        dns, resources = self._compile(profile)
        write_setup(dns, self.state_dir)
        self.written.update(reload.digests(dns))
        (spec,) = dns.processes
        self.undo.callback(self._stop_dnsmasq)
        self._start_dnsmasq(spec, wait)
        self.resources = resources

    def _compile(self, profile: Profile) -> tuple[ProxySetup, WorkloadResources]:
        assert self.dns is not None
        policy = compile_policy(profile, self.host_addresses, learn=self.learn)
        placement = Placement(
            state_dir=self.state_dir,
            egress_listen=Endpoint(LOOPBACK, WORKLOAD_PROXY_PORT, self.nsfile),
            workload_proxy=f"{LOOPBACK}:{WORKLOAD_PROXY_PORT}",
            dns_listen=self.dns,
            upstream_resolver=self.upstream_resolver,
            workload_name=self.name,
        )
        slot = Slot(name=self.name, netns=self.nsfile, dns=self.dns,
                    upstream_resolver=self.upstream_resolver, logs=self.logs,
                    ingress_listen=(Endpoint(LOOPBACK, self.ingress.port)
                                    if self.ingress else None),
                    ingress_upstream=self.ingress_upstream)
        return dns_setup(policy, placement), workload_resources(policy, slot, self.directory)

    def _relay_ingress(self, ingress: Ingress) -> None:
        """The way in for clients: the gateway's ingress listener on the host's loopback,
        and a relay from the host into the namespace (no Envoy cluster can dial there)."""
        from netfence.runtimes.namespace.relay import Relays

        relays = Relays()
        self.undo.callback(relays.close)
        self.ingress_upstream = relays.tcp(Endpoint(LOOPBACK, 0),
                                           Endpoint(LOOPBACK, ingress.target_port, self.nsfile))
        relays.start()

    def _save(self, profile: Profile) -> None:
        """What a restarted daemon needs to take the fence over (adopt)."""
        from netfence.profile.loader import profile_data

        assert self.dns is not None
        write_file(FileSpec(self.state_dir / MEMBER_NAME, json.dumps({
            "profile": profile_data(profile), "dns_port": self.dns.port,
            "upstream": [self.upstream_resolver.host, self.upstream_resolver.port],
            "ingress": dataclasses.astuple(self.ingress) if self.ingress else None})))

    def _start_dnsmasq(self, spec: ProcessSpec, wait: bool = True) -> None:
        proc = processes.start(spec)
        self.dnsmasq = (spec, proc)
        self.dnsmasq_starting = not wait
        self.record.own(proc.pid)
        self.record.leftovers += spec.leaves
        state.save(self.record)
        if wait:
            processes.wait_ready(spec, proc)

    def _stop_dnsmasq(self) -> None:
        if self.dnsmasq is not None:
            processes.stop_all([self.dnsmasq])
            self.dnsmasq = None

    def update(self, profile: Profile) -> None:
        """The workload's new policy: dnsmasq reloaded or restarted as its spec says, the
        Envoy resources replaced and published; `Updates` rolls back on an error."""
        assert self.dnsmasq is not None and self.resources is not None
        dns, resources = self._compile(profile)
        self._save(profile)
        steps = reload.plan([self.dnsmasq[0]], self.written, dns)
        for file in steps.files:
            write_file(file)
            self.written[file.path] = reload.digest(file.content)
        for _spec, signum in steps.signals:
            self.dnsmasq[1].send_signal(signum)
        for spec in steps.restarts:
            self._stop_dnsmasq()
            log.info("%s: restarting dnsmasq", self.name)
            self._start_dnsmasq(spec)
        self.resources = resources
        self.publish()

    def dnsmasq_exited(self) -> bool:
        """Whether its dnsmasq has exited (not while `start` has it starting)."""
        return (self.dnsmasq is not None and not self.dnsmasq_starting
                and self.dnsmasq[1].poll() is not None)

    def revive_dnsmasq(self) -> None:
        assert self.dnsmasq is not None
        spec = self.dnsmasq[0]
        log.warning("%s: dnsmasq exited (status %s); starting it again", self.name,
                    self.dnsmasq[1].returncode)
        self.dnsmasq = None
        self._start_dnsmasq(spec)

    def close(self) -> None:
        try:
            self.undo.close()
        except NetfenceError as exc:
            log.warning("%s: teardown incomplete (%s)", self.name, exc)

