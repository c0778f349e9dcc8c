"""The supervisor's end of preloading: one fork server per preloaded type, and the
instances it forks as children the supervisor signals and waits on like any other.

A type with ``preload = ["grpc", ...]`` in ``devcluster.toml`` gets a fork server
(:mod:`devcluster.supervisor.forkserver`) on its first start: started with the interpreter its
``python`` resolves to, the type's environment (without the per-instance ``PORT``,
``PS``, ``DEVCLUSTER_INSTANCE``) and the cluster's working directory, it imports the
modules once. Each start of an instance then costs a fork instead of an interpreter
start and the imports. The instance is re-parented to the supervisor (a child
subreaper), so :class:`Forked` waits on it with a pidfd and collects its exit status
with ``waitpid``, as for an exec'd instance.

What differs from an exec'd instance: modules imported by the fork server saw its
environment at import time, and every instance of the type shares one hash seed
(PYTHONHASHSEED is chosen at interpreter start).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import socket
import subprocess
from collections.abc import Callable, Mapping, Sequence

from devcluster.defaults import READY_TIMEOUT
from devcluster.supervisor import pidfd, preboot

#: Output lines longer than this are cut into pieces by the pump (as for spawn).
_LINE_LIMIT = 1 << 20


class PreloadError(Exception):
    """The fork server could not start an instance: the line says why."""


class Forked:
    """An instance the supervisor did not start through asyncio: forked by a fork server
    (re-parented to the supervisor), or started before the supervisor's exec
    (:mod:`devcluster.supervisor.early`). Its pid, output and exit status: what the
    supervisor needs of a process; ``how`` says which it is in the log."""

    def __init__(self, pid: int, stdout: asyncio.StreamReader, how: str | None = None) -> None:
        self.pid = pid
        self.stdout = stdout
        self.how = how if how is not None else f"forked, preloaded {pid}"
        """How the log's "started (...)" names it."""
        self.returncode: int | None = None

    def __repr__(self) -> str:
        return f"<Forked pid={self.pid} returncode={self.returncode}>"

    async def wait(self) -> int:
        """The exit status once it exits (a pidfd says when; waitpid collects it)."""
        if self.returncode is not None:
            return self.returncode
        await pidfd.exited(self.pid)
        try:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        except ChildProcessError:  # collected by someone else (an orphan sweep)
            self.returncode = -9
        return self.returncode


