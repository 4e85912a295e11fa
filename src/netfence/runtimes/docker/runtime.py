"""The docker runtime: the reference topology through the Docker Engine API.

    netfence-external (bridge, NAT)           <name>-internal (no route out)
      <name>-dns      dnsmasq  ─────────────────  DNS for the workload (any address :53)
      <name>-egress   Envoy | Squid egress  ────  proxy for the workload, :3128; its
                                                  other TCP, redirected (transparent)
      <name>-ingress  Squid ingress (Squid only) ─ to the workload's port
      ingress published on host 127.0.0.1 only      <name>-net  the workload's network
                                                    <name>      the workload, in it

The fence containers join both networks (the external one first, so a published port
leads there); the workload joins only the internal one, through a holder container whose
network namespace it shares: the holder gets the workload's address, its DNS set to the
dns container and `<name>-egress` in its hosts file, and netfence sets its routes and
rules from the host before the workload exists (redirect.py). The proxy environment names
`<name>-egress:3128`; programs that ignore it land at the egress's transparent listener.
Addresses on the internal network are fixed before anything starts, since the configs name
them: the DNS server for the workload, the workload for the ingress. The dns and egress
containers start before the holder, the holder before the workload; a separate ingress
container after it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from netfence.backends import (
    DNS_PORT,
    Endpoint,
    NetworkProxy,
    Placement,
    ProcessSpec,
    ProxySetup,
    write_file,
    write_setup,
)
from netfence.backends.dnsmasq import dns_setup
from netfence.errors import NetfenceError, PrivilegeError, UsageError
from netfence.policy import compile_policy
from netfence.profile.hosts import IPAddress
from netfence.profile.model import IPNetwork
from netfence.runtimes import grants, reload, state
from netfence.runtimes.base import (
    TRANSPARENT_PORT,
    WORKLOAD_PROXY_PORT,
    WORKLOAD_STOP_GRACE,
    Fence,
    WorkloadSpec,
)
from netfence.runtimes.docker import containers, images, networks, redirect
from netfence.runtimes.docker.engine import (
    LABEL_COMMAND,
    LABEL_MANAGED,
    LABEL_PROXY,
    LABEL_ROLE,
    LABEL_STARTED,
    LABEL_WORKLOAD,
    connect,
    engine_errors,
    is_podman,
    refuse_rootless,
)
from netfence.runtimes.resolver import host_resolver
from netfence.runtimes.signals import StopSignals
from netfence.runtimes.supervisor import SupervisedRuntime

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container
    from docker.models.networks import Network
    from docker.types import Mount

    from netfence.profile.model import Profile

log = logging.getLogger("netfence")

# The ingress listener's port inside its container; the host port is published to it.
INGRESS_PORT = 8080
_PATHS = {"sse": "/sse", "streamable-http": "/mcp"}
_START_ORDER = {"dns": 0, "egress": 1, "ingress": 2}
# The container holding the workload's network namespace: `<name>-net`.
HOLDER_ROLE = "net"
# The workload's resolv.conf, in its state directory (mounted alone).
RESOLV_CONF = "resolv.conf"


def container_resolver(spec: WorkloadSpec) -> Endpoint:
    """The resolver the fence containers use: a loopback one is the host's, not theirs."""
    resolver = spec.dns_upstream or host_resolver()
    if ipaddress.ip_address(resolver.host).is_loopback:
        raise UsageError(
            f"the DNS resolver {resolver} is on the host's loopback, which containers "
            "cannot reach", remedy="pass --dns-upstream with a resolver's real address")
    return resolver


def fence_image_key(process: ProcessSpec, backend: NetworkProxy) -> str:
    return "dns" if process.role == "dns" else backend.name


def _labels(spec: WorkloadSpec, role: str) -> dict[str, str]:
    return {**networks.labels(spec.name, role), LABEL_PROXY: spec.proxy}


