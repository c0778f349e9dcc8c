"""The orphan watchdog: kills every instance's process group if the supervisor dies.

PR_SET_PDEATHSIG reaches only the process devcluster started. A command run
through ``sh -c`` ("a && b", pipes) leaves grandchildren that would survive a
SIGKILLed supervisor. The watchdog is a tiny process that reads the instances'
process-group ids from a pipe; when the pipe reaches EOF (the supervisor is gone,
however it died) it SIGKILLs every group still listed, then exits.

Protocol on stdin, one line each: ``+PGID`` (track) or ``-PGID`` (forget).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

#: The watchdog's whole program: stdlib only, so it runs as ``python -I -S -c`` (no site,
#: no .pth files): about a fifth of a full interpreter start, at the moment the
#: instances' interpreters are starting too (issue 21).
PROGRAM = """\
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # only EOF ends it
groups = set()
for line in sys.stdin:
    line = line.strip()
    if line[:1] in "+-" and line[1:].isdigit():
        (groups.add if line[0] == "+" else groups.discard)(int(line[1:]))
for pgid in groups:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""


class Watchdog:
    """The supervisor's end: start the watchdog, tell it which groups to kill."""

    def __init__(self) -> None:
        # The last argument only names the process for whoever reads the process list.
        self._proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", PROGRAM, "devcluster.supervisor.watchdog"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        assert self._proc.stdin is not None
        self._fd = self._proc.stdin.fileno()
        self.pid = self._proc.pid

    def _send(self, line: str) -> None:
        with contextlib.suppress(OSError):
            os.write(self._fd, line.encode())

    def track(self, pgid: int) -> None:
        self._send(f"+{pgid}\n")

    def forget(self, pgid: int) -> None:
        self._send(f"-{pgid}\n")

    def close(self) -> None:
        """Normal shutdown: every group is already gone; let the watchdog exit."""
        assert self._proc.stdin is not None
        with contextlib.suppress(OSError):
            self._proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(5)


def main() -> None:
    """Watchdog process (``python -m devcluster.supervisor.watchdog``, by hand): collect groups
    until EOF, then SIGKILL what is left."""
    exec(PROGRAM, {"__name__": "__watchdog__"})


if __name__ == "__main__":
    main()
