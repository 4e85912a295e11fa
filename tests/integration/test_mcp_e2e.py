"""MCP servers behind the fence, end to end, as a user runs them: the official `mcp` SDK's
client talks to an SDK server (tests/support/mcp_server.py) that `netfence run` fences —
over stdio, and through the ingress over streamable HTTP and SSE — for both backends, in
the namespace runtime; and over stdio and streamable HTTP in the container runtime, on the
test session's Podman and Docker engines (TestContainerRuntime). The stdio session and the
published server run again rootless, as the session's unprivileged test user, with no sudo
(`both_privileges`; the ingress rootless: test_namespace_run.py)."""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest
from mcp import Client, ClientSession, StdioServerParameters
from mcp.client.sse import sse_client
from mcp.client.stdio import stdio_client
from mcp.types import CallToolResult, TextContent

from netfence.errors import NetfenceError
from tests.support.dockerd import ENGINES
from tests.support.fakenet import FakeNet
from tests.support.fence import (
    acting,
    both_privileges,
    leftovers,
    netfence,
    netfence_argv,
    nothing_new,
)
from tests.support.mcp_env import McpEnv, mcp_env
from tests.support.podman import TEST_PREFIX, WORKLOAD_CA, Engine, workload_image_with

pytestmark = [pytest.mark.integration,
              pytest.mark.usefixtures("nothing_left_behind", "privilege")]

ALLOWED_URL = "http://allowed.test/page"
DENIED_URL = "http://other.test/page"
TARGET_PORT = 8000  # the server's port inside its own namespace: no clash possible
# Past 20 s: longer than Envoy's default 15 s route timeout, which cuts a quiet stream.
LONG_WAIT = 21.0
START_TIMEOUT = 30.0
CALLS_TIMEOUT = 60.0
# The decision log's contract: every record has these, whichever backend logged it.
LOG_FIELDS = ("time", "workload", "method", "host", "port", "decision", "reason",
              "bytes_up", "bytes_down", "duration_ms")


class ToolCaller(Protocol):
    async def call_tool(self, name: str, arguments: dict[str, Any] | None = None,
                        ) -> CallToolResult: ...


@pytest.fixture(scope="module")
def server_env(fakenet: FakeNet) -> Iterator[McpEnv]:
    # `fakenet` first: without root it skips, before anything is built.
    try:
        with mcp_env() as env:
            yield env
    except RuntimeError as exc:
        pytest.fail(f"cannot give the fenced workload an MCP server: {exc}")


@dataclass(frozen=True)
class Launch:
    """Where a test's fenced MCP server runs: `netfence run`'s runtime options, the
    command after `--` for a transport (and port), the test CA's path as the server sees
    it, netfence's own environment (None: the SDK's default for stdio, else ours), and
    the file grants the server needs."""

    runtime_args: tuple[str, ...]
    server: Callable[[str, int | None], list[str]]
    ca_path: str
    name_prefix: str
    env: dict[str, str] | None = field(default=None, repr=False)
    grants: tuple[str, ...] = ()
    engine: Engine | None = field(default=None, repr=False)  # the docker runtime's

    def name(self, kind: str, proxy: str) -> str:
        return f"{self.name_prefix}{kind}-{proxy}"


def in_namespace(env: McpEnv, fakenet: FakeNet) -> Launch:
    """The namespace runtime: the host's interpreter, the directory at its host path,
    shown read-only to the server with the test CA (nothing else of the host's files)."""
    return Launch(runtime_args=(), server=env.command, ca_path=str(fakenet.ca_pem_path),
                  name_prefix="nf-mcp-",
                  grants=("--read", str(env.server.parent), "--read", str(fakenet.ca_pem_path)))


# mcp_server.py listens on 127.0.0.1, which in a container only the container itself
# reaches; the docker runtime's ingress is another container, which connects to the
# workload's address on the internal network. So the HTTP transports start the same
# server object listening on every address of the workload's container.
LISTEN_ON_ALL = ("import sys; sys.path.insert(0, sys.argv[1].rpartition('/')[0]); "
                 "from mcp_server import server; "
                 "server.run(sys.argv[2], host='0.0.0.0', port=int(sys.argv[3]))")