class DockerFence(Fence):
    """One workload's containers and networks; each step registers its undo."""

    def __init__(self, client: DockerClient, spec: WorkloadSpec, backend: NetworkProxy,
                 state_dir: Path, signals: StopSignals) -> None:
        self.client = client
        self.signals = signals
        self.spec = spec
        self.backend = backend
        self.state_dir = state_dir
        self.undo = contextlib.ExitStack()
        self.image, self.args = containers.workload_command(spec.command)
        self.setup = ProxySetup(files=(), processes=())
        self.fence: dict[str, tuple[ProcessSpec, Container]] = {}
        self.url: str | None = None
        self.plan: networks.AddressPlan | None = None
        self.external_gateway: str | None = None
        self.placement: Placement | None = None
        self.internal = networks.internal_network_name(spec.name)
        self.workload: Container | None = None
        # Whether the workload's other connections are to land at the egress (decided
        # before the configs are written; the rules themselves need root, see _redirect).
        self.transparent = backend.transparent and os.geteuid() == 0
        self.attachment: containers.Attachment | None = None
        # The internal network's host bridge, once found (before its address goes).
        self.bridge: str | None = None
        # The host's addresses and the fence's networks, denied; what each file holds.
        self.denied: tuple[IPAddress | IPNetwork, ...] = ()
        self.written: dict[Path, str] = {}

    # -- set-up ---------------------------------------------------------------------------

    def start(self) -> None:
        with engine_errors():
            self._start()

    def _start(self) -> None:
        spec, client = self.spec, self.client
        resolver = container_resolver(spec)
        _check_names_free(client, spec.name)
        # Images first: a missing one fails before anything exists.
        fence_images = {key: images.resolve(client, key) for key in ("dns", self.backend.name)}
        _require_image(client, self.image)
        with networks.networks_lock():
            external = networks.ensure_external(client)
            # Registered first, so it runs last: after every container has gone.
            self.undo.callback(networks.remove_external_if_unused, client)
            internal = networks.create_internal(client, spec.name)
            self.undo.callback(networks.remove_network, client, internal.name or self.internal)
            plan = self.plan = networks.plan_addresses(*networks.subnet_of(internal))
            external_subnet, self.external_gateway = networks.subnet_of(external)
            placement = self.placement = self._placement(plan, resolver)
            # Every fence's containers are on the external network: it is denied like the
            # host's addresses, so --allow-cidr never lets one workload reach another's.
            # Read once: an update keeps them (see the namespace runtime).
            self.denied = _host_addresses([external_subnet, networks.subnet_of(internal)[0]])
            policy = compile_policy(spec.profile, self.denied)
            self.setup = self.backend.setup(policy, placement) + dns_setup(policy, placement)
            write_setup(self.setup, self.state_dir)
            self.written = reload.digests(self.setup)
            # Created (so on the external network) before the lock goes: a concurrent
            # `stop` never finds the external network unused in between.
            for process in self.setup.processes:
                image = fence_images[fence_image_key(process, self.backend)]
                self.fence[process.role] = (process, self._create_fence(
                    process, image, external.name or networks.EXTERNAL_NETWORK, internal,
                    plan))
        # DNS first: it is the first on the internal network, whose bridge it brings up.
        for role in sorted(self.fence, key=lambda r: _START_ORDER.get(r, 1)):
            if role != "ingress":
                self.signals.check()
                self._start_fence(*self.fence[role])
        self.signals.check()
        holder = self._start_holder(plan, fence_images["dns"])
        self._redirect(holder, plan)
        self.signals.check()
        self._create_workload(holder)

    def update(self, profile: Profile) -> None:
        assert self.placement is not None
        placement = self.placement
        policy = compile_policy(profile, self.denied)
        new = self.backend.setup(policy, placement) + dns_setup(policy, placement)
        steps = reload.plan([process for process, _ in self.fence.values()], self.written, new)
        if steps.restarts:
            # Seen: after its dns container was restarted, Envoy's lookups through it
            # failed; and the engine sets a restarted container's networks up anew, which
            # may undo what _strip_bridge did. dnsmasq runs as root there, so it cannot
            # re-read its allowlist on a signal (dnsmasq.servers_reloadable).
            names = ", ".join(p.name for p in steps.restarts)
            raise UsageError(f"this change needs the fence's {names} restarted, which the "
                             "docker runtime does not do while the workload runs (a change of "
                             "ports only does not)",
                             remedy="stop the workload and run it again with the new policy")
        for file in steps.files:
            write_file(file)  # the state dir is bind-mounted: the containers see it
            self.written[file.path] = reload.digest(file.content)
        with engine_errors():
            for process, signum in steps.signals:
                self.fence[process.role][1].kill(signal=_signal_name(signum))
        reload.settle(self.backend, new, [p.stderr for p in new.processes])

    def _placement(self, plan: networks.AddressPlan, resolver: Endpoint) -> Placement:
        spec = self.spec
        ingress_listen = ingress_upstream = None
        if spec.transport != "stdio":
            assert spec.target_port is not None
            ingress_listen = Endpoint("0.0.0.0", INGRESS_PORT)
            ingress_upstream = Endpoint(plan.workload, spec.target_port)
        return Placement(
            state_dir=self.state_dir,
            egress_listen=Endpoint(plan.egress, WORKLOAD_PROXY_PORT),
            workload_proxy=f"{containers.container_name(spec.name, 'egress')}:"
                           f"{WORKLOAD_PROXY_PORT}",
            dns_listen=Endpoint(plan.dns, DNS_PORT),
            upstream_resolver=resolver,
            ingress_listen=ingress_listen,
            ingress_upstream=ingress_upstream,
            workload_name=spec.name,
            # In the egress container's own network namespace, where redirect.py sends them.
            transparent_listen=((Endpoint("0.0.0.0", TRANSPARENT_PORT),) if self.transparent
                                else ()),
            # The images have the programs on PATH (the official Envoy image too).
            programs={"envoy": "envoy"},
        )

    def _create_fence(self, process: ProcessSpec, image: str, external: str,
                      internal: Network, plan: networks.AddressPlan) -> Container:
        from docker.types import Mount

        spec = self.spec
        name = containers.container_name(spec.name, process.role)
        options: dict[str, Any] = {}
        if self._publishes(process):
            # The host side of the ingress: loopback only.
            options["ports"] = {f"{INGRESS_PORT}/tcp": ("127.0.0.1", spec.port)}
        container = containers.create(
            self.client, name, image,
            entrypoint=["/bin/sh"], command=containers.fence_command(process),
            network=external, hostname=name, labels=_labels(spec, process.role),
            mounts=[Mount(target=str(self.state_dir), source=str(self.state_dir),
                          type="bind")],
            cap_drop=["ALL"], cap_add=list(process.capabilities),
            # label=disable: an SELinux host would otherwise deny the bind-mounted state.
            security_opt=["no-new-privileges", "label=disable"],
            stop_signal=_signal_name(process.stop_signal),
            **options,
        )
        self.undo.callback(containers.remove, self.client, container.id or name)
        with engine_errors(f"connecting {name} to {self.internal}"):
            internal.connect(container, ipv4_address=plan.address_of(process.role))
        return container

    def _start_fence(self, process: ProcessSpec, container: Container) -> None:
        log.info("starting %s", container.name)
        with engine_errors(f"starting {container.name}"):
            container.start()
        if process.role == "dns" and self.plan is not None:
            # The first container on each network brought its bridge up: before any other
            # joins, the internal one loses the host's address, the external one's
            # hardware address is fixed.
            if os.geteuid() == 0:
                self.bridge = networks.bridge_of(self.plan)
            self._strip_bridge()
            networks.pin_bridge_address(self.external_gateway)
        containers.Readiness(container, process).wait()
        if self._publishes(process):
            port = containers.published_port(container, INGRESS_PORT)
            self.url = f"http://127.0.0.1:{port}{_PATHS.get(self.spec.transport, '/')}"

    def _publishes(self, process: ProcessSpec) -> bool:
        """Whether this process serves the ingress listener (so its container publishes)."""
        listen = self.placement.ingress_listen if self.placement else None
        return listen is not None and listen in process.ready

    def _strip_bridge(self) -> None:
        assert self.plan is not None
        if not networks.strip_host_addresses(self.plan):
            # Fail closed: with it, every host service listening on all addresses would be
            # reachable from the workload, around the fence.
            raise PrivilegeError(
                f"the engine gave the host an address on {self.internal}, and only root can "
                "remove it", remedy="run netfence with sudo, on the engine's host")

    def _start_holder(self, plan: networks.AddressPlan, image: str) -> Container:
        """The workload's network: a container that only waits (a shell reading a stdin
        nobody writes to), with the workload's address and name settings; the workload
        joins its namespace. Engine-neutral: Docker Engine cannot set up a container's
        network before its command runs, as `podman init` does."""
        spec = self.spec
        name = containers.container_name(spec.name, HOLDER_ROLE)
        egress = containers.container_name(spec.name, "egress")
        endpoint = self.client.api.create_endpoint_config(ipv4_address=plan.workload)
        holder = containers.create(
            self.client, name, image, entrypoint=["/bin/sh"], command=["-c", "read _"],
            stdin_open=True, network=self.internal,
            networking_config={self.internal: endpoint}, hostname=spec.name,
            dns=[plan.dns], dns_opt=["timeout:2", "attempts:2"],
            extra_hosts={egress: plan.egress}, labels=_labels(spec, HOLDER_ROLE),
            cap_drop=["ALL"], security_opt=["no-new-privileges"], read_only=True,
        )
        self.undo.callback(containers.remove, self.client, holder.id or name)
        with engine_errors(f"starting {name}"):
            holder.start()
            holder.reload()
        status = holder.attrs.get("State", {})
        if status.get("Running") is not True:
            # An engine that gave it no open stdin: `read` returned at once.
            raise NetfenceError(f"{name} (the workload's network) exited with status "
                                f"{status.get('ExitCode')} at start")
        return holder

    def _redirect(self, holder: Container, plan: networks.AddressPlan) -> None:
        """The holder's routes and rules and the egress's (redirect.py), or today's
        behaviour (no route out) with one line saying what programs that ignore the proxy
        variables lose: fail-closed either way, so a remote engine still runs."""
        spec = self.spec
        egress = self.fence["egress"][1]
        port = TRANSPARENT_PORT if self.transparent else None
        installed = redirect.install(holder, egress, plan, port)
        accepted = None
        if self.bridge is not None:
            # Whatever the backend: where Docker set the FORWARD policy to DROP, the
            # workload's traffic to its fence needs the rule as well.
            self.undo.callback(networks.remove_bridged, spec.name)
            accepted = networks.accept_bridged(self.bridge, spec.name)
        if installed and port is not None and accepted is False:
            log.warning("%s: programs that ignore the proxy variables cannot connect "
                        "(Docker's isolation rules drop their connections, and netfence "
                        "could not add its %s rule)", spec.name, networks.DOCKER_USER)
        if not self.backend.transparent:
            log.warning("%s: programs that ignore the proxy variables cannot connect (the "
                        "%s proxy has no transparent path; --proxy envoy has one)",
                        spec.name, self.backend.name)
        elif not installed:
            log.warning("%s: programs that ignore the proxy variables cannot connect "
                        "(redirecting them to the fence needs root and the container engine "
                        "on this host)", spec.name)

    def _create_workload(self, holder: Container) -> None:
        spec = self.spec
        environment = {**spec.env, **self.setup.env}
        labels = {
            **_labels(spec, "workload"),
            LABEL_COMMAND: json.dumps(list(spec.command)),
            LABEL_STARTED: str(time.time()),
        }
        options: dict[str, Any] = {}
        if spec.user:
            options["user"] = spec.user
        if is_podman(self.client):
            # Docker refuses a hostname with a joined network and gives the joiner the
            # holder's (the workload's name); Podman would give it its container id.
            options["hostname"] = spec.name
        # Hosts and addresses are the holder's: the engines refuse them here.
        self.workload = containers.create(
            self.client, spec.name, self.image, command=self.args,
            network_mode=f"container:{holder.id}", environment=environment, labels=labels,
            cap_drop=["ALL"], security_opt=["no-new-privileges"],
            mounts=[*containers.grant_mounts(spec.files), self._resolv_conf()],
            # A tiny init as PID 1: signals reach the command with their default actions
            # (a shell or an MCP server as PID 1 would ignore SIGTERM) and a signal's
            # death is reported as 128+N.
            init=True,
            stdin_open=spec.transport == "stdio" and not spec.detach, tty=False,
            **options,
        )
        self.undo.callback(containers.remove, self.client, self.workload.id or spec.name)

    def _resolv_conf(self) -> Mount:
        """The workload's /etc/resolv.conf, naming the dns container. Podman writes it so
        from the holder's DNS setting; Docker Engine names its embedded server
        (127.0.0.11) on every user network instead, which answers an internal network's
        containers nothing from outside. One file, read-only: nothing else of the state
        directory is shown."""
        from docker.types import Mount

        assert self.plan is not None
        path = self.state_dir / RESOLV_CONF
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(resolv_conf(self.plan))
        os.chmod(path, 0o644)  # whatever the umask: any user the workload runs as reads it
        return Mount(target="/etc/resolv.conf", source=str(path), type="bind", read_only=True)

    # -- running ------------------------------------------------------------------------

    def launch(self, detached: bool) -> None:
        """Start the workload, then the ingress (a separate ingress needs the workload)."""
        with engine_errors():
            self._launch(detached)

    def _launch(self, detached: bool) -> None:
        assert self.workload is not None
        workload = self.workload
        if not detached:
            self.attachment = containers.Attachment(self.client, workload,
                                                    stdin=self.spec.transport == "stdio")
            self.undo.callback(self.attachment.close)
        if self.plan is not None:
            self._strip_bridge()  # again: an engine may have restored it meanwhile
        with engine_errors(f"starting {workload.name}"):
            workload.start()
        if self.attachment is not None:
            self.attachment.start()
        # A detached workload's output stays with the engine: `docker logs NAME`.
        if "ingress" in self.fence:
            self._start_fence(*self.fence["ingress"])

    def wait(self) -> int:
        assert self.workload is not None
        with engine_errors():
            code = _wait_forwarding(self.workload, self.signals)
        if self.attachment is not None:
            self.attachment.finish()
        return code

    def close(self) -> None:
        with engine_errors("removing the fence"):
            self.undo.close()


