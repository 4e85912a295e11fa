"""`netfence run | update | ps | stop | logs | render | check | doctor`."""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from netfence import __version__, handoff
from netfence.backends import (
    DNS_PORT,
    SUPPORTED,
    DecisionRecord,
    Endpoint,
    Placement,
    get_backend,
    write_setup,
)
from netfence.cli import output, targets
from netfence.cli.images import images as images_group
from netfence.cli.kubernetes import kubernetes_options, render_kubernetes
from netfence.cli.mcp_config import mcp_config
from netfence.cli.options import parse_env
from netfence.cli.packages import packages as packages_group
from netfence.cli.registry import registry as registry_group
from netfence.errors import NetfenceError, PrivilegeError, UsageError
from netfence.profile import split_host_port
from netfence.runtimes import WorkloadSpec, get_runtime, running, runtime_of
from netfence.runtimes.caller import caller_permissions
from netfence.runtimes.logs import PolicyChange
from netfence.runtimes.resolver import host_resolver, parse_endpoint
from netfence.runtimes.state import check_name, new_name

if TYPE_CHECKING:
    from netfence.profile.model import Profile

PROFILE_HELP = "none | network | FILE (JSON or YAML); default: none (deny all egress)"


def _registry_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--registry", "registry_files", multiple=True, metavar="FILE",
                        help="A registry of your own, in netfence's format (also "
                             "NETFENCE_REGISTRY); its entries replace shipped ones.")(fn)


def _profile_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--allow-cidr", multiple=True,
                      help="Private range the workload may reach.")(fn)
    fn = click.option("--allow-port", multiple=True, type=click.IntRange(1, 65535),
                      help="Allowed destination port (default 80 and 443).")(fn)
    fn = click.option("--allow-host", multiple=True,
                      help="Allowed host (*.example.com for subdomains).")(fn)
    fn = click.option("--profile", "profile_ref", default="none", show_default=True,
                      help=PROFILE_HELP)(fn)
    return fn


def _load(profile_ref: str, allow_host: tuple[str, ...], allow_port: tuple[int, ...],
          allow_cidr: tuple[str, ...]) -> Profile:
    from netfence.profile.loader import load_profile, with_overrides

    with caller_permissions():  # the caller's file: read it as they could
        profile = load_profile(profile_ref)
    return with_overrides(profile, allow_host=allow_host, allow_port=allow_port,
                          allow_cidr=allow_cidr)


def policy_source(profile_ref: str, allow_host: tuple[str, ...], allow_port: tuple[int, ...],
                  allow_cidr: tuple[str, ...]) -> str:
    """Where a policy comes from, as `netfence ps` shows it: the profile, then the options
    added to it."""
    extra = ([f"--allow-host {h}" for h in allow_host] + [f"--allow-port {p}" for p in allow_port]
             + [f"--allow-cidr {c}" for c in allow_cidr])
    return " ".join([profile_ref, *extra])


def _grant_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--allow-unix-socket", "allow_unix_socket", multiple=True,
                      metavar="PATH", help="Host Unix socket the workload may connect to.")(fn)
    fn = click.option("--write", "write", multiple=True, metavar="PATH",
                      help="Host file or directory the workload may read and write.")(fn)
    fn = click.option("--read", "read", multiple=True, metavar="PATH",
                      help="Host file or directory the workload may read.")(fn)
    return fn


def absolute_paths(paths: tuple[str, ...]) -> list[str]:
    """Grants from the command line: relative to the caller's directory (sudo keeps it)."""
    return [os.path.abspath(p) if p else p for p in paths]


def _proxy_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--proxy", default=None,
                        help=f"Proxy backend: {' | '.join(SUPPORTED)} "
                             "(env NETFENCE_NETWORK_PROXY; default envoy).")(fn)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="netfence")
@click.option("-v", "--verbose", is_flag=True, help="Show progress details on stderr.")
def cli(verbose: bool) -> None:
    """Run untrusted MCP servers and commands behind a network fence."""
    output.setup_logging(verbose)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@_proxy_option
@click.option("--runtime", default=None,
              help="namespace (default) | docker: COMMAND is then IMAGE [ARGS...] "
                   "(env NETFENCE_RUNTIME).")
@_profile_options
@_grant_options
@click.option("--host-filesystem", is_flag=True,
              help="Show the workload the host's whole file system (namespace runtime; "
                   "trusted programs only): only the network is fenced.")
@click.option("--dns-upstream", default=None, help="Resolver the fence uses: IP[:PORT].")
@click.option("--transport", type=click.Choice(["stdio", "sse", "streamable-http"]),
              default=None, help="default: stdio (or the registry entry's)")
