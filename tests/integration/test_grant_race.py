"""A grant swapped for a symbolic link after netfence checked it (a TOCTOU race).

The grants are checked (resolved, searched for host sockets) before the fence starts; the
workload's view is built a few hundred milliseconds later. Whoever may write the granted
path's parent directory meanwhile (another fenced workload with a `write` grant around it,
another local program of the user) can replace the granted directory with a symbolic link
to any directory of the workload's user: its agents' and tmux's sockets, its ~/.ssh. The
workload must see the directory that was checked, or not start: never what the link
names. Real bubblewrap, a real unprivileged user, a host socket of that user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fence import NETNS_DIR, leftovers, netfence_argv, nothing_new

pytestmark = pytest.mark.integration

USER = "nf-racetest"
NAME = "grant-race"
SECRET = "nf-racetest-private-key"


@pytest.fixture
def user() -> Iterator[pwd.struct_passwd]:
    subprocess.run(["userdel", "--remove", USER], capture_output=True, timeout=30)
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/bin/sh", USER],
                   check=True, capture_output=True, timeout=30)
    try:
        yield pwd.getpwnam(USER)
    finally:
        subprocess.run(["userdel", USER], capture_output=True, timeout=30)


@pytest.fixture
def tree(user: pwd.struct_passwd) -> Iterator[Path]:
    """proj/ (writable by the user: a hostile workload's write grant), proj/docs (the
    grant the next workload gets, searched and found clean) and private/ (the user's own,
    mode 0700: a secret and a live socket, like ~/.ssh or /run/user/UID)."""
    root = Path(tempfile.mkdtemp(prefix="nf-grantrace-"))
    root.chmod(0o755)
    try:
        (root / "proj" / "docs").mkdir(parents=True)
        (root / "proj").chmod(0o777)
        (root / "proj" / "docs").chmod(0o755)
        (root / "proj" / "docs" / "readme").write_text("the granted docs\n")
        (root / "proj" / "docs" / "readme").chmod(0o644)
        private = root / "private"
        private.mkdir(mode=0o700)
        (private / "id_rsa").write_text(SECRET + "\n")
        for path in (private, private / "id_rsa"):
            os.chown(path, user.pw_uid, user.pw_gid)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _swap_when_the_fence_starts(root: Path, uid: int, gid: int, done: list[str]) -> None:
    """As the user (what a workload with a write grant on proj/ can do): once the fence's
    namespace exists (the grants are checked by then), replace proj/docs with a link to
    private/."""
    deadline = time.monotonic() + 30
    while not (NETNS_DIR / f"netfence-{NAME}").exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    docs = root / "proj" / "docs"
    swapped = subprocess.run(
        ["sh", "-c", f"mv {docs} {docs}.real && ln -s {root / 'private'} {docs}"],
        user=uid, group=gid, extra_groups=[], capture_output=True, text=True, timeout=10)
    done.append(f"swap rc={swapped.returncode} {swapped.stderr.strip()}")


PROBE = ("import os, socket\n"
         "d = os.environ['DOCS']\n"
         "print('listing', sorted(os.listdir(d)))\n"
         "try:\n"
         "    print('secret', open(d + '/id_rsa').read().strip())\n"
         "except OSError as e:\n"
         "    print('secret refused', e.errno)\n"
         "s = socket.socket(socket.AF_UNIX)\n"
         "try:\n"
         "    s.connect(d + '/agent.sock'); print('agent CONNECTED')\n"
         "except OSError as e:\n"
         "    print('agent refused', e.errno)\n")


def test_a_grant_swapped_for_a_link_after_the_check_shows_nothing_else(
        user: pwd.struct_passwd, tree: Path) -> None:
    docs = tree / "proj" / "docs"
    agent_path = tree / "private" / "agent.sock"
    with nothing_new(leftovers), socket.socket(socket.AF_UNIX) as agent:
        agent.bind(str(agent_path))
        os.chown(agent_path, user.pw_uid, user.pw_gid)
        agent.listen(8)
        agent.settimeout(0.5)
        swaps: list[str] = []
        racer = threading.Thread(target=_swap_when_the_fence_starts,
                                 args=(tree, user.pw_uid, user.pw_gid, swaps))
        racer.start()
        try:
            done = subprocess.run(
                netfence_argv("run", "--proxy", "envoy", "--name", NAME, "--user", USER,
                              "--dns-upstream", "127.0.0.1", "--read", str(docs),
                              "--env", f"DOCS={docs}", "--", "python3", "-c", PROBE),
                capture_output=True, text=True, timeout=60)
        finally:
            racer.join(timeout=40)
        assert swaps and swaps[0].startswith("swap rc=0"), swaps  # the race was run
        try:
            agent.accept()[0].close()
            reached = True
        except TimeoutError:
            reached = False
    out = done.stdout + done.stderr
    assert SECRET not in out, out
    assert "agent CONNECTED" not in out and not reached, out
    # Either the docs that were checked, or no start at all.
    assert ("listing ['readme']" in done.stdout) or done.returncode == 2, out
