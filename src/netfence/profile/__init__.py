"""Permission profiles (ToolHive format): parsing, validation and command-line overrides."""

from netfence.profile.hosts import HostPattern, canonical_host, parse_host_pattern, split_host_port
from netfence.profile.loader import BUILTIN_PROFILES, load_profile, with_overrides
from netfence.profile.model import InboundNetwork, Network, OutboundNetwork, Profile

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
