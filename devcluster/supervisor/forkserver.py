"""The fork server of a preloaded process type (``preload = [...]`` in devcluster.toml).

Run by the supervisor as ``python .../forkserver.py SOCK_FD SUPERVISOR_PID PATH0 MODULE...``
(by path, with the interpreter the Procfile's ``python`` resolves to; stdlib only, so it
needs nothing installed in that interpreter). It imports the modules once, checks that
doing so started no thread (a fork copies only the forking thread: gRPC forbids threads,
channels and servers before a fork), says ``ready``, then starts each instance of its type
by forking, as gunicorn's ``--preload`` or multiprocessing's forkserver do.

Each instance is forked twice (server -> intermediate -> instance) and the intermediate
exits at once, so the instance is re-parented to the nearest child subreaper, the
supervisor (:func:`devcluster.supervisor.process.become_subreaper`): it is the supervisor's own
child, which it can ``waitpid`` for its exit status like any spawned instance. Only then
does the instance set its death signal (the kernel sends it on every re-parenting), so it
dies with the supervisor, not with the intermediate. Before running the command it takes
its own session and process group, its output pipe (stdout and stderr), its environment,
working directory, fresh ``__main__``, ``sys.argv`` and the signal dispositions a fresh
interpreter has; it ends like an interpreter (non-daemon threads joined, atexit run).

Protocol (SOCK_SEQPACKET, one JSON message each): the server first sends
``{"ready": seconds}`` or ``{"error": line}``; then per request ``{"argv", "env", "cwd"}``
with two pipes' write ends attached (SCM_RIGHTS: the output, and a sync pipe) it replies
``{"forked": true}`` or ``{"error": line}`` as soon as it forked; the instance itself
writes ``ok PID`` on the sync pipe once it is set up (re-parented, in its own session,
death signal set), or why not.
EOF on the socket ends the server.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # run by path: our own directory must not shadow anything
    sys.path[0] = sys.argv[3]

import atexit
import contextlib
import ctypes
import importlib
import importlib.machinery
import io
import json
import os
import select
import signal
import socket
import threading
import time
import traceback
import types
from collections.abc import Callable, Sequence
from typing import Any

_PR_SET_PDEATHSIG = 1
_MAX_MESSAGE = 1 << 20
_prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved once, before any fork
Handler = Callable[[int, Any], Any] | int | None
#: Private CPython functions an instance needs to start and end as ``python -m``/``python
#: FILE`` would (no public API does either): checked before anything is imported, so a
#: Python that changed them fails loudly at once, not inside an instance. Present in
#: CPython 3.11, 3.12 and 3.13 (tests/supervisor/test_forkserver_private.py asks every
#: python found); preload's end-to-end tests run on 3.11.
PRIVATE_NEEDS = (("runpy", "_run_module_as_main"), ("threading", "_shutdown"),
                 ("atexit", "_run_exitfuncs"))


def _send(sock: socket.socket, **message: Any) -> None:
    sock.send(json.dumps(message).encode())


def threads_problem(culprit: str | None = None) -> str | None:
    """Why forking this process now would be unsafe (threads running), else None.

    ``culprit``: the module whose import just started them, named in the answer (else
    the preloaded modules in general: a thread started late, after every import)."""
    py = threading.active_count()
    try:
        native = len(os.listdir("/proc/self/task"))
    except OSError:
        native = py
    if py == 1 and native == 1:
        return None
    names = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    shown = f": {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}" if names else ""
    who = f"importing {culprit!r}" if culprit else "the preloaded modules"
    return (f"{who} started threads ({py} Python, {native} in all{shown}); a fork "
            "copies only one of them (gRPC forbids threads, channels and servers before a "
            "fork): preload only modules that start nothing when imported")


def _dispositions() -> dict[int, Handler]:
    """The signal handlers of this interpreter as it started (SIGINT raises
    KeyboardInterrupt, SIGPIPE and SIGXFSZ ignored, the rest default)."""
    found: dict[int, Handler] = {}
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            found[sig] = signal.getsignal(sig)
        except (OSError, ValueError):
            continue
    return found


def missing_private() -> str | None:
    """Why this interpreter cannot run preloaded instances (a private function of
    :data:`PRIVATE_NEEDS` is gone), else None."""
    import runpy

    lost = [f"{mod}.{name}" for mod, name in PRIVATE_NEEDS
            if not callable(getattr({"runpy": runpy, "threading": threading,
                                     "atexit": atexit}[mod], name, None))]
    if not lost:
        return None
    version = ".".join(map(str, sys.version_info[:3]))
    return (f"this Python ({version}) has no {', '.join(lost)}, which preload relies on; "
            "remove preload from devcluster.toml or run CPython 3.11 to 3.13")


def serve(sock: socket.socket, parent: int, modules: Sequence[str]) -> int:
    """Import ``modules``, say ready, fork an instance per request until EOF."""
    fresh = _dispositions()
    began = time.monotonic()
    lost = missing_private()
    if lost:
        return _refuse(sock, lost)
    for name in modules:
        try:
            importlib.import_module(name)
        except BaseException as e:
            return _refuse(sock, f"cannot import {name!r}: {type(e).__name__}: {e}")
        problem = threads_problem(name)  # after each import: the one to blame is named
        if problem:
            return _refuse(sock, problem)
    _send(sock, ready=round(time.monotonic() - began, 3))
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the intermediates: no zombies
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(sock, _MAX_MESSAGE, 2)
        except ConnectionError:
            return 0
        if not data:
            return 0
        try:
            _send(sock, **_start(json.loads(data), fds, sock, parent, fresh))
        finally:
            for fd in fds:
                os.close(fd)


def _refuse(sock: socket.socket, why: str) -> int:
    """Say ``why`` to the greeting and to every request until EOF (requests may be
    queued already: closing on them would reset the socket before ``why`` is read)."""
    _send(sock, error=why)
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(sock, _MAX_MESSAGE, 2)
        except ConnectionError:
            return 1
        for fd in fds:
            os.close(fd)
        if not data:
            return 1
        _send(sock, error=why)


def _start(req: dict[str, Any], fds: Sequence[int], sock: socket.socket, parent: int,
           fresh: dict[int, Handler]) -> dict[str, Any]:
    """Fork the instance of ``req`` through an intermediate; ``forked``, or the error.

    Only the first fork is waited for here: the instance reports its pid once it is
    set up (or why not) on the ``sync`` pipe, straight to the supervisor, so the next
    request need not wait for the intermediate or the instance to be scheduled."""
    problem = threads_problem()  # checked before every fork: a preload may start one late
    if problem:
        return {"error": problem}
    if len(fds) != 2:
        return {"error": f"a request carries 2 pipes (output, sync), not {len(fds)}"}
    sys.stdout.flush()
    sys.stderr.flush()
    if os.fork() == 0:  # the intermediate: fork the instance and go
        try:
            middle = os.getpid()
            if os.fork() == 0:
                _instance(req, fds[0], fds[1], sock, parent, fresh, middle)
        finally:
            os._exit(0)  # reaped by the kernel: SIGCHLD is ignored here
    return {"forked": True}


def _instance(req: dict[str, Any], out: int, sync: int, sock: socket.socket, parent: int,
              fresh: dict[int, Handler], middle: int) -> None:
    """In the instance: become what an exec'd ``python`` would be, then run; never returns."""
    try:
        os.setsid()  # its own session and process group, led by its pid
        _until_orphaned(middle)  # then our parent is the supervisor (the subreaper)
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the supervisor died meanwhile
            os._exit(1)
        sock.close()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(null)
        if out > 2:
            os.close(out)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        for sig, handler in fresh.items():
            with contextlib.suppress(OSError, ValueError, TypeError):
                signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        argv: list[str] = req["argv"]
        _stdio("-u" in argv[1:2] or bool(req["env"].get("PYTHONUNBUFFERED")))
    except BaseException as e:
        os.write(sync, f"cannot set up the instance: {type(e).__name__}: {e}".encode())
        os._exit(127)
    with contextlib.suppress(OSError, ValueError, IndexError):
        _show_as(argv, req["env"])
    os.write(sync, f"ok {os.getpid()}".encode())
    os.close(sync)
    _run(argv)