def in_container(engine: Engine, image: str, env: McpEnv) -> Launch:
    """The docker runtime on the test engine: IMAGE holds env's directory at its host
    path, run by the image's own python3."""

    def server(transport: str, port: int | None) -> list[str]:
        if transport == "stdio":
            return [image, "python3", str(env.server), "stdio"]
        return [image, "python3", "-c", LISTEN_ON_ALL, str(env.server), transport, str(port)]

    return Launch(runtime_args=("--runtime", "docker"), server=server, ca_path=WORKLOAD_CA,
                  # Random, so a name a crashed session left cannot clash; TEST_PREFIX, so
                  # the engine fixture removes what a failed test leaves.
                  name_prefix=f"{TEST_PREFIX}{secrets.token_hex(3)}-", env=engine.env(),
                  engine=engine)


def workload_user() -> list[str]:
    """Root's fence runs the server as nobody; a rootless one as its caller."""
    return [] if acting() else ["--user", "nobody"]


def fence_args(proxy: str, fakenet: FakeNet, launch: Launch) -> list[str]:
    return ["run", *launch.runtime_args, *launch.grants, "--proxy", proxy,
            "--dns-upstream", fakenet.dns,
            "--allow-cidr", fakenet.cidr, "--allow-host", "allowed.test",
            "--allow-host", "*.allowed.test", *workload_user(),
            # The simulated internet's HTTPS uses a test CA; Python's ssl honours this.
            "--env", f"SSL_CERT_FILE={launch.ca_path}"]


def text_of(result: CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, TextContent))


async def exercise(client: ToolCaller) -> None:
    """What every transport must show: the allowed page, the named denial, fenced DNS."""
    page = await client.call_tool("fetch", {"url": ALLOWED_URL})
    assert not page.is_error, text_of(page)
    assert "fakenet ok host=allowed.test path=/page" in text_of(page)

    denied = await client.call_tool("fetch", {"url": DENIED_URL})
    assert denied.is_error, text_of(denied)
    assert "403" in text_of(denied) and "not_allowlisted" in text_of(denied), text_of(denied)

    resolved = await client.call_tool("resolve", {"name": "allowed.test"})
    assert not resolved.is_error and text_of(resolved) == "10.203.0.2", text_of(resolved)
    unresolved = await client.call_tool("resolve", {"name": "denied.test"})
    assert unresolved.is_error, text_of(unresolved)


def run_async(coro: Any, timeout: float = CALLS_TIMEOUT) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def stdio_session(proxy: str, fakenet: FakeNet, launch: Launch, workdir: Path,
                  *name: str) -> None:
    """An SDK client whose server command is `netfence run ... -- SERVER stdio`."""
    argv = netfence_argv(*fence_args(proxy, fakenet, launch), *name, "--",
                         *launch.server("stdio", None))
    params = StdioServerParameters(command=argv[0], args=argv[1:], env=launch.env)

    async def session(errlog: Any) -> None:
        async with Client(stdio_client(params, errlog=errlog)) as client:
            tools = {tool.name for tool in (await client.list_tools()).tools}
            assert {"fetch", "resolve", "wait"} <= tools
            await exercise(client)
            # HTTPS: a CONNECT tunnel through the fence, the TLS end to end.
            tls = await client.call_tool("fetch", {"url": "https://www.allowed.test/tls"})
            assert not tls.is_error, text_of(tls)
            assert "host=www.allowed.test path=/tls" in text_of(tls)

    errlog_path = workdir / "stderr.log"
    with errlog_path.open("w+") as errlog:
        run_async(session(errlog))
    stderr = errlog_path.read_text()
    assert "Traceback" not in stderr, stderr


@both_privileges
def test_stdio(proxy: str, fakenet: FakeNet, server_env: McpEnv, tmp_path: Path) -> None:
    stdio_session(proxy, fakenet, in_namespace(server_env, fakenet), tmp_path)


@dataclass(frozen=True)
class Served:
    name: str
    url: str
    launch: Launch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status(url: str) -> int | None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