def resolv_conf(plan: networks.AddressPlan) -> str:
    """The workload's resolver: the dns container, with short timeouts (a refused name
    fails fast)."""
    return f"nameserver {plan.dns}\noptions timeout:2 attempts:2\n"


def _signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def _host_addresses(fence_subnets: list[str]) -> tuple[IPAddress | IPNetwork, ...]:
    """The host's addresses and the fence's own networks (their gateways included)."""
    from netfence.runtimes.netns import host_addresses

    found: list[IPAddress | IPNetwork] = list(host_addresses())
    for text in fence_subnets:
        with contextlib.suppress(ValueError):
            found.append(ipaddress.ip_network(text, strict=False))
    return tuple(found)


def _check_names_free(client: DockerClient, name: str) -> None:
    """Every name this workload will give is free (else nothing is created)."""
    import docker.errors

    wanted = [name, *(containers.container_name(name, r)
                      for r in (*_START_ORDER, HOLDER_ROLE))]
    with engine_errors("checking names"):
        for container_name in wanted:
            try:
                client.containers.get(container_name)
            except docker.errors.NotFound:
                continue
            raise UsageError(f"a container named {container_name!r} already exists",
                             remedy=f"pick another --name, or `netfence stop {name} "
                                    "--runtime docker` if netfence left it")
        with contextlib.suppress(docker.errors.NotFound):
            client.networks.get(networks.internal_network_name(name))
            raise UsageError(f"a network named {networks.internal_network_name(name)!r} "
                             "already exists",
                             remedy=f"netfence stop {name} --runtime docker")


