"""The forwarder's argv and exec_into's checks (its behaviour with a real sandbox:
tests/integration/test_forwarder.py)."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import tomllib
from pathlib import Path
from typing import NoReturn

import pytest

from netfence.errors import NetfenceError
from netfence.runtimes.namespace import forwarder
from netfence.runtimes.namespace.forwarder import SCRIPT, exec_into, forwarder_argv
from netfence.runtimes.namespace.sandbox import LAUNCH_ENV
from netfence.runtimes.signals import STOP_SIGNALS

needs_dash = pytest.mark.skipif(shutil.which("dash") is None, reason="dash is not installed")
SANDBOX = ["/usr/bin/bwrap", "--info-fd", "5", "--", "/bin/true"]


@needs_dash
def test_the_argv_names_every_program_by_path_and_brings_its_own_environment() -> None:
    argv = forwarder_argv(SANDBOX, Path("relative.info"), grace=0.5)
    env, options = argv[0], argv[1:3]
    assert os.path.isabs(env) and options == ["-i", f"--default-signal={forwarder.DEFAULT_SIGNALS}"]
    # The options before any NAME=VALUE: GNU env takes what follows one for more variables
    # (an option there silently becomes a variable named --default-signal).
    assigned = [f"{key}={value}" for key, value in LAUNCH_ENV.items()]
    assert argv[3:3 + len(assigned)] == assigned
    dash, script, info, grace, separator, *rest = argv[3 + len(assigned):]
    assert os.path.isabs(dash) and Path(dash).name == "dash" and script == str(SCRIPT)
    assert info == str(Path("relative.info").absolute()) and grace == "0.500"
    assert separator == "--" and rest == SANDBOX
    assert forwarder_argv(SANDBOX, Path("/i"))[3 + len(assigned) + 3] == "10.000"  # the default


@pytest.mark.parametrize(("sandbox", "grace"), [(["bwrap"], 1.0), (["/x=y"], 1.0), ([], 1.0),
                                                (SANDBOX, 0.0)])
def test_what_env_or_the_script_would_misread_is_refused(sandbox: list[str],
                                                         grace: float) -> None:
    with pytest.raises(ValueError):
        forwarder_argv(sandbox, Path("/i"), grace)


@needs_dash
def test_the_script_is_valid_and_small_enough_to_be_read_whole() -> None:
    # dash reads a script in 8 KiB reads: one that fits is read at once, and a forwarder
    # that runs for days is not changed by an upgrade that rewrites the file.
    assert SCRIPT.stat().st_size < 8192
    subprocess.run(["dash", "-n", str(SCRIPT)], check=True)


def test_the_script_is_package_data() -> None:
    pyproject = Path(__file__).parents[4] / "pyproject.toml"
    data = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]
    assert "runtimes/namespace/forwarder.sh" in data["netfence"]


def test_exec_into_refuses_before_changing_anything(tmp_path: Path) -> None:
    info = tmp_path / "info"
    info.write_text('{"child-pid": 1}')  # an earlier run's
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    with pytest.raises(NetfenceError, match="not empty"):
        exec_into(SANDBOX, info, [])
    info.write_text("")
    with pytest.raises(NetfenceError, match="no descriptor of 3-9"):
        exec_into(SANDBOX, info, range(3, 10))
    with pytest.raises(ValueError, match="not open"):
        exec_into(SANDBOX, info, [999])
    with pytest.raises(ValueError, match="stdin"):
        exec_into(SANDBOX, info, [0])
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == mask


@needs_dash
def test_a_failed_exec_undoes_what_exec_into_changed(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    info = tmp_path / "info"
    info.touch()
    stray = os.open(os.devnull, os.O_RDONLY)
    kept = os.open(os.devnull, os.O_RDONLY)
    os.set_inheritable(stray, True)

    at_exec: list[object] = []

    def failing(*_args: object) -> NoReturn:
        # What the forwarder would have started with: only `kept` inherited (beside
        # stdio), the stop signals blocked.
        at_exec.extend([os.get_inheritable(stray), os.get_inheritable(kept),
                        signal.pthread_sigmask(signal.SIG_BLOCK, [])])
        raise OSError(errno.ENOEXEC, "no exec here")

    monkeypatch.setattr(os, "execve", failing)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    try:
        with pytest.raises(OSError, match="no exec here"):
            exec_into(SANDBOX, info, [kept])
        assert at_exec == [False, True, mask | set(STOP_SIGNALS)]
        assert os.get_inheritable(stray) and not os.get_inheritable(kept)
        assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == mask
    finally:
        os.close(stray)
        os.close(kept)
