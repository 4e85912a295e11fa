"""`netfence doctor`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_doctor_names_what_is_missing_and_the_fix() -> None:
    # No system binaries on either search path (the caller's PATH, then the system's
    # sbin and bin): squid, dnsmasq, bwrap are "missing".
    code = ("import sys; import netfence.runtimes.netfilter as n; n.SYSTEM_PATH = '/nonexistent'\n"
            "sys.argv[0] = 'netfence'; from netfence.cli.main import main; main()")
    done = subprocess.run([sys.executable, "-c", code, "doctor"], capture_output=True,
                          timeout=60, env={**os.environ, "PATH": "/nonexistent"})
    assert done.returncode == 1
    err = done.stderr.decode()
    assert "MISSING squid" in err and "fix: apt-get install squid" in err, err
    assert "fix: apt-get install bubblewrap" in err
    assert "MISSING nftables" in err and "fix: apt-get install nftables" in err, err
    assert err.strip().splitlines()[-1].startswith("netfence: some checks failed")
    assert done.stdout == b""


def test_doctor_names_the_container_engine_and_its_version(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from netfence.cli import doctor
    from netfence.runtimes.docker import engine

    class Client:
        closed = False

        def version(self) -> dict[str, object]:
            return {"Version": "20.10.24", "ApiVersion": "1.41",
                    "Components": [{"Name": "Engine", "Version": "20.10.24"}]}

        def close(self) -> None:
            Client.closed = True

    monkeypatch.setattr(engine, "connect_to", lambda: (Client(), "unix:///run/x.sock"))
    check = doctor._engine()
    assert check.ok and check.name == "container engine", check
    assert check.detail == "Docker Engine 20.10.24 (API 1.41) at unix:///run/x.sock"
    assert Client.closed


def test_doctor_without_a_container_engine_is_not_a_failure(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "netfence", "doctor"], capture_output=True,
                          timeout=60, env={**os.environ,
                                           "DOCKER_HOST": f"unix://{tmp_path}/none.sock"})
    err = done.stderr.decode()
    [line] = [line for line in err.splitlines() if "container engine" in line]
    assert line.startswith("none") and "only --runtime docker needs one" in line, err
    assert "fix: install docker.io or podman" in err
    assert ("MISSING" in err) == (done.returncode == 1), err


def test_doctor_says_when_squid_is_relayed_for_want_of_the_bind_shim(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from netfence.cli import doctor
    from netfence.runtimes.namespace import bindshim

    built = doctor._bind_shim()
    assert built.ok and built.detail == str(bindshim.library()), built
    monkeypatch.setattr(bindshim, "library", lambda: None)
    missing = doctor._bind_shim()
    assert not missing.ok and missing.optional, missing
    assert "relay carries Squid's egress" in missing.detail
    assert missing.remedy == "install gcc, then reinstall netfence"
