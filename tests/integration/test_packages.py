"""Published MCP servers by package and by registry name, end to end: `netfence run --
uvx://...`, `npx://...` and `registry://NAME` installed outside the fence (from the real
package registries, from this host: the product's behaviour) into a cache the module
makes, then driven by the MCP SDK's client inside a fence that allows no host at all.

Shown for each: the server's tools work; the registries are out of the workload's reach
(its own requests to them are refused); the second start comes from the cache with the
installers pointed at a dead address (it would fail if either ran).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.types import CallToolResult, TextContent

from netfence import registry
from netfence.packages.refs import parse
from tests.support.fakenet import FakeNet
from tests.support.fence import netfence_argv

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("nothing_left_behind")]

# Installs take a while the first time (the registries, then a venv or node_modules).
SESSION_TIMEOUT = 300.0
# Where an installer that ran anyway would go: nothing listens on the discard port.
DEAD = "http://127.0.0.1:9/"
# Would make pip, uv and npm fail at once if the second start ran any of them.
NO_INSTALLER = {"PIP_INDEX_URL": DEAD, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "",
                "UV_INDEX_URL": DEAD, "UV_OFFLINE": "1", "npm_config_registry": DEAD,
                "npm_config_offline": "true", "HTTPS_PROXY": DEAD, "HTTP_PROXY": DEAD,
                "https_proxy": DEAD, "http_proxy": DEAD}
UV = Path(sys.executable).with_name("uv")


def text_of(result: CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, TextContent))


@pytest.fixture(scope="module")
def package_cache(fakenet: FakeNet) -> Iterator[Path]:
    """netfence's cache for this module only (never a real user's), readable by the
    workload's user; removed at the end."""
    work = Path(tempfile.mkdtemp(prefix="nf-packages-"))
    try:
        work.chmod(0o755)
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def netfence_env(cache: Path, **extra: str) -> dict[str, str]:
    # PIP_FIND_LINKS and the like stay: the machine's own pip configuration.
    return {**os.environ, "NETFENCE_CACHE_DIR": str(cache), **extra}


def fence_args(fakenet: FakeNet) -> list[str]:
    # The default profile: no host at all. The fence's resolver is the simulated
    # internet's, so nothing it might ask leaves this machine.
    return ["run", "--dns-upstream", fakenet.dns, "--user", "nobody"]


def session(command: list[str], env: dict[str, str], errlog: Path, exercise: Any) -> None:
    params = StdioServerParameters(command=sys.executable,
                                   args=["-m", "netfence", *command], env=env)

    async def talk(log: Any) -> None:
        async with Client(stdio_client(params, errlog=log)) as client:
            await exercise(client)

    import asyncio

    with errlog.open("w+") as log:
        asyncio.run(asyncio.wait_for(talk(log), SESSION_TIMEOUT))
    text = errlog.read_text()
    assert "Traceback" not in text, text


def registry_host(kind: str) -> str:
    """The registry the installers use here, from their own configuration."""
    if kind == "npm":
        done = subprocess.run(["npm", "config", "get", "registry"], capture_output=True,
                              text=True, timeout=60, check=True)
        host = urllib.parse.urlsplit(done.stdout.strip()).hostname
    else:
        from pip._internal.models.index import PyPI  # pip's default index

        host = PyPI.netloc
    assert host, kind
    return host


# --- uvx:// -------------------------------------------------------------------------------


async def _time_tools(client: Client) -> None:
    tools = {t.name for t in (await client.list_tools()).tools}
    assert {"get_current_time", "convert_time"} <= tools, tools
    now = await client.call_tool("get_current_time", {"timezone": "Europe/Paris"})
    assert not now.is_error, text_of(now)
    assert "Europe/Paris" in text_of(now)


