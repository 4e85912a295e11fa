"""backends/envoy/__init__.py: EnvoyProxy's ProxySetup (files, process, environment)."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

from netfence.backends import proxy_env
from netfence.backends.base import Endpoint, Reload, write_setup
from netfence.backends.envoy import ADMIN_SOCKET_NAME, BOOTSTRAP_NAME, EGRESS_LOG_NAME, EnvoyProxy
from netfence.policy import Policy
from tests.support.envoy_config import ENVOY, STATE, placement, walk


def test_setup_files_processes_env_and_logs() -> None:
    proxy = EnvoyProxy(ENVOY)
    assert proxy.name == "envoy" and proxy.listens_in_netns is True
    setup = proxy.setup(Policy(), placement(ingress=True))
    xds = STATE / "envoy-xds"
    assert [f.path for f in setup.files] == [
        STATE / BOOTSTRAP_NAME, xds / "routes-egress.json", xds / "routes-ingress.json",
        xds / "listeners.json"]
    assert all(f.mode == 0o600 and f.owner is None for f in setup.files)
    (process,) = setup.processes
    assert process.name == "envoy"
    assert process.argv[:3] == (ENVOY, "-c", str(STATE / BOOTSTRAP_NAME))
    assert "--disable-hot-restart" in process.argv
    assert process.argv[process.argv.index("--drain-time-s") + 1] == "60"
    # It reads every file, takes new listener and route files by itself, and is restarted
    # only for a new bootstrap (which no policy change makes).
    assert process.reads == tuple(f.path for f in setup.files)
    assert process.reload == Reload(signal=None, restart_for=(STATE / BOOTSTRAP_NAME,))
    # Every directory it watches, for a runtime to remove before it stops it for good.
    watched = {Path(n["watched_directory"]["path"]) for f in setup.files
               for n in walk(json.loads(f.content)) if "watched_directory" in n}
    assert watched == set(process.watches) == {xds}
    assert process.ready == (Endpoint("127.0.0.1", 3128), Endpoint("127.0.0.1", 8080))
    assert process.stdout.parent == STATE and process.stderr.parent == STATE
    assert setup.decision_logs == (STATE / EGRESS_LOG_NAME,)
    assert proxy.validate_command(setup) == [
        (sys.executable, "-m", "netfence.backends.envoy._validate", ENVOY,
         str(STATE / BOOTSTRAP_NAME))
    ]


def test_env_sets_both_cases() -> None:
    setup = EnvoyProxy(ENVOY).setup(Policy(), placement())
    assert dict(setup.env) == proxy_env("127.0.0.1:3128")
    for key in ("http_proxy", "https_proxy", "no_proxy"):
        assert setup.env[key] == setup.env[key.upper()]
    assert setup.env["https_proxy"] == "http://127.0.0.1:3128"


def test_write_setup_makes_a_private_dir_and_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    setup = EnvoyProxy(ENVOY).setup(Policy(), placement(state=state))
    write_setup(setup, state)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    written = state / BOOTSTRAP_NAME
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert json.loads(written.read_text())["admin"]["address"]["pipe"]["path"] == str(
        state / ADMIN_SOCKET_NAME
    )


def test_setup_does_not_touch_the_filesystem(tmp_path: Path) -> None:
    state = tmp_path / "never-created"
    EnvoyProxy(ENVOY).setup(Policy(), placement(state=state))
    assert not state.exists()
