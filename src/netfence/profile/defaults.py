"""What a profile means where it says nothing (no pydantic here: the policy needs it)."""

from __future__ import annotations

# The ports allowed when a profile gives no allow_port.
DEFAULT_PORTS: tuple[int, ...] = (80, 443)
