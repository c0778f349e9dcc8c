"""The leak guard: processes devcluster started for a session that outlive it.

A test that starts a :class:`~devcluster.api.Cluster` and never stops it, or a
teardown that left an instance running, would otherwise leave servers holding
ports after the run. At the end of the session every process the plugin saw
start (supervisors, instances) and every devcluster supervisor this process
spawned is checked: those still alive after a short grace are named and killed,
and the run fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import psutil

from devcluster.defaults import PRIVATE_DIR, SUPERVISOR_LOCK_FILE

#: Seconds a process gets to finish exiting by itself (a PDEATHSIG or a graceful stop
#: on its way) before it counts as leaked.
GRACE = 3.0
DAEMON_MODULE = "devcluster.daemon"


@dataclass(frozen=True)
class Leak:
    """A process still alive at the end of the session."""

    pid: int
    command: str
    origin: str

    def describe(self) -> str:
        return f"pid {self.pid} ({self.command}), {self.origin}"

    def to_dict(self) -> dict[str, object]:
        return {"pid": self.pid, "command": self.command, "origin": self.origin}

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> Leak:
        return cls(int(str(d["pid"])), str(d["command"]), str(d["origin"]))


def same_process(pid: int, create_time: float | None) -> psutil.Process | None:
    """The live process ``pid`` if it is the one created at ``create_time`` (not a reuse)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if create_time is not None and abs(proc.create_time() - create_time) > 1.0:
            return None
        return proc
    except psutil.Error:
        return None


def _command(proc: psutil.Process) -> list[str]:
    with contextlib.suppress(psutil.Error):
        return proc.cmdline()
    return []


def _short(argv: list[str], proc: psutil.Process | None = None) -> str:
    if DAEMON_MODULE in argv:
        return f"devcluster supervisor, state dir {_daemon_state_dir(argv, proc)}"
    text = " ".join(argv) or "?"
    return text if len(text) <= 100 else text[:97] + "..."


def _daemon_state_dir(argv: list[str], proc: psutil.Process | None = None) -> str:
    """The state dir of a supervisor: its settings come through a pipe, but it holds
    ``<state dir>/private/supervisor.lock`` open (an old one had its settings as its
    argument)."""
    if proc is not None:
        with contextlib.suppress(psutil.Error):
            for f in proc.open_files():
                if os.path.basename(f.path) == SUPERVISOR_LOCK_FILE:
                    private = os.path.dirname(f.path)
                    return (os.path.dirname(private)
                            if os.path.basename(private) == PRIVATE_DIR else private)
    if "--state-dir" in argv[:-1]:
        return argv[argv.index("--state-dir") + 1]
    with contextlib.suppress(ValueError, IndexError, TypeError, KeyError):
        return str(json.loads(argv[-1])["state_dir"])
    return "?"


def spawned_supervisors(parent: int | None = None) -> list[psutil.Process]:
    """devcluster supervisors among the descendants of ``parent`` (default: this process)."""
    try:
        children = psutil.Process(parent or os.getpid()).children(recursive=True)
    except psutil.Error:
        return []
    return [p for p in children if DAEMON_MODULE in _command(p)]


def find_leaks(tracked: Mapping[int, tuple[float | None, str]],
               supervisors: Iterable[psutil.Process] = (),
               exclude: Iterable[str] = (), grace: float = GRACE) -> list[Leak]:
    """Processes of ``tracked`` (pid -> (create time, origin)) and ``supervisors`` (with
    their descendants) still alive after ``grace`` seconds, except those whose command
    line mentions one of ``exclude`` (a cluster legitimately still running)."""
    skip = tuple(exclude)
    found: dict[int, tuple[psutil.Process, str]] = {}
    for pid, (created, origin) in tracked.items():
        if (proc := same_process(pid, created)) is not None:
            found[pid] = (proc, origin)
    for sup in supervisors:
        found.setdefault(sup.pid, (sup, "a supervisor started in this session and never "
                                        "stopped"))
        for proc in _descendants(sup):
            found.setdefault(proc.pid, (proc, f"started by supervisor pid {sup.pid}"))
    found = {pid: (p, o) for pid, (p, o) in found.items()
             if not any(s in " ".join(_command(p)) for s in skip)}
    if not found:
        return []
    alive = wait_gone([p for p, _ in found.values()], grace)
    return [Leak(p.pid, _short(_command(p), p), found[p.pid][1]) for p in alive]


def wait_gone(procs: Iterable[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every process of ``procs`` is gone; return those still alive.

    Polls, reaping our own children (psutil's wait can miss a zombie child of an xdist
    worker): a process that is not our child sends us no exit event.
    """
    left = list(procs)
    deadline = time.monotonic() + timeout
    while True:
        for proc in left:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(proc.pid, os.WNOHANG)
        left = [p for p in left if _still(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.02)


def _still(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _descendants(proc: psutil.Process) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return proc.children(recursive=True)
    return []


def kill(leaks: Iterable[Leak]) -> None:
    """SIGKILL every leaked process and its process group (an instance leads its own)."""
    procs = []
    for leak in leaks:
        with contextlib.suppress(psutil.Error, OSError):
            proc = psutil.Process(leak.pid)
            procs.append(proc)
            procs.extend(proc.children(recursive=True))
            if os.getpgid(leak.pid) == leak.pid:
                os.killpg(leak.pid, signal.SIGKILL)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    wait_gone(procs, 5.0)