def _until_orphaned(middle: int) -> None:
    """Wait until the intermediate ``middle`` has exited (a pidfd is readable then,
    and the kernel re-parented us before that)."""
    try:
        fd = os.pidfd_open(middle)
    except ProcessLookupError:
        return
    try:
        if os.getppid() == middle:  # still alive after the open: the pidfd is its
            select.select([fd], [], [])
    finally:
        os.close(fd)


def _show_as(argv: Sequence[str], env: dict[str, str]) -> None:
    """Make ``ps`` and psutil (``/proc/PID/cmdline`` and ``environ``) show the instance's
    own command line and environment, not the fork server's: overwrite the areas the
    kernel reads them from in place, as setproctitle(3) does. For the arguments, a last
    byte that is not NUL tells the kernel to read the title up to its first NUL; the
    environment area was made roomy by the supervisor (``DEVCLUSTER_ENV_ROOM``) and
    nothing points into it once os.environ was replaced."""
    show_title(" ".join(argv))
    _, _, env_start, env_end = _areas()
    block = b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items())
    if len(block) < env_end - env_start:
        ctypes.memset(env_start, 0, env_end - env_start)
        ctypes.memmove(env_start, block, len(block))


def _areas() -> tuple[int, int, int, int]:
    """arg_start, arg_end, env_start, env_end of this process: fields 48 to 51 of proc(5)."""
    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rpartition(b")")[2].split()
    start, end, env_start, env_end = (int(x) for x in fields[45:49])
    return start, end, env_start, env_end


