"""`python -m netfence` and the `netfence` command."""

from __future__ import annotations

import atexit
import gc
import os
import sys

# Not typing, nor threading (until `leave` needs it): a warm run's process imports this
# module and netfence/handoff.py only (handoff.py says why).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn


def main() -> NoReturn:
    from netfence.handoff import run_warm

    run_warm(sys.argv[1:])  # a warm gateway's starter does the run: no return
    # Importing makes many objects and few cycles: no collection while it runs (about
    # 5 ms of every command); what it made is then left out of later ones (freeze).
    gc.disable()
    try:
        from netfence.cli.main import main as cli_main
    finally:
        gc.freeze()
        gc.enable()
    try:
        cli_main()
    except SystemExit as exc:
        leave(exc.code)
    leave(0)


def leave(code: object) -> NoReturn:
    """Exit with `code` as SystemExit(code) would, without the interpreter's teardown of
    every module and object (15-30 ms at the end of every command, measured after a
    `run`). What a normal exit does that anyone sees is done first: the atexit handlers
    (logging's flush, weakref finalizers, coverage's data), then stdout and stderr
    flushed. Where it cannot be done the same way, the normal exit: a code that is a
    message, a thread still running (a normal exit waits for it), a flush that fails."""
    import threading

    if not (code is None or isinstance(code, int)) or threading.active_count() > 1:
        raise SystemExit(code)
    atexit._run_exitfuncs()  # run once: they are unregistered as they run
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):
        raise SystemExit(code) from None
    os._exit(code or 0)


if __name__ == "__main__":
    main()
