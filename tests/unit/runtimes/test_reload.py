"""Which files an update writes and what each running process is asked to do."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from netfence.backends import FileSpec, NetworkProxy, ProcessSpec, ProxySetup, Reload
from netfence.errors import NetfenceError
from netfence.runtimes import reload

CONF, SERVERS, LOG = Path("/s/dns.conf"), Path("/s/dns.servers"), Path("/s/dns.log")
LDS, PAGE = Path("/s/lds.json"), Path("/s/page")


def _setup(servers: str = "a", conf: str = "c", lds: str = "l", page: str | None = None
           ) -> ProxySetup:
    dns = ProcessSpec("dns", ("dnsmasq",), (), LOG, LOG, reads=(CONF, SERVERS),
                      reload=Reload(signal=signal.SIGHUP, restart_for=(CONF,)))
    proxy = ProcessSpec("proxy", ("envoy",), (), LOG, LOG,
                        reads=(LDS, PAGE), reload=Reload())
    files = [FileSpec(CONF, conf), FileSpec(SERVERS, servers), FileSpec(LDS, lds),
             FileSpec(LOG, "")]
    if page is not None:
        files.append(FileSpec(PAGE, page))
    return ProxySetup(files=tuple(files), processes=(dns, proxy))


RUNNING = list(_setup().processes)
WRITTEN = reload.digests(_setup())


def test_nothing_changed_nothing_done() -> None:
    steps = reload.plan(RUNNING, WRITTEN, _setup())
    assert (steps.files, steps.signals, steps.restarts) == ([], [], [])


def test_a_signalled_file_is_written_and_its_process_signalled() -> None:
    steps = reload.plan(RUNNING, WRITTEN, _setup(servers="b"))
    assert [f.path for f in steps.files] == [SERVERS]
    assert [(p.name, s) for p, s in steps.signals] == [("dns", signal.SIGHUP)]
    assert steps.restarts == []


def test_a_file_it_cannot_reload_restarts_it_once() -> None:
    steps = reload.plan(RUNNING, WRITTEN, _setup(servers="b", conf="d"))
    assert {f.path for f in steps.files} == {CONF, SERVERS}
    assert [p.name for p in steps.restarts] == ["dns"]
    assert steps.signals == []


def test_a_watched_file_is_written_and_nothing_sent() -> None:
    steps = reload.plan(RUNNING, WRITTEN, _setup(lds="m", page="new"))
    assert {f.path for f in steps.files} == {LDS, PAGE}  # a new file counts as changed
    assert (steps.signals, steps.restarts) == ([], [])


def test_logs_written_empty_at_start_are_never_rewritten() -> None:
    assert LOG not in {f.path for f in reload.plan(RUNNING, WRITTEN, _setup(lds="x")).files}


def test_no_reload_means_restart() -> None:
    plain = ProcessSpec("proxy", ("squid",), (), LOG, LOG, reads=(LDS,))
    steps = reload.plan([plain], {LDS: reload.digest("l")},
                        ProxySetup(files=(FileSpec(LDS, "m"),), processes=(plain,)))
    assert [p.name for p in steps.restarts] == ["proxy"]


def test_a_changed_file_no_process_reads_is_refused() -> None:
    # The fence would report the new policy while the old one applied.
    blind = ProcessSpec("proxy", ("envoy",), (), LOG, LOG)
    with pytest.raises(NetfenceError, match="cannot change while it runs"):
        reload.plan([blind], {LDS: reload.digest("l")},
                    ProxySetup(files=(FileSpec(LDS, "m"),), processes=(blind,)))


def test_other_processes_than_the_running_ones_are_refused() -> None:
    with pytest.raises(NetfenceError, match="other fence processes"):
        reload.plan(RUNNING[:1], WRITTEN, _setup(servers="b"))


class _Never(NetworkProxy):
    name = "envoy"

    def setup(self, policy: object, placement: object) -> ProxySetup:  # type: ignore[override]
        raise NotImplementedError

    def validate_command(self, setup: ProxySetup) -> list[tuple[str, ...]]:
        return []

    def parse_decision(self, line: str) -> None:
        return None

    def settled(self, setup: ProxySetup) -> bool:
        return False


def test_a_proxy_that_never_settles_is_one_line_naming_its_log(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reload, "SETTLE_TIMEOUT", 0.05)
    with pytest.raises(NetfenceError) as caught:
        reload.settle(_Never(), _setup(), [LOG], "its configuration")
    assert caught.value.message == "the envoy proxy did not take its configuration within 0 s"
    assert caught.value.remedy == f"see {LOG}"
