"""Proxy backends behind one interface (base.py), one module per backend.

Selection: `--proxy` or the environment variable NETFENCE_NETWORK_PROXY; an unknown value
fails at once, naming the supported ones.
"""

from __future__ import annotations

import os

from netfence.backends.base import (
    DNS_PORT,
    DecisionRecord,
    Endpoint,
    FileSpec,
    Forward,
    NetworkProxy,
    Placement,
    ProcessSpec,
    ProxySetup,
    Reload,
    proxy_env,
    write_file,
    write_setup,
)
from netfence.errors import UsageError

ENV_VAR = "NETFENCE_NETWORK_PROXY"
DEFAULT_BACKEND = "envoy"
SUPPORTED = ("envoy", "squid")


def get_backend(name: str | None = None) -> NetworkProxy:
    """The backend named by `name`, else by NETFENCE_NETWORK_PROXY, else Envoy."""
    chosen = name if name is not None else os.environ.get(ENV_VAR) or DEFAULT_BACKEND
    key = chosen.strip().lower()
    if key == "envoy":
        from netfence.backends.envoy import EnvoyProxy

        return EnvoyProxy()
    if key == "squid":
        from netfence.backends.squid import SquidProxy

        return SquidProxy()
    source = "--proxy" if name is not None else ENV_VAR
    raise UsageError(
        f"unknown network proxy {chosen!r} ({source}); supported: {', '.join(SUPPORTED)}"
    )


__all__ = [
    "DEFAULT_BACKEND",
    "DNS_PORT",
    "ENV_VAR",
    "SUPPORTED",
    "DecisionRecord",
    "Endpoint",
    "FileSpec",
    "Forward",
    "NetworkProxy",
    "Placement",
    "ProcessSpec",
    "ProxySetup",
    "Reload",
    "get_backend",
    "proxy_env",
    "write_file",
    "write_setup",
]
