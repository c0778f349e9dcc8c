"""Instances started before the supervisor: the first step of ``up -d``.

A background supervisor costs an interpreter start and its imports before it can spawn
anything (~150 ms on the path of every ``up -d``, more on a loaded machine). The
instances need not wait for that: the process that becomes the supervisor spawns them
between its fork and its exec (the launcher's ``preexec_fn``), so they boot while the
supervisor's interpreter starts and imports, and it then adopts them: exec keeps a
process's pid and its children.

:class:`Plan` is made in the launching process: each instance's argv, environment and
working directory as the supervisor would make them, and the pipes for their output.
Its :meth:`Plan.spawn` runs in the child between fork and exec, only when the launching
process has one thread (code between fork and exec in a threaded process is unsafe:
see :mod:`devcluster.supervisor.process`), and never raises: an instance it cannot start
is simply left to the supervisor. It hands over what it started on a pipe whose number
is in ``DEVCLUSTER_EARLY_FD``. In the supervisor, :func:`receive` reads that first
thing (stdlib only) and :func:`take` gives an instance to its first start only if that
start would run exactly the same command, environment and directory (a digest); any
other is stopped (:func:`discard`) and started the usual way.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from devcluster import defaults
from devcluster.schema import RUNNING_STATES
from devcluster.supervisor import watchdog

if TYPE_CHECKING:
    from devcluster.config.procfile import InstanceSpec
    from devcluster.config.project import TypeSettings
    from devcluster.supervisor.request import BootView

#: The environment variable that names the hand-over pipe's read end.
ENV_FD = "DEVCLUSTER_EARLY_FD"
#: More instances than this start the usual way: the hand-over (about 100 bytes an
#: instance) must fit in a pipe's buffer, written before anyone reads it.
MOST = 256
_SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None
_PR_SET_CHILD_SUBREAPER = 36
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def digest(argv: Sequence[str], env: Mapping[str, str], cwd: str) -> str:
    """What identifies a start: the same command, environment and directory."""
    text = json.dumps([list(argv), sorted(env.items()), cwd])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Start:
    """One instance to start early, as the supervisor would start it."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str


def plan(view: BootView, types: Mapping[str, TypeSettings], grace: float) -> Plan | None:
    """What to start early for this request (the launching process's first step); None
    when nothing may or can: not Linux, more than one thread here, or something that
    could make an early start fail where the supervisor's would not."""
    if not sys.platform.startswith("linux") or len(os.listdir("/proc/self/task")) != 1:
        return None
    from devcluster.config import procfile

    _, _, specs = procfile.load(view.procfile, view.env_files, view.scale, view.base_port)
    if len(specs) > MOST or not may_start_ahead(view, specs):
        return None
    cwd, here = str(view.procfile.parent.resolve()), str(Path(sys.executable).parent)
    starts = []
    for spec in specs:
        conf = types.get(spec.process_type)
        if conf is not None and conf.preload:
            continue  # its fork server forks it (devcluster.supervisor.preboot)
        # As the supervisor's first start makes them (devcluster.supervisor.lifecycle).
        env = procfile.instance_environment(spec, here, conf.env if conf else {},
                                            conf.grace if conf else grace)
        starts.append(Start(spec.name, tuple(procfile.command_argv(spec.command, env)),
                            env, cwd))
    return Plan(starts) if starts else None


class Plan:
    """The launching process's end: pipes made here, passed to the child (:meth:`fds`),
    the spawning done there (:meth:`spawn`), our copies closed after (:meth:`close`)."""

    def __init__(self, starts: Sequence[Start]) -> None:
        self.starts = [s for s in starts if _runnable(s)]
        self.pipes = [os.pipe() for _ in self.starts]
        self.hand_r, self.hand_w = os.pipe()
        self._children: list[subprocess.Popen[bytes]] = []
        self._prctl = ctypes.CDLL(None).prctl if sys.platform.startswith("linux") else None

    def fds(self) -> list[int]:
        """What the child must inherit (the supervisor closes the write ends it keeps)."""
        return [self.hand_r, self.hand_w, *(fd for pair in self.pipes for fd in pair)]

    def environment(self, env: Mapping[str, str]) -> dict[str, str]:
        """``env`` plus the hand-over pipe's number."""
        return {**env, ENV_FD: str(self.hand_r)}

    def spawn(self) -> None:
        """In the child, between fork and exec: start every instance, hand them over."""
        started: dict[str, tuple[int, int, str]] = {}
        try:
            if self._prctl is not None:  # what they daemonize stays ours (a subreaper)
                self._prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
            mark = f"{os.getpid()}.{time.time_ns()}"  # the supervisor's (its watchdog's)
            with _default_signals():
                for start, (out_r, out_w) in zip(self.starts, self.pipes, strict=True):
                    proc = _spawn(start, out_w, mark)
                    if proc is not None:
                        # Kept until our exec: a Popen dropped while its process runs is
                        # polled by the next Popen (subprocess._cleanup), which would
                        # reap an instance that already exited: its status is the
                        # supervisor's to collect.
                        self._children.append(proc)
                        started[start.name] = (proc.pid, out_r,
                                               digest(start.argv, start.env, start.cwd))
            os.write(self.hand_w, json.dumps({"mark": mark, "started": started}).encode())
        except BaseException:  # the supervisor starts what is not handed over
            for pid, _, _ in started.values():
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)
            started.clear()
        finally:  # the supervisor keeps only the read ends it was handed
            for start, (out_r, out_w) in zip(self.starts, self.pipes, strict=True):
                for fd in (out_w,) if start.name in started else (out_r, out_w):
                    with contextlib.suppress(OSError):
                        os.close(fd)
            with contextlib.suppress(OSError):
                os.close(self.hand_w)

    def close(self) -> None:
        """Our copies of every pipe end (the child has its own)."""
        for fd in self.fds():
            with contextlib.suppress(OSError):
                os.close(fd)


