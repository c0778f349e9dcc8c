"""The orphan watchdog: kills every process of the cluster if the supervisor dies.

PR_SET_PDEATHSIG reaches only the process devcluster started. A command run
through ``sh -c`` ("a && b", pipes) leaves grandchildren that would survive a
SIGKILLed supervisor, and one that calls ``setsid`` (a daemon, ``setsid cmd &``)
leaves its process group too. The watchdog is a tiny process that reads the
instances' process-group ids from a pipe; when the pipe reaches EOF (the supervisor
is gone, however it died) it SIGKILLs every group still listed, then every process
whose environment carries the supervisor's mark (``DEVCLUSTER_SUPERVISOR``, given to
every instance and inherited by what it starts, see :func:`mark`), then exits.

Protocol on stdin, one line each: ``+PGID`` (track), ``-PGID`` (forget), ``.`` (a
clean exit: the supervisor stopped and swept everything itself; no search).
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
import time

#: The watchdog's whole program: stdlib only, so it runs as ``python -I -S -c`` (no site,
#: no .pth files): about a fifth of a full interpreter start, at the moment the
#: instances' interpreters are starting too (issue 21). It reads /proc/N/environ
#: itself: psutil is not importable without site-packages.
PROGRAM = """\
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # only EOF ends it
mark = sys.argv[2].encode() if len(sys.argv) > 2 else b""
groups, clean = set(), False
for line in sys.stdin:
    line = line.strip()
    if line[:1] in "+-" and line[1:].isdigit():
        (groups.add if line[0] == "+" else groups.discard)(int(line[1:]))
    clean = line == "."
for pgid in groups:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass

def marked():
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open("/proc/" + name + "/environ", "rb") as f:
                if mark in f.read().split(b"\\0"):
                    found.append(int(name))
        except OSError:  # gone, or not ours to read (another user's): not ours to kill
            pass
    return found

for _ in range(10 if mark and not clean and os.path.isdir("/proc") else 0):
    found = marked()  # again: what one of them forked meanwhile is found next round
    if not found:
        break
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
"""


@functools.cache
def mark() -> str:
    """This process's mark as a supervisor, ``<pid>.<ns>``: its pid and the time it first
    asked (in ns), so a later process given the same pid has another mark. The
    instances started before our exec carry the one chosen then (:func:`keep_mark`)."""
    return _kept or f"{os.getpid()}.{time.time_ns()}"


_kept: str | None = None


def keep_mark(handed: str) -> None:
    """Take ``handed`` as this process's mark: the instances started before our exec
    carry it (:mod:`devcluster.supervisor.early`); before the first :func:`mark`."""
    global _kept
    _kept = handed
    mark.cache_clear()


class Watchdog:
    """The supervisor's end: start the watchdog, tell it which groups to kill.

    ``marked``: the environment entry (``DEVCLUSTER_SUPERVISOR=<mark>``) every instance
    was given; "" to kill by groups only.
    """

    def __init__(self, marked: str = "") -> None:
        # The argument after the program only names the process for whoever reads the
        # process list.
        self._proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", PROGRAM, "devcluster.supervisor.watchdog",
             *([marked] if marked else [])],
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
        """Normal shutdown: every process is already gone; let the watchdog exit."""
        assert self._proc.stdin is not None
        self._send(".\n")
        with contextlib.suppress(OSError):
            self._proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(5)


def main() -> None:
    """Watchdog process (``python -m devcluster.supervisor.watchdog [NAME=MARK]``, by
    hand): collect groups until EOF, then SIGKILL what is left."""
    sys.argv[1:1] = ["devcluster.supervisor.watchdog"]  # where the program reads the mark
    exec(PROGRAM, {"__name__": "__watchdog__"})


if __name__ == "__main__":
    main()