def _require_image(client: DockerClient, image: str) -> None:
    import docker.errors

    with engine_errors(f"image {image}"):
        try:
            client.images.get(image)
            return
        except docker.errors.ImageNotFound:
            pass
        log.info("pulling %s", image)
        try:
            client.images.pull(image)
        except docker.errors.APIError as exc:
            reason = str(getattr(exc, "explanation", None) or exc).strip().splitlines()
            raise UsageError(
                f"image {image} is not in the container engine and could not be pulled"
                f"{': ' + reason[0][:160] if reason else ''}",
                remedy="build or pull it first") from None


def _wait_forwarding(container: Container, signals: StopSignals) -> int:
    """Wait for the workload, passing stop signals to it; SIGKILL after a grace period."""
    result: dict[str, Any] = {}

    def wait() -> None:
        try:
            result.update(container.wait())
        except Exception as exc:  # reported below, in the main thread
            result["error"] = exc

    waiter = threading.Thread(target=wait, name="netfence-wait", daemon=True)
    waiter.start()
    deadline: float | None = None
    while waiter.is_alive():
        # A signal from before the workload started is passed on in the first round.
        for signum in signals.take():
            with contextlib.suppress(Exception):
                container.kill(signal=_signal_name(signum))
            if deadline is None:
                deadline = time.monotonic() + WORKLOAD_STOP_GRACE
        if deadline is not None and time.monotonic() > deadline:
            with contextlib.suppress(Exception):
                container.kill(signal="SIGKILL")
            deadline = time.monotonic() + WORKLOAD_STOP_GRACE
        waiter.join(0.1)
    if "error" in result:
        raise NetfenceError(f"lost the workload container: {result['error']}")
    code = int(result.get("StatusCode", 1))
    return code