def title_room() -> int:
    """How long a title :func:`show_title` can show in full (the argument area, less 2)."""
    start, end, _, _ = _areas()
    return end - start - 2


def show_title(title: str) -> None:
    """Make ``ps`` and psutil show ``title`` (cut to :func:`title_room`) as this process's
    command line: the argument area overwritten in place, as setproctitle(3) does; a
    last byte that is not NUL tells the kernel to read it up to its first NUL."""
    start, end, _, _ = _areas()
    room = end - start
    text = title.encode()[:room - 2]
    ctypes.memset(start, 0, room)
    ctypes.memmove(start, text, len(text))
    ctypes.memset(end - 1, 0x20, 1)


def _stdio(unbuffered: bool) -> None:
    """sys.stdout/stderr over fds 1 and 2 as a fresh interpreter would make them."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        old = getattr(sys, name)
        raw = io.FileIO(fd, "w", closefd=False)
        buffer: Any = raw if unbuffered else io.BufferedWriter(raw)
        stream = io.TextIOWrapper(buffer, encoding=old.encoding, errors=old.errors,
                                  line_buffering=name == "stderr" or raw.isatty(),
                                  write_through=unbuffered)
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _run(argv: list[str]) -> None:
    """Run ``python [-u] -m MOD ARGS`` or ``python [-u] FILE ARGS`` in this process as
    the interpreter would, then exit as it would."""
    import runpy

    sys.orig_argv = list(argv)
    words = argv[2:] if argv[1:2] == ["-u"] else argv[1:]
    main = types.ModuleType("__main__")
    main.__dict__["__builtins__"] = __builtins__
    sys.modules["__main__"] = main
    code, interrupted = 0, False
    try:
        if words[0] == "-m":
            sys.path[0] = os.getcwd()
            sys.argv = ["-m", *words[2:]]
            runpy._run_module_as_main(words[1], alter_argv=True)  # type: ignore[attr-defined]
        else:
            sys.path[0] = os.path.dirname(os.path.realpath(words[0]))
            sys.argv = list(words)
            path = os.path.abspath(words[0])  # as the interpreter (3.9+) names it
            main.__file__ = path
            main.__dict__["__cached__"] = None  # not a ModuleType attribute to typeshed
            main.__loader__ = importlib.machinery.SourceFileLoader("__main__", path)
            with open(path, "rb") as f:
                source = f.read()
            exec(compile(source, path, "exec"), main.__dict__)
    except SystemExit as e:
        code = _exit_code(e)
    except KeyboardInterrupt:
        traceback.print_exc()
        interrupted = True
    except BaseException:
        traceback.print_exc()
        code = 1
    _exit(code, interrupted)


def _exit_code(e: SystemExit) -> int:
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code & 0xFF
    print(e.code, file=sys.stderr)
    return 1


def _exit(code: int, interrupted: bool) -> None:
    """End as the interpreter does: join non-daemon threads, run atexit, flush."""
    try:
        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(BaseException):
                stream.flush()
        if interrupted:  # as CPython: die of SIGINT, so the parent sees the signal
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        os._exit(code)


def main(argv: Sequence[str]) -> int:
    sock = socket.socket(fileno=int(argv[0]))
    try:
        return serve(sock, int(argv[1]), argv[3:])
    finally:
        sock.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