class ForkServer:
    """One running fork server: :meth:`start` it, :meth:`fork` instances, :meth:`close`."""

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self.proc = proc
        self.sock = sock
        # Requests are pipelined: the server forks back to back while we are busy
        # elsewhere. It answers in order, so each reply goes to the oldest waiter.
        self._send_lock = asyncio.Lock()
        self._waiting: collections.deque[asyncio.Future[dict[str, object]]] = \
            collections.deque()
        self._gone: str | None = None

    @classmethod
    async def greet(cls, launched: preboot.Launched, modules: Sequence[str], timeout: float,
                    asked: Sequence[asyncio.Future[dict[str, object]]] = ()) -> ForkServer:
        """Wait for a launched fork server to have imported ``modules``; it, ready.
        ``asked``: the replies to requests already sent (preboot), in order."""
        proc, ours = launched
        server = cls(proc, ours)
        server._waiting.extend(asked)
        try:
            hello = await asyncio.wait_for(server._reply(), timeout)
        except asyncio.CancelledError:
            await server.close()
            raise
        except TimeoutError:
            await server.close()
            raise PreloadError(f"the fork server did not finish importing {', '.join(modules)} "
                               f"within {timeout:g}s (does a module start a server when "
                               "imported?)") from None
        if "error" in hello:
            await server.close()
            raise PreloadError(hello["error"])
        asyncio.get_running_loop().add_reader(ours.fileno(), server._on_replies)
        return server

    def _on_replies(self) -> None:
        """Hand each reply to the oldest request waiting (called when readable)."""
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._lost(f"the fork server (pid {self.proc.pid}) exited; see the "
                           "supervisor's output")
                return
            if self._waiting:
                waiter = self._waiting.popleft()
                if not waiter.done():  # a cancelled caller's instance is swept as an orphan
                    waiter.set_result(json.loads(data))

    @property
    def alive(self) -> bool:
        """Neither its socket closed nor its process gone."""
        return self._gone is None and self.proc.poll() is None

    def discard(self) -> None:
        """Let go of a server that died: its socket, its exit status."""
        self._lost(self._gone or f"the fork server (pid {self.proc.pid}) exited")
        with contextlib.suppress(OSError):
            self.sock.close()
        self.proc.poll()

    def _lost(self, why: str) -> None:
        self._gone = why
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(PreloadError(why))

    async def _send(self, request: bytes, fds: list[int]) -> asyncio.Future[dict[str, object]]:
        """Send one request (waiting while the socket is full); the future of its reply."""
        loop = asyncio.get_running_loop()
        async with self._send_lock:  # the order of sends is the order of replies
            while True:
                if self._gone:
                    raise PreloadError(self._gone)
                try:
                    socket.send_fds(self.sock, [request], fds)
                    break
                except BlockingIOError:
                    writable: asyncio.Future[None] = loop.create_future()
                    loop.add_writer(self.sock.fileno(), pidfd.wake, writable)
                    try:
                        await writable
                    finally:
                        loop.remove_writer(self.sock.fileno())
                except OSError as e:
                    self._lost(f"the fork server is gone ({e})")
            reply: asyncio.Future[dict[str, object]] = loop.create_future()
            self._waiting.append(reply)
            return reply

    async def _reply(self) -> dict[str, object]:
        try:
            data = await asyncio.get_running_loop().sock_recv(self.sock, 1 << 16)
        except OSError:
            data = b""
        if not data:
            raise PreloadError(f"the fork server (pid {self.proc.pid}) exited; see the "
                               "supervisor's output")
        reply: dict[str, object] = json.loads(data)
        return reply

    async def fork(self, argv: Sequence[str], env: Mapping[str, str], cwd: str) -> Forked:
        """Start one instance; its output (stdout and stderr) comes on a pipe of ours.
        Returns once the instance is our child, in its own group, with its death signal."""
        read_fd, write_fd = os.pipe()
        sync_r, sync_w = os.pipe()
        try:
            answer = await self._send(preboot.request(argv, env, cwd), [write_fd, sync_w])
        except BaseException:
            os.close(read_fd)
            os.close(sync_r)
            raise
        finally:
            os.close(write_fd)
            os.close(sync_w)
        return await ForkServer.finish(answer, read_fd, sync_r)

    @staticmethod
    async def finish(answer: asyncio.Future[dict[str, object]], read_fd: int,
                     sync_r: int) -> Forked:
        """The instance of a request sent: its reply (``answer``), then its own word on
        the sync pipe; our ends of its pipes are ``read_fd`` and ``sync_r``."""
        try:
            reply = await answer
            if "error" in reply:
                raise PreloadError(str(reply["error"]))
            said = await _read_all(sync_r)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(sync_r)
        ok, _, pid = said.decode(errors="replace").partition(" ")
        if ok != "ok" or not pid.isdigit():
            os.close(read_fd)  # a zombie left, if any, is collected as an orphan
            raise PreloadError(said.decode(errors="replace") or "the instance died before "
                               "it was set up")
        return await adopt(int(pid), read_fd)

    async def close(self) -> None:
        """EOF on its socket ends it; then collect it."""
        self._lost("the fork server was closed")
        self.sock.close()
        try:
            await asyncio.wait_for(pidfd.exited(self.proc.pid), 5.0)
        except TimeoutError:
            self.proc.kill()
        self.proc.wait()


async def adopt(pid: int, read_fd: int, how: str | None = None) -> Forked:
    """Our child ``pid`` whose output comes on ``read_fd``, as a process to supervise
    (``how``: what the log's "started (...)" says; a fork server's child by default)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_LINE_LIMIT, loop=loop)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                 os.fdopen(read_fd, "rb", 0))
    return Forked(pid, reader, how)


async def _read_all(fd: int) -> bytes:
    """Everything written on the pipe ``fd`` until EOF (a few bytes), without blocking."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    data = b""
    while True:
        readable: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, pidfd.wake, readable)
        try:
            await readable
        finally:
            loop.remove_reader(fd)
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            continue
        if not chunk:
            return data
        data += chunk


def _close(early: preboot.Prespawned) -> None:
    os.close(early.out_fd)
    os.close(early.sync_fd)


def _dead(task: asyncio.Task[ForkServer] | None) -> int | None:
    """The pid of the fork server ``task`` started, if it ran and has died since."""
    if task is None or not task.done() or task.cancelled() or task.exception() is not None:
        return None
    server = task.result()
    return None if server.alive else server.proc.pid