@click.option("--target-port", type=click.IntRange(1, 65535), default=None,
              help="Port the workload serves on (HTTP transports).")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Host port of the ingress on 127.0.0.1 (default: a free one).")
@click.option("--name", default=None, help="Workload name (default: generated).")
@click.option("--env", "env_pairs", multiple=True, metavar="K=V",
              help="Environment variable for the workload.")
@click.option("--user", default=None, help="User the workload runs as (default: sudo caller, "
              "else nobody).")
@click.option("--detach", is_flag=True, help="Run in the background; see ps, logs, stop.")
@click.option("--gateway", "use_gateway", is_flag=True, default=None,
              help="Fence it with the host's shared gateway (one Envoy for every such "
                   "workload; root, Envoy, stdio). Default: NETFENCE_GATEWAY=1.")
@click.option("--learn", "learn", type=click.Path(dir_okay=False, path_type=Path),
              default=None, metavar="FILE",
              help="Let every public destination through (loopback, private, link-local "
                   "and the host stay denied) and at exit write to FILE a profile allowing "
                   "exactly what was used.")
@_registry_option
@click.option("--refresh", is_flag=True,
              help="Reinstall the uvx:// or npx:// package (and resolve the latest anew).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(proxy: str | None, runtime: str | None, profile_ref: str,
        allow_host: tuple[str, ...], allow_port: tuple[int, ...], allow_cidr: tuple[str, ...],
        read: tuple[str, ...], write: tuple[str, ...], allow_unix_socket: tuple[str, ...],
        host_filesystem: bool, dns_upstream: str | None, transport: str | None,
        target_port: int | None, port: int | None, name: str | None,
        env_pairs: tuple[str, ...], user: str | None, detach: bool, use_gateway: bool | None,
        learn: Path | None, registry_files: tuple[str, ...], refresh: bool,
        command: tuple[str, ...]) -> None:
    """Run COMMAND behind the fence: netfence run [OPTIONS] -- COMMAND [ARGS...]

    COMMAND may be uvx://PACKAGE[@VERSION] or npx://PACKAGE[@VERSION] (installed outside
    the fence, into netfence's cache, then run inside it) or registry://NAME (a known
    server, with its reviewed profile: netfence registry list)."""
    from netfence.profile.loader import with_overrides

    backend = get_backend(proxy)  # an unknown value fails before anything is created
    chosen_runtime = get_runtime(runtime)
    if use_gateway is None:
        use_gateway = os.environ.get("NETFENCE_GATEWAY") == "1"
    if handoff.worker() is not None:  # a starter's worker: only what it can finish
        _servable_warm(use_gateway, chosen_runtime.name, backend.name, learn, detach)
    env = parse_env(env_pairs)
    targets.needs_namespace(command, chosen_runtime.name)
    target = targets.from_registry(command, env, registry_files)
    server = target.entry.server if target.entry is not None else None
    # An entry's own profile unless one is given; --allow-* and grants add to either.
    given = click.get_current_context().get_parameter_source("profile_ref")
    from_entry = target.profile is not None and given == click.core.ParameterSource.DEFAULT
    base = target.profile if from_entry and target.profile else _load(profile_ref, (), (), ())
    source = policy_source(f"registry://{target.entry.name}" if from_entry and target.entry
                           else profile_ref, allow_host, allow_port, allow_cidr)
    profile = with_overrides(
        base, allow_host=allow_host, allow_port=allow_port, allow_cidr=allow_cidr,
        read=[*absolute_paths(read), *target.read],
        write=[*absolute_paths(write), *target.write],
        allow_unix_socket=absolute_paths(allow_unix_socket))
    if transport is None:
        transport = server.transport if server is not None else "stdio"
        if server is not None and target_port is None:
            target_port = server.target_port
    if transport != "stdio" and target_port is None:
        raise UsageError(f"--transport {transport} needs --target-port (the workload's port)")
    if transport == "stdio" and (target_port or port):
        raise UsageError("--target-port and --port need --transport sse or streamable-http")
    if learn is not None and chosen_runtime.name != "namespace":
        raise UsageError("--learn needs the namespace runtime")
    if host_filesystem and chosen_runtime.name != "namespace":
        raise UsageError("--host-filesystem needs the namespace runtime (a container sees "
                         "its image and its grants)")
    workload_name = check_name(name) if name else new_name()
    # Last of the checks, as it may take a while: the package's install (or cache hit).
    target = targets.installed(target, refresh=refresh, path=env.get("PATH"))
    spec = WorkloadSpec(
        name=workload_name, command=target.command, profile=profile,
        proxy=backend.name, transport=transport,  # type: ignore[arg-type]
        target_port=target_port, port=port, env=env,
        dns_upstream=parse_endpoint(dns_upstream) if dns_upstream else None,
        user=user, detach=detach, learn=learn.absolute() if learn else None,
        host_filesystem=host_filesystem, program_paths=target.program_paths,
        policy_source=source,
        gateway=use_gateway,
    )
    if spec.gateway and chosen_runtime.name != "namespace":
        output.err.print("netfence: the shared gateway serves the namespace runtime only; "
                         "this workload gets a fence of its own", markup=False)
    chosen_runtime.progress = output.progress  # stderr only: stdout is the workload's
    code = chosen_runtime.run(spec)
    if detach:
        output.err.print(f"netfence: started {spec.name}", markup=False)
    sys.exit(code)



