"""``up -d`` from the command line: the daemon is the CLI process itself, forked.

A fresh ``python -m devcluster.daemon`` costs an interpreter start and imports the CLI
has already done (the project file, the Procfile, the registry, psutil: about 90 ms of
CPU), at the very moment the instances start and want the same cores. The CLI has one
thread and nothing left to do but wait for the ready report, so it forks instead: the
child leaves the session, keeps only the files the daemon is given, starts the
instances (:mod:`devcluster.supervisor.early`), takes the command line
``python -m devcluster.daemon --state-dir DIR`` (``ps``, the pytest plugin's leak guard
and ``down`` find a supervisor by it and by the state dir's lock, as for the exec'd
one) and runs the daemon's main.

Only the CLI asks for it (:data:`wanted`): a test process or a script calling
``Cluster.up()`` has state of its own that the daemon must not carry, and keeps the
fresh interpreter. It is not done with more than one thread (code after fork is unsafe
there), with grpc imported (its fork handlers), off Linux, or when the process's
argument area is too short to show the daemon's name.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Collection
from pathlib import Path
from typing import NoReturn

from devcluster.supervisor import early

#: Set by the CLI's ``up -d``; nothing else forks itself into a daemon.
wanted = False
#: What the daemon's command line must show at least (``ps``, the leak guard).
NAME = "python -m devcluster.daemon"


def usable() -> bool:
    """Whether this process may fork itself into the daemon (see the module)."""
    if not wanted or not sys.platform.startswith("linux") or "grpc" in sys.modules:
        return False
    if len(os.listdir("/proc/self/task")) != 1:
        return False
    from devcluster.supervisor.forkserver import title_room

    return title_room() >= len(NAME)


class Forked:
    """The launching process's handle on its forked daemon: what a Popen gave."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def wait(self, timeout: float | None = None) -> int:
        """Its exit status; subprocess.TimeoutExpired after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        # Polls: the daemon is our child, but nothing here waits on events.
        while self.returncode is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.returncode = os.waitstatus_to_exitcode(status)
            elif deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(NAME, timeout or 0.0)
            else:
                time.sleep(0.01)
        return self.returncode

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


def start(text: str, state_dir: Path, cwd: Path, out: int, keep: Collection[int],
          plan: early.Plan | None) -> Forked:
    """Fork the daemon: ``text`` is its request, ``out`` its output file, ``keep`` the
    files it inherits (the ready pipe, the lock, the lifeline), ``plan`` what it starts
    first. The caller closes its own copies afterwards, as after a Popen."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()  # else the child would write our buffered output again
    pid = os.fork()
    if pid:
        return Forked(pid)
    _child(text, state_dir, cwd, out, {*keep, *(plan.fds() if plan else ())}, plan)


def _child(text: str, state_dir: Path, cwd: Path, out: int, keep: set[int],
           plan: early.Plan | None) -> NoReturn:
    from devcluster.exiting import exit_now

    code = 1
    try:
        os.setsid()
        os.chdir(cwd)
        _stdio(out)
        _close_others(keep)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)  # the CLI's; the daemon sets its own
        if plan is not None:
            os.environ[early.ENV_FD] = str(plan.hand_r)
            plan.spawn()
        from devcluster.supervisor.forkserver import show_title

        show_title(f"{NAME} --state-dir {state_dir}")
        print(f"supervisor pid {os.getpid()}: forked from `devcluster up -d`", flush=True)
        from devcluster import daemon

        code = daemon.run_forked(text)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()  # into logs/supervisor.out
    exit_now(code)


def _stdio(out: int) -> None:
    """stdin from /dev/null, stdout and stderr into ``out``, as the exec'd daemon has."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(out, 1)
    os.dup2(out, 2)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        stream = io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), line_buffering=True)
        setattr(sys, name, stream)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))


def _close_others(keep: set[int]) -> None:
    """Close every file but stdio and ``keep``: the launching process's own (its end of
    the lifeline, of the ready pipe) must not live on in the daemon."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)
