"""The Envoy relay (backends/relay.py) with the real binary, on the host's loopback: a dial
the proxy behind refuses is tried again while it comes back (Squid closes its port while
it takes a new policy; a dead proxy is started again)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from netfence.backends import Endpoint, Forward
from netfence.backends.base import write_setup
from netfence.backends.relay import relay_setup
from netfence.runtimes.namespace import processes
from tests.support.processes import stop

pytestmark = pytest.mark.integration

LOOPBACK = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def test_a_refused_dial_is_tried_again_until_the_target_listens(tmp_path: Path) -> None:
    with socket.socket() as target:
        target.bind((LOOPBACK, 0))  # bound, not listening: refused for now
        listen = Endpoint(LOOPBACK, _free_port())
        setup = relay_setup([Forward(listen, Endpoint(LOOPBACK, target.getsockname()[1]))],
                            tmp_path)
        write_setup(setup, tmp_path)
        (spec,) = setup.processes
        proc = processes.start(spec)
        try:
            processes.wait_ready(spec, proc)
            with socket.create_connection((LOOPBACK, listen.port), timeout=10) as client:
                client.sendall(b"ping")  # the relay dials now: refused, then again
                time.sleep(0.4)
                target.listen(1)
                target.settimeout(10)
                conn, _ = target.accept()
                with conn:
                    conn.settimeout(10)
                    assert conn.recv(4) == b"ping"
                    conn.sendall(b"pong")
                    assert client.recv(4) == b"pong"
        finally:
            stop(proc)
