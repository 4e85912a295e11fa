"""The runtime interface's shared pieces."""

from __future__ import annotations

from netfence.runtimes.base import Runtime


def test_runtime_reports_only_when_hooked() -> None:
    seen: list[str | None] = []

    class Fake(Runtime):
        name = "fake"
        run = list = stop = decisions = None  # type: ignore[assignment]

    runtime = Fake()
    runtime.report("ignored")
    runtime.progress = seen.append
    runtime.report("step")
    runtime.report(None)
    assert seen == ["step", None]
