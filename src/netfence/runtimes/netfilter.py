"""Routes and nftables rules set in a network namespace from the host: how both runtimes
leave a workload no way out but its fence. The programs are the host's; as root, or as the
user who owns the namespace through a user namespace of theirs (`enter`)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence

from netfence.errors import NetfenceError

# A nat chain of the inet family: nft 1.0.6 (Debian 12) refuses the symbolic `dstnat`
# priority for one on the output hook; a number works everywhere.
NAT_PRIORITY = -100
# The host's own programs, sbin included: an ordinary user's PATH often lacks it.
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def program_path() -> str:
    """Where the fence's programs are looked for: the caller's PATH, then the system's
    (dnsmasq and Squid live in sbin, which an ordinary user's PATH lacks)."""
    return os.pathsep.join(p for p in (os.environ.get("PATH"), SYSTEM_PATH) if p)

_REMEDIES = {"nsenter": "apt-get install util-linux", "ip": "apt-get install iproute2",
             "nft": "apt-get install nftables"}


def run_in(netns: str, argv: Sequence[str], stdin: str, where: str,
           pass_fds: Sequence[int] = (), enter: Sequence[str] = ()) -> str:
    """`argv` run in the network namespace at path `netns` (or in the namespaces nsenter's
    arguments `enter` name), fed `stdin`; its output. A failure is one line naming the
    program and `where` (whose namespace it was)."""
    return run_all_in(netns, [(argv, stdin)], where, pass_fds, enter)[0]


def run_all_in(netns: str, commands: Sequence[tuple[Sequence[str], str]], where: str,
               pass_fds: Sequence[int] = (), enter: Sequence[str] = ()) -> list[str]:
    """run_in for commands that do not depend on each other, run at the same time (each
    nsenter and its program costs a few ms); their outputs. All have ended when it
    returns; the first that failed, in the given order, is the error."""
    return begin_all_in(netns, commands, where, pass_fds, enter).result()


class Running:
    """Commands begun by begin_all_in."""

    def __init__(self, commands: Sequence[tuple[Sequence[str], str]], where: str,
                 procs: list[subprocess.Popen[str]]) -> None:
        self.commands = commands
        self.where = where
        self.procs = procs

    def result(self) -> list[str]:
        """Their outputs, once all have ended (run_all_in's)."""
        done: list[tuple[int, str, str]] = []
        try:
            for proc in self.procs:
                out, err = proc.communicate(timeout=10)
                done.append((proc.returncode, out, err))
        finally:
            self.close()
        for (argv, _stdin), (code, _out, err) in zip(self.commands, done, strict=True):
            if code != 0:
                program = argv[0]
                if "No such file" in err and program in _REMEDIES:
                    raise NetfenceError(f"{program} is not installed",
                                        remedy=_REMEDIES[program])
                raise NetfenceError(f"{program} in {self.where} network namespace: "
                                    f"{err.strip() or code}")
        return [out for _code, out, _err in done]

    def close(self) -> None:
        """Kill and wait for whichever still runs (nothing once `result` returned)."""
        _reap(self.procs)


def begin_all_in(netns: str, commands: Sequence[tuple[Sequence[str], str]], where: str,
                 pass_fds: Sequence[int] = (), enter: Sequence[str] = ()) -> Running:
    """run_all_in's commands started, for the caller to do other work while they run."""
    procs: list[subprocess.Popen[str]] = []
    try:
        for argv, stdin in commands:
            # The input whole in a memory file, read at the program's own pace: no write
            # of ours waits for one program while the others could run.
            data = os.memfd_create("netfence-input")
            try:
                os.write(data, stdin.encode())
                os.lseek(data, 0, os.SEEK_SET)
                procs.append(subprocess.Popen(
                    ["nsenter", *(enter or [f"--net={netns}"]), *argv], stdin=data,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                    pass_fds=pass_fds, env={"PATH": SYSTEM_PATH}))
            finally:
                os.close(data)
    except FileNotFoundError:
        _reap(procs)
        raise NetfenceError("nsenter is not installed", remedy=_REMEDIES["nsenter"]) from None
    except BaseException:
        _reap(procs)
        raise
    return Running(commands, where, procs)


def _reap(procs: list[subprocess.Popen[str]]) -> None:
    """Kill and wait for whichever is still running (a timeout, an error)."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