@contextmanager
def serving(proxy: str, fakenet: FakeNet, launch: Launch, transport: str,
            workdir: Path) -> Iterator[Served]:
    """`netfence run --transport ...` in the foreground, until the server inside answers."""
    name = launch.name("sse" if transport == "sse" else "http", proxy)
    port = _free_port()
    argv = netfence_argv(*fence_args(proxy, fakenet, launch), "--name", name,
                         "--transport", transport, "--target-port", str(TARGET_PORT),
                         "--port", str(port), "--", *launch.server(transport, TARGET_PORT))
    stderr_path = workdir / f"{name}.stderr"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                                env=launch.env)
    try:
        # The ingress's URL is printed on stderr once the fence is up.
        path = "/sse" if transport == "sse" else "/mcp"
        want = f"http://127.0.0.1:{port}{path}"
        deadline = time.monotonic() + START_TIMEOUT
        while want not in stderr_path.read_text(errors="replace"):
            assert proc.poll() is None, stderr_path.read_text(errors="replace")
            assert time.monotonic() < deadline, stderr_path.read_text(errors="replace")
            time.sleep(0.1)
        # Until the server inside listens, the ingress answers 502/503; then Starlette
        # answers 404 for an unknown path.
        while _status(f"http://127.0.0.1:{port}/nf-ready") != 404:
            assert proc.poll() is None, stderr_path.read_text(errors="replace")
            assert time.monotonic() < deadline, stderr_path.read_text(errors="replace")
            time.sleep(0.2)
        yield Served(name=name, url=want, launch=launch)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()  # our own child, by PID
            proc.wait(timeout=10)
    text = stderr_path.read_text(errors="replace")
    assert "Traceback" not in text, text


def decision_log(served: Served, *flags: str, want: int = 0) -> list[dict[str, Any]]:
    """`netfence logs NAME --json`, waiting (bounded) for `want` records."""
    argv = netfence_argv("logs", served.name, *served.launch.runtime_args, "--json", *flags)
    deadline = time.monotonic() + 20
    while True:
        done = subprocess.run(argv, capture_output=True, timeout=30, env=served.launch.env)
        assert done.returncode == 0, done.stderr
        records = [json.loads(line) for line in done.stdout.decode().splitlines() if line]
        if len(records) >= want or time.monotonic() > deadline:
            return records
        time.sleep(0.3)


def streamable_http_session(served: Served) -> None:
    """exercise() through the ingress; then the decision log the calls left."""

    async def session() -> None:
        async with Client(served.url) as client:
            await exercise(client)

    run_async(session())

    # One JSON line per request, the same fields for both backends and runtimes.
    records = decision_log(served, want=2)
    by_host = {r["host"]: r for r in records}
    assert {"allowed.test", "other.test"} <= by_host.keys(), records
    for record in records:
        missing = [f for f in LOG_FIELDS if f not in record]
        assert missing == [], (missing, record)
        assert record["workload"] == served.name
        assert record["decision"] in ("allow", "deny")
        assert isinstance(record["duration_ms"], int) and record["duration_ms"] >= 0
    allowed, denied = by_host["allowed.test"], by_host["other.test"]
    assert (allowed["decision"], allowed["reason"]) == ("allow", "allowed"), allowed
    assert (allowed["method"], allowed["port"]) == ("GET", 80), allowed
    assert allowed["bytes_down"] > 0 and allowed["bytes_up"] > 0, allowed
    assert (denied["decision"], denied["reason"]) == ("deny", "not_allowlisted"), denied
    only_denied = decision_log(served, "--denied")
    assert only_denied and {r["decision"] for r in only_denied} == {"deny"}, only_denied


def test_streamable_http(proxy: str, fakenet: FakeNet, server_env: McpEnv,
                         tmp_path: Path) -> None:
    with serving(proxy, fakenet, in_namespace(server_env, fakenet), "streamable-http",
                 tmp_path) as served:
        streamable_http_session(served)


def test_sse(proxy: str, fakenet: FakeNet, server_env: McpEnv, tmp_path: Path) -> None:
    with serving(proxy, fakenet, in_namespace(server_env, fakenet), "sse", tmp_path) as served:

        async def session() -> None:
            async with sse_client(served.url) as (read, write), \
                    ClientSession(read, write) as client:
                await client.initialize()
                await exercise(client)

        run_async(session())


