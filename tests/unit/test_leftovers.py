"""The leftover check's match on command lines: a process naming the state root or a path
under it is the state root's; one naming a sibling (another lane's state root) is not."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.fence import names_path

ROOT = Path("/run/netfence")


@pytest.mark.parametrize(("cmdline", "named"), [
    ("envoy -c /run/netfence/nf-1/envoy.json --disable-hot-restart ", True),
    ("bwrap --tmpfs /run/netfence --ro-bind / / ", True),
    ("ls /run/netfence", True),
    ("envoy -c /run/nftest-lane-7/nf-1/envoy.json ", False),
    ("dnsmasq --conf-file=/run/netfence-x/nf-1/dnsmasq.conf ", False),
    ("flock /tmp/netfence-integration.lock true ", False),
])
def test_a_command_line_names_the_root_or_a_path_under_it(cmdline: str, named: bool) -> None:
    assert names_path(cmdline, ROOT) is named