def _servable_warm(gateway: bool, runtime: str, proxy: str, learn: Path | None,
                   detach: bool) -> None:
    """Fallback (before anything is printed) unless the run joins the gateway: what a
    starter's worker ends by handing the run's process its exec."""
    from netfence.runtimes.gateway.client import unsupported_for

    if not gateway or runtime != "namespace" or detach or unsupported_for(proxy, learn is not None):
        raise handoff.Fallback


_RUNTIME_OF_HELP = "Default: the runtime the workload was started with."


@cli.command()
@_profile_options
@click.argument("name")
def update(name: str, profile_ref: str, allow_host: tuple[str, ...],
           allow_port: tuple[int, ...], allow_cidr: tuple[str, ...]) -> None:
    """Replace a running workload's network policy with the one these options give (as
    `run` reads them): new connections follow it at once, established connections it
    still allows stay up. File grants stay as the workload started with them."""
    from netfence.profile.loader import profile_data
    from netfence.runtimes import control, state

    record = state.load(check_name(name))
    if record is None or not record.alive:
        raise UsageError(f"no running workload named {name!r}", remedy="see `netfence ps`")
    profile = _load(profile_ref, allow_host, allow_port, allow_cidr)  # a bad one: refused here
    if record.gateway and os.geteuid() == 0:
        from netfence.runtimes.gateway import client, gateway_dir

        client.ensure_daemon(gateway_dir())  # its daemon answers for it (after a kill too)
    source = policy_source(profile_ref, allow_host, allow_port, allow_cidr)
    reply = control.ask(Path(record.state_dir), name,
                        {"op": "update", "source": source, "profile": profile_data(profile)})
    change = describe_change(reply.get("added", ()), reply.get("removed", ()))
    output.err.print(f"netfence: {name}: policy now {source} ({change})", markup=False)
    ignored = reply.get("grants_ignored") or ()
    if ignored:
        output.err.print(f"netfence: {name}: the profile's {', '.join(ignored)} grants are not "
                         "applied: file grants take effect when a workload starts",
                         markup=False)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--runtime", default=None,
              help="Only this runtime's workloads (docker: all the engine has, asked by label).")
def ps(as_json: bool, runtime: str | None) -> None:
    """List running workloads."""
    states = running(runtime)
    if as_json:
        output.print_json([dataclasses.asdict(s) for s in states])
        return
    if not states:
        output.err.print("netfence: no workloads running", markup=False)
        return
    headers = ("NAME", "RUNTIME", "PROXY", "UPTIME", "URL", "POLICY")
    rows = [(s.name, s.runtime, s.proxy, output.duration(time.time() - s.started_at),
             s.url or "-", s.policy or "-", " ".join(shlex.join(s.command).split()))
            for s in states]
    widths = [max(len(header), *(len(r[i]) for r in rows)) for i, header in enumerate(headers)]
    from rich.table import Table  # here, not at the top: every `run` would pay for it

    table = Table(box=None, pad_edge=False, header_style="bold")
    for header, width in zip(headers, widths, strict=True):
        table.add_column(header, no_wrap=True, min_width=width)  # whole, never cut
    # One line per workload: a long command is cut to what is left of the line, not
    # wrapped (--json has all of it).
    left = output.out.width - sum(widths) - 2 * len(headers)
    table.add_column("COMMAND", no_wrap=True, overflow="ellipsis", max_width=max(10, left))
    for row in rows:
        table.add_row(*row)
    output.out.print(table)


@cli.command()
@click.argument("name")
@click.option("--runtime", default=None, help=_RUNTIME_OF_HELP)
def stop(name: str, runtime: str | None) -> None:
    """Stop a workload and remove everything it owns."""
    runtime_of(name, runtime).stop(name)
    output.err.print(f"netfence: stopped {name}", markup=False)