class DockerRuntime(SupervisedRuntime):
    name = "docker"

    def prepare(self, spec: WorkloadSpec) -> WorkloadSpec:
        containers.workload_command(spec.command)
        client = connect()
        try:
            refuse_rootless(client)
        finally:
            client.close()
        return dataclasses.replace(spec, files=grants.check(spec.profile, container=True))

    def fence(self, spec: WorkloadSpec, backend: NetworkProxy, record: state.WorkloadState,
              signals: StopSignals) -> DockerFence:
        return DockerFence(connect(), spec, backend, Path(record.state_dir), signals)

    def remove(self, name: str, record: state.WorkloadState | None) -> bool:
        client = connect()
        found = bool(_owned(client, name))
        teardown(client, name)
        return found or record is not None

    # -- ps, stop, logs ---------------------------------------------------------------

    def list(self) -> list[state.WorkloadState]:
        client = connect()
        with engine_errors("listing workloads"):
            found = client.containers.list(
                filters={"label": [f"{LABEL_MANAGED}=true", f"{LABEL_ROLE}=workload"]},
                ignore_removed=True)
        out: list[state.WorkloadState] = []
        for container in found:
            labels = container.labels
            name = labels.get(LABEL_WORKLOAD, "")
            record = state.load(name) if name else None
            if record is not None and record.runtime == self.name:
                out.append(record)
                continue
            out.append(state.WorkloadState(
                name=name, runtime=self.name, proxy=labels.get(LABEL_PROXY, ""),
                command=_json_list(labels.get(LABEL_COMMAND)), supervisor_pid=0,
                supervisor_start="", started_at=_float(labels.get(LABEL_STARTED)),
                state_dir=str(state.state_dir(name)),
            ))
        return sorted(out, key=lambda s: s.name)


def _owned(client: DockerClient, name: str) -> list[Container]:
    with engine_errors("listing containers"):
        return client.containers.list(
            all=True, filters={"label": [f"{LABEL_MANAGED}=true", f"{LABEL_WORKLOAD}={name}"]},
            ignore_removed=True)


def teardown(client: DockerClient, name: str) -> None:
    """Remove everything a workload owns, found by its labels; then the external network
    if nothing else uses it."""
    # The workload before its holder: an engine keeps a container others joined.
    for container in sorted(_owned(client, name),
                            key=lambda c: c.labels.get(LABEL_ROLE) == HOLDER_ROLE):
        containers.remove(client, container.id or "")
    with engine_errors("listing networks"):
        owned = client.networks.list(
            filters={"label": [f"{LABEL_MANAGED}=true", f"{LABEL_WORKLOAD}={name}"]})
    for network in owned:
        networks.remove_network(client, network.name or "")
    networks.remove_bridged(name)
    networks.remove_external_if_unused(client)


def _json_list(text: str | None) -> list[str]:
    try:
        value = json.loads(text or "[]")
    except ValueError:
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


def _float(text: str | None) -> float:
    try:
        return float(text or 0)
    except ValueError:
        return 0.0
