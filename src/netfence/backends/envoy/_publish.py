"""The files the gateway's Envoy watches, for a set of workloads: each workload's resources
as compiled, joined (nothing is compiled again), every file's version the digest of its
content as _xds writes it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from netfence.backends.base import FileSpec
from netfence.backends.envoy import _gateway_paths as paths
from netfence.backends.envoy._ecds import HTTP_LISTENERS, ROLES
from netfence.backends.envoy._workload import WorkloadResources
from netfence.backends.envoy._xds import RUNTIME_TYPE, discovery_response, versioned

RUNTIME_RESOURCE = "netfence_limits"
# The subscriptions for the files other than route files: clusters, listeners, limits.
_FIXED_WATCHES = 3


@dataclass(frozen=True)
class Publication:
    """The files Envoy watches, for a set of workloads: write (FileSpec, base.write_file)
    those whose content changed, in the order of the module doc. `routes`: every file a
    listener names, written before it: each workload's route files, then its filter files
    (_ecds)."""

    routes: tuple[FileSpec, ...]
    clusters: FileSpec
    listeners: FileSpec
    runtime: FileSpec

    @property
    def files(self) -> tuple[FileSpec, ...]:
        return (*self.routes, self.clusters, self.listeners, self.runtime)


def publication(directory: Path, workloads: Sequence[WorkloadResources]) -> Publication:
    """Every workload's resources in the gateway's files (in the order of their names, so
    that the same workloads give the same files). ValueError for two workloads of one
    name, or two resources of one name."""
    ordered = sorted(workloads, key=lambda w: w.name)
    _check_disjoint(ordered)
    limits: dict[str, int] = {}
    for workload in ordered:
        limits.update(sorted(workload.limits.items()))
    runtime = {"name": RUNTIME_RESOURCE, "layer": limits}
    return Publication(
        routes=tuple(spec for w in ordered for spec in _named_files(directory, w)),
        clusters=FileSpec(paths.clusters_path(directory),
                          _joined(w._clusters_json for w in ordered)),
        listeners=FileSpec(paths.listeners_path(directory),
                           _joined(w._listeners_json for w in ordered)),
        runtime=FileSpec(paths.runtime_path(directory),
                         discovery_response([runtime], RUNTIME_TYPE)),
    )


def _named_files(directory: Path, workload: WorkloadResources) -> list[FileSpec]:
    """A workload's files that its listeners name: route files, then filter files."""
    return [*(FileSpec(paths.route_path(directory, workload.name, name), content)
              for name, content in workload._route_files.items()),
            *(FileSpec(paths.filter_path(directory, workload.name, role), content)
              for role, content in workload._filter_files.items())]


def _joined(fragments: Iterable[str]) -> str:
    """A discovery response of the resources of each fragment (a JSON list's items), as
    _xds.discovery_response gives for the resources in one list."""
    return versioned("[" + ",".join(f for f in fragments if f) + "]")


def _check_disjoint(workloads: Sequence[WorkloadResources]) -> None:
    owners: dict[tuple[str, str], int] = {}
    for index, workload in enumerate(workloads):
        named = [("workload", workload.name)]
        named += [("listener", r["name"]) for r in workload.listeners]
        named += [("cluster", r["name"]) for r in workload.clusters]
        named += [("route configuration", n) for n in workload.routes]
        named += [("filter", r["name"]) for r in workload.filters.values()]
        named += [("runtime key", k) for k in workload.limits]
        for kind, name in named:
            owner = owners.setdefault((kind, name), index)
            if owner != index:
                raise ValueError(f"two of the gateway's workloads ({workloads[owner].name!r}, "
                                 f"{workload.name!r}) have a {kind} named {name!r}")


def route_files_in_use(directory: Path, workloads: Iterable[WorkloadResources]) -> set[Path]:
    """The route and filter files of these workloads (Publication.routes): the others under
    routes_dir(directory) and filters_dir(directory) may be deleted once the listeners
    naming them are gone (`applied` on the listener file)."""
    return ({paths.route_path(directory, w.name, name) for w in workloads for name in w.routes}
            | {paths.filter_path(directory, w.name, role) for w in workloads
               for role in w.filters})


def inotify_instances(workloads: Iterable[WorkloadResources]) -> int:
    """The inotify instances the gateway's Envoy holds for these workloads' files: one per
    subscription (each has its own): a route file each, a filter resource each that a
    chain names (_ecds; a filter file no chain names is not watched). They count against
    the user's fs.inotify.max_user_instances (128 by default, shared by every process of
    root), and Envoy aborts when it cannot get one: seen with 1.40 at the 63rd workload
    with two route files each, and so again at each restart. A removed workload's files
    stay watched while its listeners drain (--drain-time-s), and so does the former
    filter resource of an updated one (its name changes with its rules)."""
    return _FIXED_WATCHES + sum(len(w.routes) + w.watched_filters for w in workloads)


# What one more workload may add to inotify_instances: its route files (egress,
# transparent, ingress) and its filter resources (address stages, HTTP managers).
NEW_WORKLOAD_WATCHES = 3 + len(ROLES) + len(HTTP_LISTENERS)
