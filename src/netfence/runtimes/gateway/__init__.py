"""The shared gateway (namespace runtime, Envoy, root): one Envoy per host serves every
workload started with `netfence run --gateway`, each with its listeners in its own
network namespace, its own policy, its own dnsmasq and its own decision log.

daemon.py: the resident process (`netfence gateway`): owns that Envoy, publishes each
    workload's resources to it through the files it watches, restarts it if it dies, and
    tears a workload down the moment its process exits (a pidfd).
member.py: one workload's part of it: the namespace and its redirect, dnsmasq, the Envoy
    resources compiled for its policy (and recompiled by `netfence update`).
client.py: `netfence run --gateway`: asks the daemon for a fence (starting the daemon if
    none runs), then becomes the workload's signal forwarder, so that no netfence process
    stays resident per workload.
"""

from __future__ import annotations

from pathlib import Path

from netfence.handoff import GATEWAY_DIR_NAME
from netfence.runtimes import state

# Not a valid workload name: no workload's claim can ever take (or remove) it.
DIR_NAME = GATEWAY_DIR_NAME
SOCKET_NAME = "gateway.sock"
LOCK_NAME = "lock"
LOG_NAME = "gateway.log"
# "PID START": the running daemon (state.kill takes both).
PID_NAME = "gateway.pid"


def gateway_dir() -> Path:
    """The daemon's directory, inside the state root (hidden from every workload)."""
    return state.STATE_ROOT / DIR_NAME