def test_long_lived_streams_stay_open(fakenet: FakeNet, server_env: McpEnv,
                                      tmp_path: Path) -> None:
    """A tool call that answers after LONG_WAIT quiet seconds, over both HTTP transports
    and through both backends at once (the waits overlap); the same sessions go on
    working afterwards."""

    async def wait_then_fetch(client: Client | ClientSession) -> float:
        started = time.monotonic()
        result = await client.call_tool("wait", {"seconds": LONG_WAIT})
        elapsed = time.monotonic() - started
        assert not result.is_error and "waited" in text_of(result), text_of(result)
        after = await client.call_tool("fetch", {"url": ALLOWED_URL})
        assert not after.is_error, text_of(after)
        return elapsed

    async def over_http(url: str) -> float:
        async with Client(url) as client:
            return await wait_then_fetch(client)

    async def over_sse(url: str) -> float:
        async with sse_client(url, sse_read_timeout=LONG_WAIT * 3) as (read, write), \
                ClientSession(read, write) as client:
            await client.initialize()
            return await wait_then_fetch(client)

    launch = in_namespace(server_env, fakenet)
    with ExitStack() as stack:
        served = [(stack.enter_context(serving(proxy, fakenet, launch, "streamable-http",
                                               tmp_path)),
                   stack.enter_context(serving(proxy, fakenet, launch, "sse", tmp_path)))
                  for proxy in ("envoy", "squid")]

        async def all_at_once() -> list[float]:
            return list(await asyncio.gather(
                *(call for http, sse in served for call in (over_http(http.url),
                                                            over_sse(sse.url)))))

        elapsed = run_async(all_at_once(), timeout=LONG_WAIT + CALLS_TIMEOUT)
    assert len(elapsed) == 4 and all(e >= LONG_WAIT - 0.5 for e in elapsed), elapsed


def test_stdout_carries_only_the_protocol(proxy: str, fakenet: FakeNet,
                                          server_env: McpEnv) -> None:
    """Raw stdio: every line netfence passes on stdout is the server's JSON-RPC."""
    request = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
               "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                          "clientInfo": {"name": "raw", "version": "0"}}}
    done = netfence(*fence_args(proxy, fakenet, in_namespace(server_env, fakenet)), "--",
                    *server_env.command("stdio"),
                    input=(json.dumps(request) + "\n").encode(), timeout=60)
    lines = done.stdout.decode().splitlines()
    assert lines, done.stderr
    for line in lines:
        message = json.loads(line)
        assert message.get("jsonrpc") == "2.0", line
    assert json.loads(lines[0])["id"] == 1


@pytest.fixture(scope="module", params=ENGINES)
def in_containers(request: pytest.FixtureRequest, fakenet: FakeNet,
                  server_env: McpEnv) -> Iterator[Launch]:
    """The docker runtime on each engine, with the test workload image plus the MCP
    environment's directory; the image is removed at the end of the module, also after a
    failure."""
    engine = request.getfixturevalue(request.param)
    try:
        with workload_image_with(engine, fakenet.ca_pem_path, "mcp-workload",
                                 server_env.server.parent) as image:
            yield in_container(engine, image, server_env)
    except (RuntimeError, NetfenceError) as exc:
        pytest.fail(f"the MCP workload image: {exc}")


def engine_with(*pairs: str) -> pytest.MarkDecorator:
    """Just these engine-backend pairs, as "podman-envoy"."""
    cases = [tuple(pair.split("-")) for pair in pairs]
    return pytest.mark.parametrize(("in_containers", "proxy"), cases, indirect=True)


