"""`netfence registry list | show`: the known MCP servers and their reviewed profiles."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any

import click

from netfence.cli import output
from netfence.cli.targets import load_entries

# The registry's models are imported by the commands that use them (cli.targets).
if TYPE_CHECKING:
    from netfence import registry as reg
    from netfence.profile import Profile

_REGISTRY_OPTION = click.option(
    "--registry", "registry_files", multiple=True, metavar="FILE",
    help="A registry of your own, in netfence's format (also NETFENCE_REGISTRY).")


def network_summary(profile: Profile) -> str:
    """The profile's egress in a few words."""
    net = profile.network
    out = net.outbound
    if net.mode == "none":
        return "none"
    ports = ",".join(str(p) for p in (out.allow_port if out.allow_port is not None
                                      else (80, 443)))
    if out.insecure_allow_all:
        return f"any public host :{ports}"
    hosts = [str(h) for h in out.allow_host]
    if not hosts and not out.allow_cidr:
        return "none (add hosts with --allow-host)"
    shown = hosts[0] if len(hosts) == 1 else f"{hosts[0]} +{len(hosts) - 1}" if hosts else ""
    cidrs = f" {len(out.allow_cidr)} ranges" if out.allow_cidr else ""
    return f"{shown}{cidrs} :{ports}".strip()


def what_runs(server: reg.Server) -> str:
    return server.package or shlex.join(server.command or ())


def entry_json(entry: reg.Entry) -> dict[str, Any]:
    from netfence import registry as reg

    data: dict[str, Any] = {"name": entry.name, "source": entry.source,
                            **entry.server.model_dump(mode="json", exclude={"permissions"})}
    data["permissions"] = reg.profile_data(entry.permissions)
    return data


def run_example(entry: reg.Entry) -> str:
    from netfence import registry as reg

    envs = [f"--env {v.name}=..." for v in entry.server.env_vars if v.required]
    args = " DIR" if entry.server.grant_arguments else ""
    return " ".join(["sudo netfence run", *envs, f"-- {reg.SCHEME}{entry.name}{args}"])


@click.group()
def registry() -> None:
    """Known MCP servers with reviewed permission profiles; run one with
    netfence run -- registry://NAME."""


@registry.command("list")
@_REGISTRY_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_entries(registry_files: tuple[str, ...], as_json: bool) -> None:
    """The registry's servers."""
    entries = sorted(load_entries(registry_files).values(), key=lambda e: e.name)
    if as_json:
        output.print_json([entry_json(e) for e in entries])
        return
    rows = []
    for entry in entries:
        needs = " ".join(v.name for v in entry.server.env_vars if v.required) or "-"
        description = entry.server.description
        if entry.source != "built-in":
            description = f"[{entry.source}] {description}"
        rows.append((entry.name, what_runs(entry.server), network_summary(entry.profile),
                     needs, description))
    output.out.print(output.columns(("NAME", "RUNS", "NETWORK", "NEEDS", "DESCRIPTION"), rows),
                     markup=False, highlight=False)


@registry.command("show")
@_REGISTRY_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.argument("name")
def show_entry(registry_files: tuple[str, ...], as_json: bool, name: str) -> None:
    """One server: what runs, what it needs, its profile, and how to run it."""
    from netfence import registry as reg

    entry = reg.find(reg.SCHEME + name.removeprefix(reg.SCHEME), load_entries(registry_files))
    if as_json:
        output.print_json(entry_json(entry))
        return
    import yaml

    server = entry.server
    lines = [f"{entry.name}: {server.description}",
             f"  runs:       {what_runs(server)}" + ("" if server.package else
                                                     "  (a command you install)"),
             f"  transport:  {server.transport}"
             + (f" on port {server.target_port}" if server.target_port else ""),
             f"  source:     {entry.source}"]
    if server.repository_url:
        lines.append(f"  repository: {server.repository_url}")
    if server.tools:
        lines.append(f"  tools:      {', '.join(server.tools)}")
    if server.grant_arguments:
        lines.append(f"  arguments:  paths given are granted ({server.grant_arguments})")
    if server.env_vars:
        lines.append("  environment (--env NAME=VALUE):")
        for var in server.env_vars:
            flags = ", ".join(f for f, on in (("required", var.required),
                                             ("secret", var.secret)) if on) or "optional"
            grant = f"; its path is granted ({var.grant})" if var.grant else ""
            lines.append(f"    {var.name} ({flags}){': ' if var.description else ''}"
                         f"{var.description}{grant}")
    profile = reg.profile_data(entry.permissions)
    lines.append("  profile:")
    lines += ["    " + line for line in yaml.safe_dump(profile, sort_keys=False).splitlines()]
    lines.append(f"  run it:     {run_example(entry)}")
    output.out.print("\n".join(lines), markup=False, highlight=False)
