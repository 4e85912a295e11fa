"""Where the gateway's files are, under its directory: the watched files each in a
directory of their own (a file renamed into a watched directory makes Envoy read every
file watched there again), the route files and the filter files (_ecds) in a directory per
workload."""

from __future__ import annotations

from pathlib import Path

from netfence.backends.envoy._bootstrap import ADMIN_SOCKET_NAME

XDS_DIR_NAME = "xds"


def xds_dir(directory: Path) -> Path:
    return directory / XDS_DIR_NAME


def clusters_path(directory: Path) -> Path:
    return xds_dir(directory) / "clusters" / "clusters.json"


def listeners_path(directory: Path) -> Path:
    return xds_dir(directory) / "listeners" / "listeners.json"


def runtime_path(directory: Path) -> Path:
    return xds_dir(directory) / "runtime" / "runtime.json"


def routes_dir(directory: Path) -> Path:
    """The route files, in one directory per workload (their names start with its name)."""
    return xds_dir(directory) / "routes"


def route_path(directory: Path, workload: str, route_config: str) -> Path:
    return routes_dir(directory) / workload / f"{route_config}.json"


def filters_dir(directory: Path) -> Path:
    """The network filters given once per workload (_ecds), in one directory per workload."""
    return xds_dir(directory) / "filters"


def filter_path(directory: Path, workload: str, role: str) -> Path:
    """A workload's file for one filter role: its name stays, the resource's changes."""
    return filters_dir(directory) / workload / f"{workload}.{role}.json"


def admin_socket(directory: Path) -> Path:
    return directory / ADMIN_SOCKET_NAME
