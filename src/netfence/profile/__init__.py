"""Permission profiles (ToolHive format): parsing, validation and command-line overrides.

The values (model.py) and the loader load on first use of their names: `netfence stop`
or `ps` never needs them. The schema (schema.py: pydantic, about 60 ms to import) loads
only when something is validated: a run with a built-in profile never imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from netfence.profile.hosts import HostPattern, canonical_host, parse_host_pattern, split_host_port

if TYPE_CHECKING:
    from netfence.profile.loader import BUILTIN_PROFILES, load_profile, with_overrides
    from netfence.profile.model import InboundNetwork, Network, OutboundNetwork, Profile

_LAZY = {
    "BUILTIN_PROFILES": "loader",
    "load_profile": "loader",
    "with_overrides": "loader",
    "InboundNetwork": "model",
    "Network": "model",
    "OutboundNetwork": "model",
    "Profile": "model",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


__all__ = [
    "BUILTIN_PROFILES",
    "HostPattern",
    "InboundNetwork",
    "Network",
    "OutboundNetwork",
    "Profile",
    "canonical_host",
    "load_profile",
    "parse_host_pattern",
    "split_host_port",
    "with_overrides",
]
