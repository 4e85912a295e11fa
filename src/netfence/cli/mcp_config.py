"""`netfence mcp-config`: the JSON an MCP client (Claude Desktop, Cursor, VS Code) needs to
start a server behind the fence, or to reach a fenced HTTP server.

stdio servers: the client starts `netfence run ... -- COMMAND` itself and speaks MCP over
its stdin/stdout. Clients run as their user: where that user can run netfence rootless
(user namespaces allowed), the command is netfence itself; else it goes through `sudo -n`
(a sudoers rule lets the user run netfence without a password). --sudo/--no-sudo decide
instead. HTTP servers: the client gets the ingress URL, and stderr shows the
`netfence run --detach` command that starts the server on that port. File grants
(--read, --write, --allow-unix-socket) pass through, made absolute.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import click

from netfence.backends import SUPPORTED
from netfence.cli import output
from netfence.cli.options import parse_env
from netfence.errors import UsageError
from netfence.runtimes.state import check_name

# The registry and the installer are imported where used: `netfence run` needs neither.
if TYPE_CHECKING:
    from netfence import registry

Format = Literal["claude", "cursor", "vscode"]
FORMATS = ("claude", "cursor", "vscode")
BUILTIN_PROFILES = ("none", "network")
DEFAULT_TARGET_PORT = 8000


def netfence_invocation() -> list[str]:
    """How to start this netfence by absolute path: clients run with their own PATH (and
    sudo with its secure_path), where `netfence` may not be found."""
    script = Path(sys.argv[0])
    if script.name == "netfence" and script.exists():
        return [str(script.absolute())]
    found = shutil.which("netfence")
    if found:
        return [os.path.abspath(found)]
    return [sys.executable, "-m", "netfence"]


def _profile_ref(ref: str) -> str:
    """A built-in name as is; a file by absolute path (the client's cwd is unknown).
    Loading it here reports a bad profile now, not when the client starts it."""
    from netfence.profile.loader import load_profile

    load_profile(ref)
    return ref if ref in BUILTIN_PROFILES else str(Path(ref).absolute())


def _command(command: tuple[str, ...]) -> list[str]:
    """The workload's program by absolute path when found on this PATH (the client's and
    sudo's PATH may lack ~/.local/bin and the like); otherwise as given (a package or a
    registry entry as it is)."""
    from netfence import registry
    from netfence.packages import is_package

    first = command[0]
    if os.sep not in first and not (is_package(first) or registry.is_entry(first)):
        found = shutil.which(first)
        if found:
            first = os.path.abspath(found)
    return [first, *command[1:]]


def run_arguments(*, name: str, profile: str | None, proxy: str | None,
                  allow_host: tuple[str, ...] = (), allow_port: tuple[int, ...] = (),
                  allow_cidr: tuple[str, ...] = (), env: tuple[str, ...] = (),
                  read: tuple[str, ...] = (), write: tuple[str, ...] = (),
                  allow_unix_socket: tuple[str, ...] = (),
                  transport: str = "stdio", target_port: int | None = None,
                  port: int | None = None, registry: tuple[str, ...] = ()) -> list[str]:
    """The `netfence run` options (after `run`, before `--`) for these settings; grants
    by absolute path (the client's working directory is not yours). No profile: a
    registry entry's own."""
    args = ["run", "--name", name]
    if profile is not None:
        args += ["--profile", profile]
    if proxy:
        args += ["--proxy", proxy]
    for flag, values in (("--allow-host", allow_host), ("--allow-port", allow_port),
                         ("--allow-cidr", allow_cidr), ("--read", _absolute(read)),
                         ("--write", _absolute(write)),
                         ("--allow-unix-socket", _absolute(allow_unix_socket)),
                         ("--env", env), ("--registry", _absolute(registry))):
        for value in values:
            args += [flag, str(value)]
    if transport != "stdio":
        args += ["--transport", transport, "--target-port", str(target_port),
                 "--port", str(port)]
    return args


def _absolute(paths: tuple[str, ...]) -> list[str]:
    return [os.path.abspath(p) for p in paths]


def _default_name(first: str) -> str:
    """A registry entry's name, or a package's command (an npm scope left out)."""
    from netfence import registry
    from netfence.packages import is_package
    from netfence.packages import parse as parse_package

    if registry.is_entry(first):
        return first.removeprefix(registry.SCHEME)
    if is_package(first):
        ref = parse_package(first)
        return ref.command or ref.default_command
    raise UsageError("--name is needed (the server's name in the client and in netfence)")


def _registry_entry(first: str, env_pairs: tuple[str, ...],
                    files: tuple[str, ...]) -> registry.Entry | None:
    """The registry entry `first` names, checked now: it exists, and every variable it
    requires is given with --env (the client's `env` block does not reach the server)."""
    from netfence import registry

    if not registry.is_entry(first):
        return None
    from netfence.cli.targets import load_entries

    entry = registry.find(first, load_entries(files))
    given = {pair.partition("=")[0] for pair in env_pairs if pair.partition("=")[2]}
    for var in entry.server.env_vars:
        if var.required and var.name not in given:
            raise UsageError(f"{first} needs {var.name}"
                             + (f": {var.description}" if var.description else ""),
                             remedy=f"pass --env {var.name}=VALUE")
    return entry


def client_entry(fmt: Format, *, command: list[str] | None = None,
                 url: str | None = None, transport: str = "stdio") -> dict[str, Any]:
    """One server's entry in the client's own format."""
    if command is not None:
        entry: dict[str, Any] = {"command": command[0], "args": command[1:]}
        if fmt == "vscode":
            entry = {"type": "stdio", **entry}
        return entry
    assert url is not None
    kind = "sse" if transport == "sse" else "http"
    return {"type": kind, "url": url}


def client_config(fmt: Format, name: str, entry: dict[str, Any]) -> dict[str, Any]:
    # VS Code's mcp.json keys servers by "servers"; Claude Desktop and Cursor by "mcpServers".
    return {"servers" if fmt == "vscode" else "mcpServers": {name: entry}}


@click.command("mcp-config", context_settings={"ignore_unknown_options": True,
                                               "allow_interspersed_args": False})
@click.option("--name", default=None,
              help="The server's name in the client and in netfence (default: the registry "
                   "entry's, or the package's command).")
@click.option("--profile", "profile_ref", default=None,
              help="none | network | FILE (JSON or YAML); default: none, or the registry "
                   "entry's own")
@click.option("--allow-host", multiple=True, help="Allowed host (*.example.com for subdomains).")
@click.option("--allow-port", multiple=True, type=click.IntRange(1, 65535),
              help="Allowed destination port (default 80 and 443).")
@click.option("--allow-cidr", multiple=True, help="Private range the server may reach.")
@click.option("--proxy", default=None, help=f"Proxy backend: {' | '.join(SUPPORTED)}.")
@click.option("--read", multiple=True, metavar="PATH",
              help="Host file or directory the server may read.")
@click.option("--write", multiple=True, metavar="PATH",
              help="Host file or directory the server may read and write.")
@click.option("--allow-unix-socket", "allow_unix_socket", multiple=True, metavar="PATH",
              help="Host Unix socket the server may connect to.")
@click.option("--env", "env_pairs", multiple=True, metavar="K=V",
              help="Environment variable for the server (e.g. its API token).")
@click.option("--transport", type=click.Choice(["stdio", "sse", "streamable-http"]),
              default="stdio", show_default=True)
@click.option("--target-port", type=click.IntRange(1, 65535), default=None,
              help=f"Port the server listens on (HTTP transports; default {DEFAULT_TARGET_PORT}).")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Host port of the ingress on 127.0.0.1 (HTTP transports; required).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="claude",
              show_default=True, help="claude and cursor: mcpServers; vscode: servers.")