class Preloader:
    """The fork servers of one supervisor, one per preloaded process type, started on
    the type's first instance start (concurrent starts share the one being started)."""

    def __init__(self, launched: Mapping[preboot.Key, preboot.Launched] | None = None,
                 asked: Mapping[str, preboot.Prespawned] | None = None,
                 timeout: float = READY_TIMEOUT) -> None:
        """``launched``: fork servers already launched (by :func:`preboot.begin`), whose
        greeting is awaited from here on (``timeout``); ``asked``: the instances already
        asked of them, by name, taken by the first :meth:`spawn` of that name."""
        loop = asyncio.get_running_loop()
        self._asked = dict(asked or {})
        self._answers = {name: loop.create_future() for name in self._asked}
        self._servers: dict[preboot.Key, asyncio.Task[ForkServer]] = {}
        #: Told (type, old pid, new pid) when a fork server that died is replaced: a
        #: killed fork server is started again on the type's next spawn.
        self.on_restart: Callable[[str, int, int], None] | None = None
        for key, found in (launched or {}).items():
            mine = sorted((a.position, name) for name, a in self._asked.items() if a.key == key)
            answers = [self._answers[name] for _, name in mine]
            self._servers[key] = self._greeting(found, key, timeout, answers)

    @staticmethod
    def _greeting(found: preboot.Launched, key: preboot.Key, timeout: float,
                  answers: list[asyncio.Future[dict[str, object]]]) -> asyncio.Task[ForkServer]:
        return asyncio.ensure_future(ForkServer.greet(found, key[3:], timeout, answers))

    def pids(self) -> set[int]:
        """The fork servers' pids (the supervisor's children it started itself)."""
        return {t.result().proc.pid for t in self._servers.values()
                if t.done() and not t.cancelled() and t.exception() is None}

    async def spawn(self, ptype: str, modules: Sequence[str], argv: Sequence[str],
                    env: Mapping[str, str], cwd: str, timeout: float,
                    name: str | None = None) -> Forked:
        """Start ``argv`` (``python -m ...``/``python FILE.py``) by forking the type's
        fork server; PreloadError (one line) when it cannot. An instance ``name`` already
        asked for with the same request (preboot) is taken over instead."""
        early = self._asked.pop(name, None) if name is not None else None
        if early is not None and name is not None:
            answer = self._answers.pop(name)
            if (early.argv, dict(early.env), early.cwd) == (tuple(argv), dict(env), cwd):
                try:
                    await asyncio.shield(self._servers[early.key])
                except BaseException:
                    _close(early)
                    raise
                return await ForkServer.finish(answer, early.out_fd, early.sync_fd)
            _close(early)  # asked otherwise: it exits when it finds its pipes closed
        for last in (False, True):  # a server that died under the request: once more
            server = await asyncio.shield(self._server(ptype, modules, argv, env, cwd, timeout))
            try:
                return await server.fork(argv, env, cwd)
            except PreloadError:
                if last or server.alive:
                    raise
        raise AssertionError("unreachable")

    def warm(self, ptype: str, modules: Sequence[str], argv: Sequence[str],
             env: Mapping[str, str], cwd: str, timeout: float) -> None:
        """Start the type's fork server now, so that its imports overlap the rest of the
        supervisor's start-up; a failure is reported by the first :meth:`spawn`."""
        with contextlib.suppress(PreloadError):
            self._server(ptype, modules, argv, env, cwd, timeout)

    def _server(self, ptype: str, modules: Sequence[str], argv: Sequence[str],
                env: Mapping[str, str], cwd: str, timeout: float) -> asyncio.Task[ForkServer]:
        """The (starting) fork server for ``argv``'s interpreter and ``sys.path[0]``."""
        found = preboot.server_key(modules, argv, env, cwd)
        if found is None:
            raise PreloadError(f"preload cannot start {' '.join(argv)!r} (not `python -m "
                               "MODULE` or `python FILE.py` once variables are expanded)")
        key, python, path0 = found
        task = self._servers.get(key)
        dead = _dead(task)
        if dead is not None and task is not None:
            task.result().discard()
            task = None
        if task is None or (task.done() and (task.cancelled() or task.exception())):
            try:
                launched = preboot.launch(python, path0, modules, env, cwd)
            except OSError as e:
                raise PreloadError(f"cannot start the fork server ({e})") from None
            task = self._servers[key] = asyncio.ensure_future(
                ForkServer.greet(launched, modules, timeout))
            if dead is not None and self.on_restart is not None:
                self.on_restart(ptype, dead, launched[0].pid)
        return task

    async def refresh(self) -> None:
        """Close every fork server: the next start imports the modules afresh (a reload
        is for code that changed)."""
        await self.close()

    async def close(self) -> None:
        for early in self._asked.values():
            _close(early)
        self._asked.clear()
        servers, self._servers = list(self._servers.values()), {}
        for task in servers:
            if not task.done():
                task.cancel()
            with contextlib.suppress(BaseException):
                await (await task).close()
