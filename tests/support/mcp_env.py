"""A Python environment with the `mcp` SDK that the fenced, unprivileged workload can run.

The workload runs as `nobody`. The test virtualenv is often unusable by that user: its
interpreter may be a symlink into root's home (pyenv under /root, mode 0700), and the
checkout itself may live there too. So the tests build a world-readable directory holding
the test MCP server and the installed distributions it needs (`mcp` and its dependencies,
found from their metadata, not guessed), and pick an interpreter of the same minor version
(compiled dependencies are built for it) that `nobody` can execute. Python puts a script's
own directory first on sys.path, so `INTERPRETER DIR/mcp_server.py` imports from there
with no environment variable.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

SERVER_SOURCE = Path(__file__).with_name("mcp_server.py")
WORKLOAD_USER = "nobody"
_NOBODY = 65534


@dataclass(frozen=True)
class McpEnv:
    python: str  # an interpreter the workload user can run
    server: Path  # the server script, beside the copied distributions

    def command(self, transport: str, port: int | None = None) -> list[str]:
        return [self.python, str(self.server), transport, *([str(port)] if port else [])]


def distribution_closure(root: str) -> list[importlib.metadata.Distribution]:
    """`root` and everything it requires (markers evaluated for this interpreter), extras
    included: `pyjwt[crypto]` brings what PyJWT requires for its `crypto` extra."""
    found: dict[str, importlib.metadata.Distribution] = {}
    seen: set[tuple[str, str]] = set()  # (distribution, extra; "" for none) followed
    todo = [(root, "")]
    while todo:
        raw, extra = todo.pop()
        name = canonicalize_name(raw)
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        dist = found.get(name) or importlib.metadata.distribution(name)
        found[name] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": extra}):
                todo.append((req.name, ""))
                todo += [(req.name, canonicalize_name(e)) for e in sorted(req.extras)]
    return list(found.values())


def _copy_distribution(dist: importlib.metadata.Distribution, dest: Path) -> None:
    for rel in dist.files or []:
        parts = Path(str(rel)).parts
        # Entry-point scripts live outside site-packages ("../../bin/x"); bytecode is
        # rebuilt (or not: the directory is read-only to the workload) on import.
        if not parts or parts[0] == ".." or "__pycache__" in parts:
            continue
        source = Path(str(dist.locate_file(rel)))
        if not source.is_file():
            continue
        target = dest.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def _runs_as_nobody(argv: list[str]) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd="/",
                              user=_NOBODY, group=_NOBODY, extra_groups=[],
                              env={"PATH": "/usr/bin:/bin"})
    except (OSError, subprocess.SubprocessError):
        return None


def _interpreter_candidates() -> list[str]:
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    names = [sys.executable, os.path.realpath(sys.executable)]
    for directory in ("/usr/bin", "/usr/local/bin", "/bin"):
        names += [f"{directory}/python{minor}", f"{directory}/python3"]
    return list(dict.fromkeys(names))


def _interpreter() -> str | None:
    want = f"{sys.version_info.major}.{sys.version_info.minor}"
    probe = "import sys; print('%d.%d' % sys.version_info[:2])"
    for candidate in _interpreter_candidates():
        done = _runs_as_nobody([candidate, "-c", probe])
        if done is not None and done.returncode == 0 and done.stdout.strip() == want:
            return candidate
    return None


@contextmanager
def mcp_env() -> Iterator[McpEnv]:
    """Build the environment; raise RuntimeError naming what is missing."""
    python = _interpreter()
    if python is None:
        raise RuntimeError(
            f"no Python {sys.version_info.major}.{sys.version_info.minor} interpreter that "
            f"{WORKLOAD_USER} can execute (tried {', '.join(_interpreter_candidates())}); "
            "install the distribution's python3 package")
    work = Path(tempfile.mkdtemp(prefix="nf-mcp-env-"))
    try:
        for dist in distribution_closure("mcp"):
            _copy_distribution(dist, work)
        server = work / SERVER_SOURCE.name
        shutil.copyfile(SERVER_SOURCE, server)
        # Readable (and directories traversable) by the workload user, writable by none.
        for directory, _, files in os.walk(work):
            os.chmod(directory, 0o755)
            for name in files:
                os.chmod(os.path.join(directory, name), 0o644)
        # -S: without the interpreter's own site-packages (a distribution's python3-*
        # packages), so the directory alone must carry everything, as in a container.
        check = _runs_as_nobody([python, "-S", "-c",
                                 f"import sys; sys.path.insert(0, {str(work)!r}); "
                                 "import mcp.server.mcpserver, uvicorn, sse_starlette"])
        if check is None or check.returncode != 0:
            raise RuntimeError(f"{WORKLOAD_USER} cannot import mcp with {python}: "
                               f"{check.stderr[-500:] if check else 'did not run'}")
        yield McpEnv(python=python, server=server)
    finally:
        shutil.rmtree(work, ignore_errors=True)