@click.option("--registry", "registry_files", multiple=True, metavar="FILE",
              help="A registry of your own (registry://NAME), passed on to netfence run.")
@click.option("--sudo/--no-sudo", default=None,
              help="Start netfence through `sudo -n`, or not. Default: not when you can run "
                   "it rootless here (netfence doctor says), else sudo.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def mcp_config(name: str | None, profile_ref: str | None, allow_host: tuple[str, ...],
               allow_port: tuple[int, ...], allow_cidr: tuple[str, ...], proxy: str | None,
               read: tuple[str, ...], write: tuple[str, ...],
               allow_unix_socket: tuple[str, ...], env_pairs: tuple[str, ...], transport: str,
               target_port: int | None, port: int | None, fmt: Format,
               registry_files: tuple[str, ...], sudo: bool | None,
               command: tuple[str, ...]) -> None:
    """Print the MCP client config for COMMAND behind the fence:
    netfence mcp-config --name N --profile P -- COMMAND [ARGS...]

    COMMAND may be uvx://PACKAGE[@VERSION], npx://PACKAGE[@VERSION] or registry://NAME."""
    name = check_name(name or _default_name(command[0]))
    if proxy is not None and proxy.strip().lower() not in SUPPORTED:
        raise UsageError(f"unknown proxy {proxy!r} (--proxy); supported: {', '.join(SUPPORTED)}")
    parse_env(env_pairs)  # checked here: the entry must not fail at the client's start
    if transport == "stdio" and (target_port or port):
        raise UsageError("--target-port and --port need --transport sse or streamable-http")
    known = _registry_entry(command[0], env_pairs, registry_files)
    if known is not None and transport == "stdio" and known.server.transport != "stdio":
        transport = known.server.transport
        target_port = target_port or known.server.target_port
    if transport != "stdio" and port is None:
        raise UsageError(f"--transport {transport} needs --port: the client's URL must not "
                         "change between runs")
    from netfence.packages import is_package
    from netfence.packages import parse as parse_package

    if is_package(command[0]):
        parse_package(command[0])  # a bad reference fails now, not in the client
    profile = (_profile_ref(profile_ref) if profile_ref is not None
               else None if known is not None else "none")
    args = run_arguments(
        name=name, profile=profile, proxy=proxy, allow_host=allow_host,
        allow_port=allow_port, allow_cidr=allow_cidr, env=env_pairs, read=read, write=write,
        allow_unix_socket=allow_unix_socket, transport=transport,
        target_port=target_port or DEFAULT_TARGET_PORT, port=port, registry=registry_files)
    if sudo is None:
        sudo = not _rootless_here()
    launcher = (["sudo", "-n"] if sudo else []) + netfence_invocation()
    full = [*launcher, *args, "--", *_command(command)]
    if transport == "stdio":
        entry = client_entry(fmt, command=full)
    else:
        path = "/sse" if transport == "sse" else "/mcp"
        entry = client_entry(fmt, url=f"http://127.0.0.1:{port}{path}", transport=transport)
        # Started by hand (a password prompt is fine there), in the background.
        starter = [*(["sudo"] if sudo else []), *netfence_invocation(), "run", "--detach",
                   *args[1:], "--", *_command(command)]
        output.err.print(f"start the server with: {shlex.join(starter)}", markup=False)
    output.out.print(json.dumps(client_config(fmt, name, entry), indent=2), markup=False,
                     highlight=False)


def _rootless_here() -> bool:
    """Whether this user can run a fence without root (as root: no, the client that
    reads the entry runs as someone else)."""
    if os.geteuid() == 0:
        return False
    from netfence.runtimes.namespace.holder import problem

    return problem() is None
