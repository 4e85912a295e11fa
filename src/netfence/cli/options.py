"""Option values every command that starts a workload reads the same way."""

from __future__ import annotations

from netfence.errors import UsageError


def parse_env(pairs: tuple[str, ...]) -> dict[str, str]:
    """--env K=V, repeated: the workload's extra variables."""
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--env {pair!r}: expected K=V")
        env[key] = value
    return env