@pytest.mark.containers  # its engine comes through in_containers
class TestContainerRuntime:
    """`netfence run --runtime docker`: the same SDK sessions, the server in a container
    of the test engine, the fence in containers beside it. Each session runs on each
    engine and with each backend, once: what the container runtime adds to the namespace
    runtime's sessions is the engine's attach stream (stdio), its published port and the
    backend's ingress container (streamable HTTP) and the decision log read from the
    state directory the fence containers write (by backend). With
    test_docker_runtime.py::test_ingress_reaches_an_http_workload (podman-envoy,
    dockerd-squid) every engine-backend pair's ingress is reached by a client."""

    @pytest.fixture
    def nothing_left_behind(self, in_containers: Launch) -> Iterator[None]:
        # The module's check, and the engine's containers and networks too.
        engine = in_containers.engine
        assert engine is not None
        with nothing_new(lambda: [*leftovers(), *engine.managed()]):
            yield

    @engine_with("podman-envoy", "dockerd-squid")
    def test_stdio(self, proxy: str, fakenet: FakeNet, in_containers: Launch,
                   tmp_path: Path) -> None:
        stdio_session(proxy, fakenet, in_containers, tmp_path,
                      "--name", in_containers.name("stdio", proxy))

    @engine_with("podman-squid", "dockerd-envoy")
    def test_streamable_http(self, proxy: str, fakenet: FakeNet, in_containers: Launch,
                             tmp_path: Path) -> None:
        with serving(proxy, fakenet, in_containers, "streamable-http", tmp_path) as served:
            streamable_http_session(served)


# --- a published Node MCP server (Node's fetch ignores the proxy variables) ---------------

NODE_PACKAGES = Path(__file__).resolve().parents[1] / "support" / "node" / "node_modules"
NODE_SERVER = Path("@tokenizin", "mcp-npx-fetch", "dist", "index.js")


@pytest.fixture(scope="module")
def node_server(fakenet: FakeNet) -> Iterator[Path]:
    """The published server's installation, copied where the workload's user can read it
    (the checkout may sit in a home it cannot enter)."""
    if not (NODE_PACKAGES / NODE_SERVER).is_file():
        pytest.fail(f"{NODE_PACKAGES} is not installed: run scripts/install")
    with tempfile_dir() as work:
        copy = work / "node_modules"
        shutil.copytree(NODE_PACKAGES, copy, symlinks=True)
        yield copy / NODE_SERVER


@contextmanager
def tempfile_dir() -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix="nf-node-mcp-"))
    try:
        work.chmod(0o755)
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


@both_privileges
def test_a_published_node_server_fetches_through_the_fence(
        proxy: str, fakenet: FakeNet, node_server: Path, tmp_path: Path) -> None:
    root = node_server.parents[len(NODE_SERVER.parts) - 1]
    argv = netfence_argv(
        "run", "--proxy", proxy, "--dns-upstream", fakenet.dns,
        "--allow-cidr", fakenet.cidr, "--allow-host", "allowed.test", *workload_user(),
        "--read", str(root), "--read", str(fakenet.ca_pem_path),
        "--env", f"NODE_EXTRA_CA_CERTS={fakenet.ca_pem_path}", "--",
        "node", str(node_server))
    params = StdioServerParameters(command=argv[0], args=argv[1:])

    async def session(errlog: Any) -> None:
        async with Client(stdio_client(params, errlog=errlog)) as client:
            tools = {tool.name for tool in (await client.list_tools()).tools}
            assert "fetch_html" in tools, tools
            page = await client.call_tool("fetch_html", {"url": ALLOWED_URL})
            if proxy == "squid":
                # Squid has no transparent path, and Node's fetch ignores the proxy.
                assert page.is_error, text_of(page)
                return
            assert not page.is_error, text_of(page)
            assert "fakenet ok host=allowed.test path=/page" in text_of(page)
            tls = await client.call_tool("fetch_html", {"url": "https://allowed.test/tls"})
            assert "fakenet ok host=allowed.test path=/tls" in text_of(tls), text_of(tls)
            denied = await client.call_tool("fetch_html", {"url": DENIED_URL})
            assert denied.is_error, text_of(denied)
            port = await client.call_tool("fetch_html", {"url": "http://allowed.test:8080/"})
            assert port.is_error and "403" in text_of(port), text_of(port)

    errlog_path = tmp_path / "stderr.log"
    with errlog_path.open("w+") as errlog:
        run_async(session(errlog))
    stderr = errlog_path.read_text()
    assert "Error" not in stderr, stderr
