"""Everything netfence itself prints goes to stderr: stdout belongs to the workload
(MCP's stdio protocol) — except for commands whose output is the answer (ps, check, logs,
render), which print it on stdout.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from rich.console import Console

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


class _StderrHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        err.print(f"[dim]netfence:[/dim] {record.getMessage()}", markup=True)


def setup_logging(verbose: bool) -> None:
    logger = logging.getLogger("netfence")
    logger.handlers[:] = [_StderrHandler()]
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    logger.propagate = False


def error(message: str) -> None:
    err.print(f"netfence: error: {message}", markup=False)


def print_json(data: Any) -> None:
    out.print(json.dumps(data, default=str), markup=False, highlight=False)
