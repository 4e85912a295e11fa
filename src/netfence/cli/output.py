"""Everything netfence itself prints goes to stderr: stdout belongs to the workload
(MCP's stdio protocol) — except for commands whose output is the answer (ps, check, logs,
render), which print it on stdout.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

# Environment variables that change what rich takes for a terminal.
_TERMINAL_ENV = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "JUPYTER_COLUMNS",
                 "JUPYTER_LINES")


class _Lazy:
    """A rich Console made on first use: importing rich takes about 20 ms of every start,
    and a run that goes well prints nothing."""

    def __init__(self, stderr: bool) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def _made(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=self._stderr, highlight=False, soft_wrap=True)
        return self._console

    @property
    def is_terminal(self) -> bool:
        """As rich decides it; without rich when no variable tells it otherwise."""
        if self._console is None and not any(k in os.environ for k in _TERMINAL_ENV):
            stream = sys.stderr if self._stderr else sys.stdout
            return stream is not None and stream.isatty()
        return self._made().is_terminal

    def __getattr__(self, name: str) -> Any:
        return getattr(self._made(), name)


err: Console = _Lazy(stderr=True)  # type: ignore[assignment]
out: Console = _Lazy(stderr=False)  # type: ignore[assignment]


class Progress:
    """The step a starting fence is at, as one line rewritten in place on a terminal's
    stderr, erased when the fence is up. Nothing when stderr is not a terminal (an MCP
    client's log file): -v logs the steps there. No thread (a spinner's would not survive
    the runtime's fork when it detaches), so the line changes only with the step.
    """

    def __init__(self) -> None:
        self.shown = False

    def __call__(self, step: str | None) -> None:
        if step is None:
            self.clear()
        elif err.is_terminal:
            label = "netfence:" if err.no_color else "\x1b[2mnetfence:\x1b[0m"
            err.file.write(f"\r\x1b[2K{label} {step}...")
            err.file.flush()
            self.shown = True

    def clear(self) -> None:
        if self.shown:
            err.file.write("\r\x1b[2K")
            err.file.flush()
            self.shown = False


progress = Progress()


class _StderrHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        progress.clear()
        err.print(f"[dim]netfence:[/dim] {record.getMessage()}", markup=True)


def setup_logging(verbose: bool) -> None:
    logger = logging.getLogger("netfence")
    logger.handlers[:] = [_StderrHandler()]
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    logger.propagate = False


def error(message: str) -> None:
    progress.clear()
    err.print(f"netfence: error: {message}", markup=False)


def duration(seconds: float) -> str:
    """A short human duration: 42s, 3m05s, 2h07m, 3d04h."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def columns(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Rows as plain text columns, each as wide as its widest cell (never cut: the
    lists are short, and a cut name or version would be useless)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in (headers, *rows)]
    return "\n".join(lines)


def print_json(data: Any) -> None:
    out.print(json.dumps(data, default=str), markup=False, highlight=False)
