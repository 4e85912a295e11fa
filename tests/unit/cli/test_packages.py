"""`netfence packages install | list | remove`, with the stand-in npm (no network)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from netfence.cli.main import cli
from tests.unit.packages.test_install import fake_npm, not_under_sudo

__all__ = ["fake_npm", "not_under_sudo"]  # fixtures, used by name


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_install_list_remove(fake_npm: Path, tmp_path: Path) -> None:
    code, _, err = invoke("packages", "install", "npx://@s/srv", "npx://plain@2.0.0")
    assert code == 0, err
    assert "added 1 package in 0s" in err  # the installer's output, on stderr
    code, out, err = invoke("packages", "list")
    lines = out.splitlines()
    assert lines[0].split() == ["PACKAGE", "VERSION", "LATEST", "COMMANDS", "SIZE", "INSTALLED"]
    assert lines[1].split()[:4] == ["npx://@s/srv", "1.0.0", "yes", "srv"]
    assert lines[2].split()[:3] == ["npx://plain", "2.0.0", "srv"]  # pinned: not "latest"
    assert str(tmp_path / "cache") in err
    listed = json.loads(invoke("packages", "list", "--json")[1])
    assert {(p["package"], p["version"], p["latest"]) for p in listed} == {
        ("npx://@s/srv", "1.0.0", True), ("npx://plain", "2.0.0", False)}
    assert all(Path(p["directory"]).is_dir() for p in listed)

    code, _, err = invoke("packages", "remove", "npx://@s/srv")
    assert code == 0 and "removed npx://@s/srv@1.0.0" in err
    assert len(json.loads(invoke("packages", "list", "--json")[1])) == 1
    code, _, err = invoke("packages", "remove", "--all")
    assert code == 0 and "emptied" in err
    assert json.loads(invoke("packages", "list", "--json")[1]) == []
    assert len(fake_npm.read_text().splitlines()) == 2
