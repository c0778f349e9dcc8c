"""Starting and signalling instance processes (Linux first, POSIX otherwise).

Each instance runs in its own session and process group (``start_new_session``),
so a signal reaches the whole tree it forked, and dies with the supervisor even
when the supervisor is SIGKILLed: the kernel sends it SIGKILL on parent death
(``PR_SET_PDEATHSIG``).

PDEATHSIG is set by exec'ing through util-linux's ``setpriv --pdeathsig KILL``
rather than in a ``preexec_fn``: the supervisor runs grpc threads, and Python code
between fork and exec in a threaded process crashed children here (SIGSEGV in
about one spawn in ten). Without ``preexec_fn`` subprocess can use vfork, which is
also faster. Where setpriv is missing, a ``preexec_fn`` calls prctl via ctypes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import sys
from collections.abc import Collection, Mapping, Sequence
from typing import Protocol

import psutil

from devcluster.config.signals import parse_signal  # noqa: F401 - its home was here
from devcluster.defaults import ENV_INSTANCE, ENV_SUPERVISOR
from devcluster.supervisor import pidfd, watchdog

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
# Resolve the symbol before any fork: the child should do as little as possible.
_prctl = _libc.prctl if _libc is not None else None


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


_SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None


def with_pdeathsig(argv: Sequence[str]) -> tuple[list[str], object]:
    """(argv, preexec_fn) that make the process get SIGKILL when its parent dies."""
    if _SETPRIV:
        return [_SETPRIV, "--pdeathsig", "KILL", "--", *argv], None
    return list(argv), _die_with_parent if _prctl is not None else None


def marked(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with this supervisor's mark (``DEVCLUSTER_SUPERVISOR``): what an instance
    starts inherits it, so the orphan watchdog finds it after the supervisor's death
    wherever it went (``setsid``, a double fork)."""
    return {**env, ENV_SUPERVISOR: watchdog.mark()}


def mark_entry() -> str:
    """The environment entry :func:`marked` adds (``NAME=VALUE``), for the watchdog."""
    return f"{ENV_SUPERVISOR}={watchdog.mark()}"


async def spawn(
    argv: Sequence[str], env: Mapping[str, str], cwd: str, die_with_parent: bool = True
) -> asyncio.subprocess.Process:
    """Start ``argv`` in a new process group, stdout+stderr piped for the log stream,
    its environment :func:`marked` as ours."""
    preexec = None
    if die_with_parent:
        argv, preexec = with_pdeathsig(argv)
    if _SETPRIV and argv[0] == _SETPRIV and not shutil.which(argv[4], path=env.get("PATH")):
        # setpriv would report this as its own failure; fail like a plain exec would.
        raise FileNotFoundError(2, "command not found", argv[4])
    return await asyncio.create_subprocess_exec(
        *argv,
        env=marked(env),
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=preexec,  # type: ignore[arg-type]
        limit=1 << 20,
    )


