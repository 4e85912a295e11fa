"""Published MCP servers by package and by registry name, end to end: `netfence run --
uvx://...`, `npx://...` and `registry://NAME` installed outside the fence into a cache the
module makes, then driven by the MCP SDK's client inside a fence that allows no host at all.

The installers (pip, uv, npm, run by netfence as the caller) reach package registries this
module serves on loopback (tests/support/registries.py), from the artifacts scripts/install
fetched: the caller's own configuration points them there, as a user's would point at a
mirror, and this machine's own installer configuration is left out. Anything else they
asked for would go to a tripwire proxy, which refuses it and fails the test.

Shown for each: the installer fetched the package from the registry; the server's tools
work; the registry is out of the workload's reach (its own requests to it are refused and
the registry never sees them); the second start comes from the cache with the installers
pointed at a dead address (it would fail if either ran) and no request to any registry.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
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
from tests.support.registries import (
    WHEELS,
    Served,
    missing_artifacts,
    npm_registry,
    pypi_index,
    tripwire,
)

pytestmark = [pytest.mark.integration,
              pytest.mark.usefixtures("nothing_left_behind", "nothing_leaves")]

# A session's bound (the first start installs: a venv or node_modules, from loopback).
SESSION_TIMEOUT = 120.0
# Where an installer that ran anyway would go: nothing listens on the discard port.
DEAD = "http://127.0.0.1:9/"
# What the installers reach without the tripwire: the registries here.
LOCAL = "127.0.0.1,localhost"
UV = Path(sys.executable).with_name("uv")


@dataclass(frozen=True)
class Registries:
    pypi: Served  # a simple index at URL/simple/
    npm: Served
    tripwire: Served  # every installer's proxy for anything but loopback
    work: Path  # the installers' caches and (empty) configuration files


@pytest.fixture(scope="module")
def registries() -> Iterator[Registries]:
    missing = missing_artifacts()
    if missing is not None:
        pytest.fail(missing)
    work = Path(tempfile.mkdtemp(prefix="nf-installers-"))
    try:
        for name in ("npmrc-user", "npmrc-global"):
            (work / name).touch()
        with pypi_index() as pypi, npm_registry() as npm, tripwire() as trip:
            yield Registries(pypi, npm, trip, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def nothing_leaves(registries: Registries) -> Iterator[None]:
    """Fail a test whose installers asked for anything but loopback."""
    yield
    assert registries.tripwire.requests == [], (
        f"an installer went beyond loopback: {registries.tripwire.requests}")


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


def _machine_setting(key: str) -> bool:
    """An installer setting of this machine's or this shell's (its mirrors, constraints,
    proxies): left out, so that the test depends on none of them."""
    return (key.upper().startswith(("PIP_", "UV_", "NPM_CONFIG_"))
            or key.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"))


def netfence_env(cache: Path, regs: Registries, *, installers_may_run: bool = True,
                 **extra: str) -> dict[str, str]:
    """netfence's environment: the caller's, whose installer configuration (passed on to
    the installers) names the loopback registries, their own caches and no configuration
    file of this machine's; everything else through the tripwire. Without
    `installers_may_run`, the registries are dead addresses and the installers offline."""
    env = {k: v for k, v in os.environ.items() if not _machine_setting(k)}
    index = f"{regs.pypi.url}/simple/" if installers_may_run else DEAD
    npm = f"{regs.npm.url}/" if installers_may_run else DEAD
    env.update(
        NETFENCE_CACHE_DIR=str(cache),
        PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=index,
        PIP_CACHE_DIR=str(regs.work / "pip"),
        UV_NO_CONFIG="1", UV_DEFAULT_INDEX=index, UV_CACHE_DIR=str(regs.work / "uv"),
        UV_PYTHON_DOWNLOADS="never",
        npm_config_registry=npm, npm_config_cache=str(regs.work / "npm"),
        npm_config_userconfig=str(regs.work / "npmrc-user"),
        npm_config_globalconfig=str(regs.work / "npmrc-global"),
        npm_config_proxy=regs.tripwire.url, npm_config_https_proxy=regs.tripwire.url,
        npm_config_noproxy=LOCAL)
    for key in ("http_proxy", "https_proxy", "all_proxy"):
        env[key] = env[key.upper()] = regs.tripwire.url
    env["no_proxy"] = env["NO_PROXY"] = LOCAL
    if not installers_may_run:
        env.update(PIP_NO_INDEX="1", UV_OFFLINE="1", npm_config_offline="true")
    return {**env, **extra}


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


def fetched(requests: list[str], package_file: str) -> bool:
    """Whether `requests` (a registry's) include the download of a `package_file`*."""
    return any(r.startswith(f"GET /{package_file}") for r in requests)


# --- uvx:// -------------------------------------------------------------------------------


async def _time_tools(client: Client) -> None:
    tools = {t.name for t in (await client.list_tools()).tools}
    assert {"get_current_time", "convert_time"} <= tools, tools
    now = await client.call_tool("get_current_time", {"timezone": "Europe/Paris"})
    assert not now.is_error, text_of(now)
    assert "Europe/Paris" in text_of(now)


# The workload asking for the index the installer used, by the URL the installer used:
# straight (as its no_proxy says for 127.0.0.1), then through its fence's proxy anyway.
PROBE = """\
import os, sys, urllib.error, urllib.request
proxy = {"http": os.environ["http_proxy"]}
for way, proxies in (("direct", {}), ("proxy", proxy)):
    if proxies:  # urllib would skip the proxy for a no_proxy host even when it is given
        os.environ.pop("no_proxy"), os.environ.pop("NO_PROXY")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler(proxies))
    try:
        opener.open(sys.argv[1], timeout=20)
    except urllib.error.HTTPError as exc:
        print(way, "refused", exc.code, exc.read().decode(errors="replace").strip())
    except OSError as exc:
        print(way, "unreachable", exc)
    else:
        print(way, "reached")
"""


def test_a_uvx_server_installs_outside_then_starts_from_the_cache(
        fakenet: FakeNet, package_cache: Path, registries: Registries,
        tmp_path: Path) -> None:
    cache = package_cache / "pip"
    pypi = registries.pypi
    command = [*fence_args(fakenet), "--", "uvx://mcp-server-time"]
    first = tmp_path / "first.log"
    session(command, netfence_env(cache, registries, NETFENCE_UV="none"), first, _time_tools)
    assert "installing uvx://mcp-server-time with pip" in first.read_text()
    assert fetched(pypi.requests, "files/mcp_server_time-"), pypi.requests

    # The second start: the cached latest, no installer (it would fail), no network.
    asked = len(pypi.requests)
    again = tmp_path / "again.log"
    session(command, netfence_env(cache, registries, installers_may_run=False,
                                  NETFENCE_UV="none"), again, _time_tools)
    assert "installing" not in again.read_text()

    # The workload cannot reach the package index itself: under the same profile, the
    # install's own interpreter asking the index by the URL the installer used gets
    # nowhere, and the index never hears of it. Straight: 127.0.0.1 in the fence is the
    # workload's own loopback (the host's is another namespace's), where nothing of the
    # host listens. Through the fence: refused, since the profile allows no host (by the
    # name it was asked for, before anything is dialed).
    (installed,) = (cache / "uvx" / "mcp-server-time").glob("[0-9]*")
    index = pypi.url.removeprefix("http://")
    done = subprocess.run(
        netfence_argv(*fence_args(fakenet), "--", str(installed / "bin" / "python"), "-c",
                      PROBE, f"http://{index}/simple/mcp/"),
        capture_output=True, text=True, timeout=120, env=netfence_env(cache, registries))
    assert done.returncode == 0, done.stderr
    answers = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert "Connection refused" in answers["direct"], done.stdout
    assert answers["proxy"].startswith(
        f"refused 403 netfence: denied {index}: not_allowlisted"), done.stdout
    assert len(pypi.requests) == asked, pypi.requests[asked:]


# --- npx:// -------------------------------------------------------------------------------


def _everything_tools(refused_url: str | None, npm: Served) -> Any:
    async def exercise(client: Client) -> None:
        tools = {t.name for t in (await client.list_tools()).tools}
        assert {"echo", "get-sum", "gzip-file-as-resource"} <= tools, tools
        echoed = await client.call_tool("echo", {"message": "through the fence"})
        assert not echoed.is_error and "through the fence" in text_of(echoed), text_of(echoed)
        if refused_url is not None:
            # Its one tool that fetches, pointed at the registry the installer used:
            # Node's fetch ignores the proxy variables and dials 127.0.0.1 itself, the
            # workload's own loopback (never redirected to the fence, nothing of the
            # host's there). The registry never hears of it.
            asked = len(npm.requests)
            gzipped = await client.call_tool("gzip-file-as-resource",
                                             {"name": "r.gz", "data": refused_url})
            assert gzipped.is_error and "fetch failed" in text_of(gzipped), text_of(gzipped)
            assert len(npm.requests) == asked, npm.requests[asked:]

    return exercise


def test_an_npx_server_installs_outside_then_starts_from_the_cache(
        fakenet: FakeNet, package_cache: Path, registries: Registries,
        tmp_path: Path) -> None:
    cache = package_cache / "npm"
    npm = registries.npm
    name = "@modelcontextprotocol/server-everything"
    command = [*fence_args(fakenet), "--", f"npx://{name}"]
    registry_url = f"{npm.url}/@modelcontextprotocol%2fserver-everything"
    first = tmp_path / "first.log"
    session(command, netfence_env(cache, registries), first,
            _everything_tools(registry_url, npm))
    log = first.read_text()
    assert f"installing npx://{name} with npm" in log
    assert fetched(npm.requests, "-/tarballs/modelcontextprotocol-server-everything-"), (
        npm.requests)
    installs = list((cache / "npx" / "@modelcontextprotocol" / "server-everything").glob(
        "[0-9]*"))
    assert len(installs) == 1

    asked = len(npm.requests)
    again = tmp_path / "again.log"
    session(command, netfence_env(cache, registries, installers_may_run=False), again,
            _everything_tools(None, npm))
    assert "installing" not in again.read_text()
    assert len(npm.requests) == asked, npm.requests[asked:]


# --- registry://NAME ----------------------------------------------------------------------


def test_a_registry_entry_runs_by_name_with_its_profile(
        fakenet: FakeNet, package_cache: Path, registries: Registries,
        tmp_path: Path) -> None:
    """registry://time: its pinned package, installed with uv when there is one (this
    environment's), run with the entry's reviewed profile (no network at all)."""
    if not UV.is_file():
        pytest.fail(f"{UV} is missing: pip install -e '.[test]'")
    cache = package_cache / "uv"
    entry = registry.load()["time"]
    assert entry.profile.network.mode == "none"
    pinned = parse(entry.server.package or "")
    if not list(WHEELS.glob(f"mcp_server_time-{pinned.version}-*.whl")):
        pytest.fail(f"the registry pins {pinned}: pin it in tests/support/packages/"
                    "requirements.txt too and run scripts/install")
    errlog = tmp_path / "registry.log"
    asked = len(registries.pypi.requests)
    session([*fence_args(fakenet), "--", "registry://time"],
            netfence_env(cache, registries, NETFENCE_UV=str(UV)), errlog, _time_tools)
    assert f"installing {pinned} with uv" in errlog.read_text()
    wheel = f"files/mcp_server_time-{pinned.version}-"
    assert fetched(registries.pypi.requests[asked:], wheel), registries.pypi.requests[asked:]
    assert (cache / "uvx" / "mcp-server-time" / str(pinned.version)).is_dir()
