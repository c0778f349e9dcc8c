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
from collections.abc import Mapping, Sequence

import psutil

_PR_SET_PDEATHSIG = 1
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


async def spawn(
    argv: Sequence[str], env: Mapping[str, str], cwd: str, die_with_parent: bool = True
) -> asyncio.subprocess.Process:
    """Start ``argv`` in a new process group, stdout+stderr piped for the log stream."""
    preexec = None
    if die_with_parent:
        argv, preexec = with_pdeathsig(argv)
    if _SETPRIV and argv[0] == _SETPRIV and not shutil.which(argv[4], path=env.get("PATH")):
        # setpriv would report this as its own failure; fail like a plain exec would.
        raise FileNotFoundError(2, "command not found", argv[4])
    return await asyncio.create_subprocess_exec(
        *argv,
        env=dict(env),
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=preexec,  # type: ignore[arg-type]
        limit=1 << 20,
    )


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to the process group ``pgid``; False when it is already gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def parse_signal(value: str | int) -> signal.Signals:
    """``"KILL"``, ``"SIGKILL"``, ``"9"`` or ``9`` -> ``Signals.SIGKILL``."""
    text = str(value).strip().upper()
    try:
        if text.isdigit():
            return signal.Signals(int(text))
        return signal.Signals[text if text.startswith("SIG") else f"SIG{text}"]
    except (KeyError, ValueError):
        from devcluster.errors import UsageError

        raise UsageError(f"unknown signal {value!r}; use a name like SIGTERM or a number") from None


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
