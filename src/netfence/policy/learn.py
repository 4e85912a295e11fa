"""Learn mode: from what a workload used under `netfence run --learn`, a profile that allows
exactly that.

Pure: takes the fence's decisions as plain tuples (the runtime reads them from the
backend's decision log) and returns the profile as YAML text. Under learn mode every name
and port passes but the address stage still denies: such denials are listed in a comment,
never added (no profile entry could lift loopback, link-local or the host anyway; a private
address needs a deliberate --allow-cidr).
"""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from netfence.profile.hosts import canonical_host

if TYPE_CHECKING:
    from netfence.profile.model import Profile


@dataclass(frozen=True)
class Used:
    """One decision: the destination, whether the fence let it through, and why not."""

    host: str
    port: int | None
    allowed: bool
    reason: str = "allowed"


def _host_entry(host: str) -> str | None:
    """The allow_host entry for a logged host; None for one that is not a host."""
    try:
        return str(canonical_host(host))
    except ValueError:
        return None


def learned_profile(base: Profile, decisions: Iterable[Used], *, now: str | None = None) -> str:
    """YAML for a profile allowing exactly the destinations the workload used.

    Hosts and ports come from what the fence let through; everything else of `base` (the
    profile the run used: name, read/write/allow_unix_socket, allow_cidr, inbound) is kept.
    """
    used: Counter[tuple[str, int]] = Counter()
    denied: Counter[tuple[str, int | None, str]] = Counter()
    for d in decisions:
        entry = _host_entry(d.host) if d.host else None
        if d.allowed and entry is not None and d.port is not None:
            used[(entry, d.port)] += 1
        elif not d.allowed:
            denied[(d.host or "-", d.port, d.reason)] += 1
    hosts = sorted({h for h, _ in used})
    ports = sorted({p for _, p in used})
    outbound: dict[str, object] = {"allow_host": hosts}
    if ports:
        outbound["allow_port"] = ports
    if base.network.outbound.allow_cidr:
        outbound["allow_cidr"] = [str(c) for c in base.network.outbound.allow_cidr]
    network: dict[str, object] = {"outbound": outbound}
    if base.network.inbound.allow_host:
        network["inbound"] = {"allow_host": [str(p) for p in base.network.inbound.allow_host]}
    data: dict[str, object] = {"name": base.name if base.name not in ("none", "network")
                               else "learned"}
    if base.read:
        data["read"] = list(base.read)
    if base.write:
        data["write"] = list(base.write)
    if base.allow_unix_socket:
        data["allow_unix_socket"] = list(base.allow_unix_socket)
    data["network"] = network

    stamp = now or datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    lines = [f"# Written by `netfence run --learn` at {stamp}: allows exactly the",
             "# destinations the workload used (ports apply to every host listed).",
             "# Used (host:port, requests):"]
    lines += [f"#   {h}:{p}  {n}" for (h, p), n in sorted(used.items())] or ["#   (none)"]
    if denied:
        lines.append("# Denied even in learn mode, not added (host:port, reason, requests):")
        lines += [f"#   {h}:{'-' if p is None else p}  {r}  {n}"
                  for (h, p, r), n in sorted(denied.items(), key=str)]
    import yaml  # only when learning: every `netfence run` imports this module

    body = yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    return "\n".join(lines) + "\n" + body


def summary(decisions: Iterable[Used]) -> tuple[int, int]:
    """(distinct destinations let through, requests denied) for a one-line report."""
    items = list(decisions)
    through = {(d.host, d.port) for d in items if d.allowed}
    return len(through), sum(1 for d in items if not d.allowed)
