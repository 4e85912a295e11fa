"""The command line's contract: exit statuses, one-line errors, check and render."""

from __future__ import annotations

import dataclasses
import json
import stat
from pathlib import Path

import pytest

from tests.support.fence import netfence


def _one_line_error(stderr: bytes) -> str:
    text = stderr.decode()
    assert "Traceback" not in text
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.parametrize("command", [
    ("run", "--proxy", "haproxy", "--", "true"),
    ("render", "--proxy", "haproxy"),
])
def test_unknown_proxy_exits_2_naming_supported_values(command: tuple[str, ...]) -> None:
    done = netfence(*command)
    assert done.returncode == 2
    line = _one_line_error(done.stderr)
    assert "haproxy" in line and "envoy" in line and "squid" in line


def test_unknown_proxy_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETFENCE_NETWORK_PROXY", "nginx")
    done = netfence("render", "--dns-upstream", "127.0.0.1")
    assert done.returncode == 2
    assert "NETFENCE_NETWORK_PROXY" in _one_line_error(done.stderr)


@pytest.mark.parametrize(("content", "suffix", "expected"), [
    ('{"network": {"outbound": {"allow_hosts": []}}}', ".json", "allow_host"),
    ("network:\n  outbound:\n    allow_port: [70000]\n", ".yaml", "70000"),
    ('{"network": {"outbound": {"allow_host": ["a b.com"]}}}', ".json", "allow_host"),
    ("{not json", ".json", "not valid JSON"),
])
def test_bad_profile_is_one_line_exit_2(tmp_path: Path, content: str, suffix: str,
                                        expected: str) -> None:
    path = tmp_path / f"profile{suffix}"
    path.write_text(content)
    done = netfence("check", "--profile", str(path), "example.com")
    assert done.returncode == 2
    line = _one_line_error(done.stderr)
    assert str(path) in line and expected in line


def test_missing_profile_file() -> None:
    done = netfence("check", "--profile", "/nonexistent/p.yaml", "example.com")
    assert done.returncode == 2
    assert "no such profile" in _one_line_error(done.stderr)


def test_check_allowed_and_denied() -> None:
    allowed = netfence("check", "--allow-host", "*.example.com", "api.example.com:443",
                       "--resolved-ip", "93.184.215.14")
    assert allowed.returncode == 0
    assert allowed.stdout.decode().startswith("allowed")
    denied = netfence("check", "--allow-host", "*.example.com", "api.example.com",
                      "--resolved-ip", "10.1.2.3", "--json")
    assert denied.returncode == 1
    data = json.loads(denied.stdout)
    assert data["allowed"] is False and data["reason"] == "private_address"
    assert "--allow-cidr" in data["remedy"]
    port = netfence("check", "--allow-host", "example.com", "example.com:22")
    assert port.returncode == 1 and b"port_not_allowed" in port.stdout
    nothing = netfence("check", "example.com")
    assert nothing.returncode == 1 and b"not_allowlisted" in nothing.stdout


@pytest.mark.parametrize("proxy", ["envoy", "squid"])
def test_render_writes_private_files(tmp_path: Path, proxy: str) -> None:
    out = tmp_path / "cfg"
    done = netfence("render", "--proxy", proxy, "--allow-host", "example.com",
                    "--dns-upstream", "127.0.0.1", "--target-port", "8000", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any("dnsmasq" in p.name for p in files)
    assert any(proxy in p.name for p in files)
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
    assert b"example.com" in b"".join(p.read_bytes() for p in files)


def test_render_prints_configs_without_out() -> None:
    done = netfence("render", "--proxy", "envoy", "--dns-upstream", "127.0.0.1")
    assert done.returncode == 0, done.stderr
    assert b"upstream_ip_port" in done.stdout
    assert b"dnsmasq" in done.stdout or b"address=/#/" in done.stdout


def test_a_decision_line_says_transparent_and_ends_with_the_remedy() -> None:
    from netfence.backends import DecisionRecord
    from netfence.cli.main import decision_line

    record = DecisionRecord(time="2026-12-06T01:07:23Z", method="TLS", host="other.test",
                            port=443, allowed=False, reason="not_allowlisted", status=0,
                            duration_ms=1, remedy="pass --allow-host other.test",
                            transparent=True)
    assert decision_line(record) == (
        "2026-12-06T01:07:23Z deny  TLS other.test:443 - not_allowlisted up=0 down=0 1ms "
        "transparent; to allow: pass --allow-host other.test")
    proxied = dataclasses.replace(record, method="CONNECT", status=403, transparent=False)
    assert decision_line(proxied) == (
        "2026-12-06T01:07:23Z deny  CONNECT other.test:443 403 not_allowlisted up=0 down=0 "
        "1ms; to allow: pass --allow-host other.test")


def test_a_policy_change_is_one_line_however_large() -> None:
    from netfence.cli.main import describe_change, policy_line
    from netfence.runtimes.logs import PolicyChange

    assert describe_change([], []) == "no change in what it allows"
    assert describe_change(["host a.test"], ["port 80"]) == "+host a.test, -port 80"
    many = describe_change([f"host h{i}.test" for i in range(100_000)], ["port 80"])
    assert many.startswith("+host h0.test, ") and many.endswith(" and 99991 more")
    line = policy_line(PolicyChange("2026-12-06T10:00:00.000Z", "p.yaml", ("host a.test",)))
    assert line == "2026-12-06T10:00:00.000Z policy now p.yaml (+host a.test)"