@cli.command()
@click.argument("name")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new decisions.")
@click.option("--denied", is_flag=True, help="Only denials.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--runtime", default=None, help=_RUNTIME_OF_HELP)
def logs(name: str, follow: bool, denied: bool, as_json: bool, runtime: str | None) -> None:
    """The fence's decision log for a workload."""
    for record in runtime_of(name, runtime).decisions(name, follow=follow):
        if isinstance(record, PolicyChange):  # shown with --denied too: it explains them
            line = policy_line(record)
        elif denied and record.allowed:
            continue
        else:
            line = decision_line(record)
        if as_json:
            output.print_json(record.log_entry(name))
        else:
            output.out.print(line, markup=False)


def policy_line(change: PolicyChange) -> str:
    return (f"{change.time} policy now {change.source} "
            f"({describe_change(change.added, change.removed)})")


def describe_change(added: Iterable[str], removed: Iterable[str], most: int = 10) -> str:
    """What a policy change allows anew (+) and no longer (-), the first `most` of it (a
    list of 100,000 names changes in one line too; `logs --json` has all of it)."""
    what = [f"+{e}" for e in added] + [f"-{e}" for e in removed]
    if not what:
        return "no change in what it allows"
    more = f" and {len(what) - most} more" if len(what) > most else ""
    return ", ".join(what[:most]) + more


def decision_line(record: DecisionRecord) -> str:
    """A decision as one line of text; the remedy, where there is one, ends it."""
    verdict = "allow" if record.allowed else "deny "
    reason = f"{record.reason} {record.address}" if record.address else record.reason
    remedy = f"; to allow: {record.remedy}" if record.remedy else ""
    # A TLS or plain TCP connection on the transparent path gets no HTTP status.
    status = "-" if record.transparent and not record.status else record.status
    path = " transparent" if record.transparent else ""
    return (f"{record.time} {verdict} {record.method} {record.host}:{record.port} "
            f"{status} {reason} up={record.bytes_up} "
            f"down={record.bytes_down} {record.duration_ms}ms{path}{remedy}")


def _split_target(target: str) -> tuple[str, int]:
    try:
        host, port_text = split_host_port(target)
    except ValueError:
        host, port_text = target, ""
    port_text = "443" if port_text is None else port_text
    if not port_text.isdigit():
        raise UsageError(f"{target!r}: expected HOST[:PORT]")
    return host, int(port_text)


