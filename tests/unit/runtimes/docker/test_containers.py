"""The fence's and the workload's containers: commands, and the attach stream."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from netfence.backends import ProcessSpec
from netfence.errors import UsageError
from netfence.runtimes.docker import containers


@pytest.mark.parametrize(("command", "expected"), [
    (("img",), ("img", None)),
    (("img", "--"), ("img", None)),
    (("img", "--", "a", "--"), ("img", ["a", "--"])),
    (("img", "sh", "-c", "x"), ("img", ["sh", "-c", "x"])),
])
def test_workload_command(command: tuple[str, ...],
                          expected: tuple[str, list[str] | None]) -> None:
    assert containers.workload_command(command) == expected


def test_workload_command_needs_an_image() -> None:
    with pytest.raises(UsageError):
        containers.workload_command(())


def test_fence_command_sends_output_to_the_spec_files(tmp_path: Path) -> None:
    spec = ProcessSpec("p", ("sh", "-c", "echo out; echo err >&2"), (), tmp_path / "o.log",
                       tmp_path / "e.log")
    argv = containers.fence_command(spec)
    subprocess.run(["/bin/sh", *argv], check=True, timeout=10)
    assert (tmp_path / "o.log").read_text() == "out\n"
    assert (tmp_path / "e.log").read_text() == "err\n"


def _frame(kind: int, data: bytes) -> bytes:
    return bytes([kind, 0, 0, 0]) + len(data).to_bytes(4, "big") + data


def test_attach_stream_frames_split_across_chunks() -> None:
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    payload = bytes(range(256)) * 3
    stream = _frame(1, payload) + _frame(2, b"warning\n") + _frame(1, b"") + _frame(1, b"end")
    engine_side, ours = socket.socketpair()
    pump = threading.Thread(target=containers.pump_frames, args=(ours, out_w, err_w))
    pump.start()
    for i in range(0, len(stream), 7):  # chunk boundaries inside headers and payloads
        engine_side.sendall(stream[i:i + 7])
        time.sleep(0.001)
    engine_side.close()
    pump.join(10)
    ours.close()
    os.close(out_w)
    os.close(err_w)
    with os.fdopen(out_r, "rb") as out, os.fdopen(err_r, "rb") as err:
        assert out.read() == payload + b"end"
        assert err.read() == b"warning\n"