def test_a_uvx_server_installs_outside_then_starts_from_the_cache(
        fakenet: FakeNet, package_cache: Path, tmp_path: Path) -> None:
    cache = package_cache / "pip"
    command = [*fence_args(fakenet), "--", "uvx://mcp-server-time"]
    first = tmp_path / "first.log"
    session(command, netfence_env(cache, NETFENCE_UV="none"), first, _time_tools)
    assert "installing uvx://mcp-server-time with pip" in first.read_text()

    # The second start: the cached latest, no installer (it would fail), no network.
    again = tmp_path / "again.log"
    session(command, netfence_env(cache, NETFENCE_UV="none", **NO_INSTALLER), again,
            _time_tools)
    assert "installing" not in again.read_text()

    # The workload cannot reach the package index itself: under the same profile, the
    # install's own interpreter asking the index is refused by the fence (403, by name,
    # before anything resolves it).
    (installed,) = (cache / "uvx" / "mcp-server-time").glob("[0-9]*")
    host = registry_host("pypi")
    probe = ("import urllib.request, urllib.error\n"
             f"try:\n    urllib.request.urlopen('https://{host}/simple/mcp/', timeout=20)\n"
             "except urllib.error.URLError as exc:\n    print('refused', exc)\n"
             "else:\n    print('reached')\n")
    done = subprocess.run(
        netfence_argv(*fence_args(fakenet), "--", str(installed / "bin" / "python"), "-c",
                      probe),
        capture_output=True, text=True, timeout=120, env=netfence_env(cache))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("refused") and "403" in done.stdout, done.stdout


# --- npx:// -------------------------------------------------------------------------------


def _everything_tools(refused_url: str | None) -> Any:
    async def exercise(client: Client) -> None:
        tools = {t.name for t in (await client.list_tools()).tools}
        assert {"echo", "get-sum", "gzip-file-as-resource"} <= tools, tools
        echoed = await client.call_tool("echo", {"message": "through the fence"})
        assert not echoed.is_error and "through the fence" in text_of(echoed), text_of(echoed)
        if refused_url is not None:
            # Its one tool that fetches, pointed at the registry: Node's fetch ignores
            # the proxy variables, lands on the transparent path, and is refused by name.
            fetched = await client.call_tool("gzip-file-as-resource",
                                             {"name": "r.gz", "data": refused_url})
            assert fetched.is_error and "fetch failed" in text_of(fetched), text_of(fetched)

    return exercise


def test_an_npx_server_installs_outside_then_starts_from_the_cache(
        fakenet: FakeNet, package_cache: Path, tmp_path: Path) -> None:
    cache = package_cache / "npm"
    command = [*fence_args(fakenet), "--", "npx://@modelcontextprotocol/server-everything"]
    registry_url = f"https://{registry_host('npm')}/@modelcontextprotocol%2fserver-everything"
    first = tmp_path / "first.log"
    session(command, netfence_env(cache), first, _everything_tools(registry_url))
    log = first.read_text()
    assert "installing npx://@modelcontextprotocol/server-everything with npm" in log
    installs = list((cache / "npx" / "@modelcontextprotocol" / "server-everything").glob(
        "[0-9]*"))
    assert len(installs) == 1

    again = tmp_path / "again.log"
    session(command, netfence_env(cache, **NO_INSTALLER), again, _everything_tools(None))
    assert "installing" not in again.read_text()


# --- registry://NAME ----------------------------------------------------------------------


def test_a_registry_entry_runs_by_name_with_its_profile(
        fakenet: FakeNet, package_cache: Path, tmp_path: Path) -> None:
    """registry://time: its pinned package, installed with uv when there is one (this
    environment's), run with the entry's reviewed profile (no network at all)."""
    if not UV.is_file():
        pytest.fail(f"{UV} is missing: pip install -e '.[test]'")
    cache = package_cache / "uv"
    entry = registry.load()["time"]
    assert entry.profile.network.mode == "none"
    errlog = tmp_path / "registry.log"
    session([*fence_args(fakenet), "--", "registry://time"],
            netfence_env(cache, NETFENCE_UV=str(UV)), errlog, _time_tools)
    pinned = parse(entry.server.package or "")
    assert f"installing {pinned} with uv" in errlog.read_text()
    assert (cache / "uvx" / "mcp-server-time" / str(pinned.version)).is_dir()