def watch_children_with_pidfds() -> bool:
    """Have asyncio learn of our children's exits from pidfds, on the running loop.

    Python 3.11's default child watcher runs one thread per child blocked in waitpid:
    100 instances, 100 threads (their stacks count in the supervisor's memory). 3.12
    uses pidfds by itself; on 3.11 we ask for them where the kernel has them (5.3+).
    """
    if sys.version_info >= (3, 12) or not hasattr(asyncio, "PidfdChildWatcher"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        return False
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(asyncio.get_running_loop())
    asyncio.get_event_loop_policy().set_child_watcher(watcher)
    return True


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux; as tini does).

    A command that daemonizes (``sleep 1000 &``, a double fork, ``setsid``) leaves
    processes outside the process group of the instance; without this they are
    reparented to init and nothing stops them. With it they stay our descendants:
    :func:`adopted` finds them and :func:`sweep` stops them.
    """
    if _prctl is None:
        return False
    return bool(_prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


class Child(Protocol):
    """What the supervisor needs of an instance's process: an exec'd one
    (asyncio.subprocess.Process) or one forked by a fork server (devcluster.supervisor.preload)."""

    # Read-only here: the process object itself sets its return code.
    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    @property
    def stdout(self) -> asyncio.StreamReader | None: ...

    async def wait(self) -> int: ...


async def wait_exit(proc: Child) -> int:
    """The exit status of ``proc`` as soon as it exits.

    asyncio's ``wait()`` also waits until every pipe of the process is closed, so a
    background child that inherited stdout (``sh -c 'server & exit 0'``) would keep
    an exited instance looking alive forever. A pidfd is readable when the process
    exits, whoever holds its pipes. A forked instance's own ``wait`` does just that.
    """
    if not isinstance(proc, asyncio.subprocess.Process):
        return await proc.wait()
    await pidfd.exited(proc.pid)  # without a pidfd (not Linux >= 5.3): asyncio's wait
    return await _returncode(proc)


async def _returncode(proc: Child) -> int:
    # asyncio's child watcher reaps the process and records its status a moment after
    # it exits; poll for that (it has no other event), with a deadline as a safety.
    deadline = asyncio.get_running_loop().time() + 5.0
    while proc.returncode is None:
        if asyncio.get_running_loop().time() > deadline:
            return await proc.wait()
        await asyncio.sleep(0.005)
    return proc.returncode


def adopted(ours: Collection[int], instance: str | None = None) -> list[psutil.Process]:
    """Our children that we did not start (orphans of instances, see become_subreaper);
    only those of ``instance`` (by the ``DEVCLUSTER_INSTANCE`` they inherited) if given."""
    strangers = _child_pids() - set(ours)
    if not strangers:  # the common case, answered without scanning every process
        return []
    found = []
    for pid in strangers:
        try:
            child = psutil.Process(pid)
        except psutil.Error:
            continue
        try:
            if instance is not None and child.environ().get(ENV_INSTANCE) != instance:
                continue
        except psutil.Error:
            continue
        found.append(child)
    return found


def _child_pids() -> set[int]:
    """Pids of our children: /proc/self/task/*/children (a few small reads), or psutil's
    scan of every process where that file does not exist."""
    pids: set[int] = set()
    try:
        tasks = os.listdir("/proc/self/task")
        for task in tasks:
            try:
                with open(f"/proc/self/task/{task}/children", encoding="ascii") as f:
                    pids.update(int(p) for p in f.read().split())
            except FileNotFoundError:  # that thread ended meanwhile; or no such file at all
                if task == tasks[0]:
                    raise
        return pids
    except OSError:
        try:
            return {p.pid for p in psutil.Process().children()}
        except psutil.Error:
            return set()


def sweep(ours: Collection[int], instance: str | None = None) -> list[int]:
    """SIGKILL what :func:`adopted` finds (and its groups), reap it; the pids killed."""
    found = adopted(ours, instance)
    for proc in found:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)  # it may lead a group of its own (setsid)
        with contextlib.suppress(psutil.Error):
            proc.kill()
    reap([p.pid for p in found], timeout=1.0)
    return [p.pid for p in found]


def reap(pids: Collection[int], timeout: float = 0.0) -> None:
    """Collect the exit status of adopted children (never asyncio's), up to ``timeout``."""
    import time

    deadline = time.monotonic() + timeout
    left = set(pids)
    while left:
        for pid in list(left):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                left.discard(pid)
        if not left or time.monotonic() >= deadline:
            return
        time.sleep(0.005)


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to the process group ``pgid``; False when it is already gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def listening_ports(pid: int) -> list[int]:
    """TCP ports the process ``pid`` and its descendants listen on, sorted."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return []
    ports: set[int] = set()
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr:
                    ports.add(conn.laddr.port)
    return sorted(ports)


def _bindable(port: int) -> bool:
    """No listener holds ``port`` on any IPv4 address (nor IPv6's wildcard, dual-stack):
    a bind to 0.0.0.0 with SO_REUSEADDR succeeds. A bind costs microseconds, where a
    look at the kernel's socket tables (/proc/net/tcp*) costs milliseconds to tens of ms."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def ports_taken(ports: Collection[int]) -> dict[int, str]:
    """Which of ``ports`` something listens on, and who (:func:`port_owner`'s words).

    Each port is first tried with a bind; only those that fail (a listener, or a
    connection's own port) cost a look at every process's sockets, once for all.
    """
    doubtful = [p for p in ports if not _bindable(p)]
    if not doubtful:
        return {}
    owners = _listeners()
    return {p: owners[p] for p in doubtful if p in owners}


def _listeners() -> dict[int, str]:
    """Port -> ``"pid 123 (nginx)"`` for every TCP listener of this machine."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.Error, PermissionError):
        return {}
    out: dict[int, str] = {}
    for conn in conns:
        if conn.status != psutil.CONN_LISTEN or not conn.laddr or conn.laddr.port in out:
            continue
        if conn.pid is None:
            out[conn.laddr.port] = "another program"
            continue
        try:
            out[conn.laddr.port] = f"pid {conn.pid} ({psutil.Process(conn.pid).name()})"
        except psutil.Error:
            out[conn.laddr.port] = f"pid {conn.pid}"
    return out


def port_owner(port: int) -> str | None:
    """``"pid 123 (nginx)"`` for whoever listens on ``port`` on this machine, else None."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.Error, PermissionError):
        return None
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            if conn.pid is None:
                return "another program"
            try:
                return f"pid {conn.pid} ({psutil.Process(conn.pid).name()})"
            except psutil.Error:
                return f"pid {conn.pid}"
    return None


def describe_exit(returncode: int | None) -> str:
    """``"exit 1"`` or ``"signal SIGKILL"`` from a Popen-style return code."""
    if returncode is None:
        return ""
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit {returncode}"
