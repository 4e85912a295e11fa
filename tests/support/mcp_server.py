"""A small MCP server for the end-to-end tests, built on the official `mcp` SDK.

Tools: `fetch` (GET a URL with urllib, which honours the fence's HTTP(S)_PROXY), `resolve`
(the IPv4 addresses of a name, through the fence's DNS) and `wait` (answer after N seconds
without sending anything in between: an idle stream that a proxy must not cut).

    python mcp_server.py stdio
    python mcp_server.py sse PORT
    python mcp_server.py streamable-http PORT

The HTTP transports listen on 127.0.0.1 inside the workload's namespace; netfence's
ingress forwards to it. The file imports only the standard library, `mcp` and what `mcp`
depends on: the tests copy it, with the `mcp` distribution and its dependencies, to a place
the unprivileged workload can read.
"""

from __future__ import annotations

import socket
import sys
import urllib.error
import urllib.request

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from sse_starlette import EventSourceResponse

# The SDK's event streams send a keep-alive every 15 s by default: `wait` would then test
# only 15 s of silence. No keep-alives, so a proxy's idle or route timeout shows.
EventSourceResponse.DEFAULT_PING_INTERVAL = 0

FETCH_TIMEOUT = 10.0
MAX_WAIT = 120.0

server: MCPServer = MCPServer("netfence-test", log_level="WARNING")


@server.tool()
def fetch(url: str) -> str:
    """The body of URL; a refusal (e.g. the fence's 403) is an error carrying its body."""
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT) as resp:
            return str(resp.read().decode("utf-8", errors="replace"))
    except urllib.error.HTTPError as exc:
        # The fence's 403 page names the reason (e.g. not_allowlisted): pass it on.
        body = exc.read().decode("utf-8", errors="replace").strip()
        raise ToolError(f"HTTP {exc.code} from {url}: {body}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ToolError(f"fetching {url} failed: {exc}") from None


@server.tool()
def resolve(name: str) -> str:
    """The IPv4 addresses NAME resolves to, space-separated."""
    try:
        infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError as exc:
        raise ToolError(f"cannot resolve {name}: {exc}") from None
    return " ".join(sorted({str(info[4][0]) for info in infos}))


@server.tool()
async def wait(seconds: float) -> str:
    """Answer after SECONDS (at most MAX_WAIT), silent in between."""
    await anyio.sleep(max(0.0, min(seconds, MAX_WAIT)))
    return f"waited {seconds:g} s"


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("stdio", "sse", "streamable-http"):
        print("usage: mcp_server.py stdio | sse PORT | streamable-http PORT", file=sys.stderr)
        return 2
    transport = argv[0]
    if transport == "stdio":
        server.run("stdio")
    elif transport == "sse":
        server.run("sse", host="127.0.0.1", port=int(argv[1]))
    else:
        server.run("streamable-http", host="127.0.0.1", port=int(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