@contextlib.contextmanager
def _default_signals() -> Iterator[None]:
    """The stop signals at their defaults for what starts meanwhile: an ignored SIGINT
    (a script's background job) is inherited through exec, and an instance that ignores
    it cannot stop gracefully; the supervisor's own starts get the defaults too (its
    handlers are reset by exec)."""
    kept = {sig: signal.getsignal(sig) for sig in _STOP_SIGNALS}
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    try:
        yield
    finally:
        for sig, handler in kept.items():
            if handler is not None:  # None: not set from Python; the default stays
                signal.signal(sig, handler)


def _runnable(start: Start) -> bool:
    """Whether the command exists (else the supervisor reports it, as for any start)."""
    return bool(start.argv) and shutil.which(start.argv[0], path=start.env.get("PATH")) is not None


def _spawn(start: Start, out_w: int, mark: str) -> subprocess.Popen[bytes] | None:
    """Start one instance as :func:`devcluster.supervisor.process.spawn` would: its own
    session, its death signal, our mark, output on ``out_w`` (None: it failed)."""
    argv = list(start.argv)
    if _SETPRIV:
        argv = [_SETPRIV, "--pdeathsig", "KILL", "--", *argv]
    elif sys.platform.startswith("linux"):
        return None  # no way to give it its death signal without code after fork
    try:
        proc = subprocess.Popen(argv, env={**start.env, defaults.ENV_SUPERVISOR: mark},
                                cwd=start.cwd, stdin=subprocess.DEVNULL, stdout=out_w,
                                stderr=subprocess.STDOUT, start_new_session=True)
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    return proc


def may_start_ahead(view: BootView, specs: Sequence[InstanceSpec]) -> bool:
    """Instances may be forked before the supervisor is up unless something could make
    them fail where a later start would not: a crashed run's processes (the supervisor
    kills them first), a port already taken (the supervisor reports it), a start that
    waits on ``depends_on``."""
    if view.depends:
        return False
    if view.registry is None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            text = defaults.layout(view.state_dir).registry.read_text()
            records = json.loads(text).get("instances", {}).values()
            # The supervisor's own rule (daemon.clean_stale): a record whose process may
            # still run. `backoff` has none: its process is gone, nothing to kill first.
            if any(r.get("state") in RUNNING_STATES for r in records):
                return False
    for spec in specs:
        if spec.port and "PORT" in spec.command:
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", spec.port))
                except OSError:
                    return False
    return True



def start_here(view: BootView, types: Mapping[str, TypeSettings], grace: float) -> None:
    """A foreground ``up``'s first step: this process is the supervisor, so it starts
    what :func:`plan` allows itself, before it imports the rest, and keeps them for
    :func:`take` (their output pipes' read ends stay open for it)."""
    here = plan(view, types, grace)
    if here is None:
        return
    here.spawn()  # writes the hand-over and closes every write end
    os.environ[ENV_FD] = str(here.hand_r)
    receive()  # reads it to its end and closes it


# The supervisor's end -----------------------------------------------------------------

_handed: dict[str, tuple[int, int, str]] = {}
_mark: str | None = None


def receive() -> None:
    """Read the hand-over, if any (the supervisor's first step: stdlib only)."""
    global _mark
    fd = os.environ.pop(ENV_FD, None)
    if fd is None or not fd.isdigit():
        return
    data = b""
    with contextlib.suppress(OSError):
        while chunk := os.read(int(fd), 65536):
            data += chunk
    with contextlib.suppress(OSError):
        os.close(int(fd))
    with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
        found = json.loads(data)
        _mark = str(found["mark"])
        watchdog.keep_mark(_mark)  # a restart's process carries the same
        for name, (pid, out_r, sig) in found["started"].items():
            _handed[str(name)] = (int(pid), int(out_r), str(sig))


def mark() -> str | None:
    """The mark the early instances carry (the supervisor's own from then on)."""
    return _mark


def any_started() -> bool:
    """Whether instances were started early (their ports are theirs by now)."""
    return bool(_handed)


def take(name: str, argv: Sequence[str], env: Mapping[str, str], cwd: str) -> tuple[int, int] | None:
    """(pid, output fd) of ``name``'s early process if it runs what the supervisor
    would start now; any other early process of ``name`` is stopped."""
    found = _handed.pop(name, None)
    if found is None:
        return None
    pid, out_r, sig = found
    if sig == digest(argv, env, cwd):
        return pid, out_r
    _stop(pid, out_r)
    return None


def discard() -> list[int]:
    """Stop what no start took (its zombie is reaped with the other orphans); the pids."""
    left = list(_handed.values())
    _handed.clear()
    for pid, out_r, _ in left:
        _stop(pid, out_r)
    return [pid for pid, _, _ in left]


def _stop(pid: int, out_r: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.close(out_r)