@cli.command()
@_profile_options
@click.option("--resolved-ip", default=None, help="The address the name resolves to.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.argument("target")
def check(profile_ref: str, allow_host: tuple[str, ...], allow_port: tuple[int, ...],
          allow_cidr: tuple[str, ...], resolved_ip: str | None, as_json: bool,
          target: str) -> None:
    """Decide HOST[:PORT] (default port 443) as the fence would; exit 0 allowed, 1 denied."""
    from netfence.policy import compile_policy
    from netfence.runtimes.netns import host_addresses

    policy = compile_policy(_load(profile_ref, allow_host, allow_port, allow_cidr),
                            host_addresses())
    host, port = _split_target(target)
    decision = policy.decide(host, port, resolved_ip)
    if as_json:
        output.print_json({**dataclasses.asdict(decision), "remedy": decision.remedy})
    else:
        output.out.print(decision.describe(), markup=False)
    sys.exit(0 if decision.allowed else 1)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@_proxy_option
@_profile_options
@click.option("--target", type=click.Choice(["configs", "kubernetes"]), default="configs",
              show_default=True,
              help="configs: the proxy and DNS configs; kubernetes: a cluster's manifests for "
                   "-- IMAGE [ARGS...].")
@click.option("--dns-upstream", default=None, help="Resolver the fence uses: IP[:PORT].")
@click.option("--transport", type=click.Choice(["stdio", "sse", "streamable-http"]),
              default="stdio", show_default=True, help="kubernetes: the workload's transport.")
@click.option("--target-port", type=click.IntRange(1, 65535), default=None,
              help="Render an ingress to this workload port too.")
@kubernetes_options
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Directory to write to (default: print).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def render(proxy: str | None, profile_ref: str, allow_host: tuple[str, ...],
           allow_port: tuple[int, ...], allow_cidr: tuple[str, ...], target: str,
           dns_upstream: str | None, transport: str, target_port: int | None,
           name: str | None, namespace: str, fence_ip: str | None,
           cluster_cidr: tuple[str, ...], cluster_domain: str, env_pairs: tuple[str, ...],
           user: str | None, out_dir: Path | None, command: tuple[str, ...]) -> None:
    """Write what a profile compiles to: the proxy and DNS configs, for inspection, or
    (--target kubernetes) everything a cluster needs to run IMAGE behind the fence."""
    import tempfile

    from netfence.backends.dnsmasq import dns_setup
    from netfence.policy import compile_policy

    backend = get_backend(proxy)
    profile = _load(profile_ref, allow_host, allow_port, allow_cidr)
    if target == "kubernetes":
        render_kubernetes(
            backend, profile, name=name, namespace=namespace, fence_ip=fence_ip,
            cluster_cidr=cluster_cidr, cluster_domain=cluster_domain,
            dns_upstream=dns_upstream, transport=transport, target_port=target_port,
            env_pairs=env_pairs, user=user, command=command, out_dir=out_dir)
        return
    if command or transport != "stdio":
        raise UsageError("IMAGE and --transport need --target kubernetes")
    policy = compile_policy(profile)
    with tempfile.TemporaryDirectory(prefix="netfence-render-") as tmp:
        directory = out_dir or Path(tmp)
        placement = Placement(
            state_dir=directory,
            egress_listen=Endpoint("127.0.0.1", 3128),
            workload_proxy="127.0.0.1:3128",
            dns_listen=Endpoint("127.0.0.1", DNS_PORT),
            upstream_resolver=parse_endpoint(dns_upstream) if dns_upstream else host_resolver(),
            ingress_listen=Endpoint("127.0.0.1", 8080) if target_port else None,
            ingress_upstream=Endpoint("127.0.0.1", target_port) if target_port else None,
        )
        setup = backend.setup(policy, placement) + dns_setup(policy, placement)
        write_setup(setup, directory)
        for spec in setup.files:
            if out_dir is not None:
                output.err.print(f"wrote {spec.path}", markup=False)
            elif spec.content:
                output.out.print(f"# ==> {spec.path.relative_to(directory)} <==", markup=False)
                output.out.print(_readable(spec.path, spec.content), markup=False)


def _readable(path: Path, content: str) -> str:
    """A config as printed for a person: JSON indented (the file is written compact)."""
    if path.suffix != ".json":
        return content
    import json

    return json.dumps(json.loads(content), indent=1) + "\n"


@cli.command()
def doctor() -> None:
    """Check what `netfence run` needs on this machine, and how to fix what is missing."""
    from netfence.cli.doctor import doctor_checks

    failed = False
    for check_result in doctor_checks():
        mark = ("[green]ok[/green]  " if check_result.ok else
                "[yellow]none[/yellow]   " if check_result.optional else "[red]MISSING[/red]")
        output.err.print(f"{mark} {check_result.name}: {check_result.detail}")
        if not check_result.ok:
            failed = failed or not check_result.optional
            if check_result.remedy:
                output.err.print(f"        fix: {check_result.remedy}", markup=False)
    output.err.print("netfence: some checks failed; apply the fixes above" if failed
                     else "netfence: ready to run", markup=False)
    sys.exit(1 if failed else 0)


cli.add_command(images_group)
cli.add_command(mcp_config)
cli.add_command(packages_group)
cli.add_command(registry_group)


@cli.command()
@click.option("--on-demand", is_flag=True,
              help="Exit once no workload has used it for a while (as `run --gateway` "
                   "starts it).")
def gateway(on_demand: bool) -> None:
    """Serve the shared gateway in the foreground (root): one Envoy for every workload
    started with `netfence run --gateway`. Started on demand when none runs; run it as a
    service to keep it warm."""
    from netfence.runtimes.gateway.daemon import IDLE_EXIT_S, serve

    if os.geteuid() != 0:
        raise PrivilegeError("the shared gateway needs root", remedy="run it with sudo")
    sys.exit(serve(IDLE_EXIT_S if on_demand else None))


@cli.command("gateway-starter", hidden=True)
def gateway_starter() -> None:
    """The gateway daemon's helper for warm runs (cli/starter.py)."""
    from netfence.cli.starter import serve
    from netfence.runtimes.gateway import gateway_dir

    serve(gateway_dir(), main, _warm_up)


def _warm_up() -> None:
    """What every gateway run does first, done once in the starter: the modules a run
    imports (a worker importing one pays for it at each start: 10 ms for the backend's),
    and pydantic's validators, built at the first profile."""
    from netfence.runtimes.gateway import client
    from netfence.runtimes.namespace import forwarder, launch, sandbox

    del client, forwarder, launch, sandbox
    _load("none", ("example.com",), (443,), ())
    get_backend("envoy")
    get_runtime("namespace")


def main(prog_name: str | None = None) -> None:
    try:
        cli.main(standalone_mode=False, prog_name=prog_name)
    except NetfenceError as exc:
        output.error(str(exc))
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
