"""Claiming a workload name: one live claimant per name, stale claims are taken over."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path, PosixPath

import pytest

from netfence.errors import PrivilegeError, UsageError
from netfence.runtimes import state


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(state, "STATE_ROOT", tmp_path / "state")
    return tmp_path / "state"


def test_a_name_being_started_cannot_be_claimed_again(root: Path) -> None:
    path = state.claim("web")
    (path / "envoy.json").write_text("{}")  # what the first run has written so far
    with pytest.raises(UsageError, match="'web' is already running"):
        state.claim("web")
    assert (path / "envoy.json").exists()  # the second claim removed nothing


def test_a_claim_left_by_a_dead_run_is_taken_over(root: Path) -> None:
    path = state.claim("web")
    gone = subprocess.Popen(["true"])
    gone.wait()
    (path / state.CLAIMANT).write_text(f"{gone.pid} 1")  # that run has ended
    (path / "stale").write_text("")
    again = state.claim("web")
    assert again == path and not (path / "stale").exists()


def test_claims_of_other_names_are_independent(root: Path) -> None:
    assert state.claim("a") != state.claim("b")


class _RootsOnly(PosixPath):
    """A state root as a non-root user meets it (0700, root's)."""

    def iterdir(self) -> Iterator[Path]:
        raise PermissionError(13, "Permission denied", str(self))

    def read_text(self, *args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied", str(self))


def test_state_that_is_roots_is_a_privilege_error_not_a_traceback(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(state, "STATE_ROOT", _RootsOnly(tmp_path))
    for call in (state.all_states, lambda: state.load("web")):
        with pytest.raises(PrivilegeError) as info:
            call()
        assert info.value.exit_code == 2 and "sudo" in (info.value.remedy or "")
