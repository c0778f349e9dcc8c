"""The control plane's server: ``devcluster.Control`` over a unix socket in the state dir.

:class:`ControlServer` runs in the supervisor's process (grpc.aio, asyncio) and calls it
through the :class:`Supervised` protocol; the supervisor never imports this module (the
daemon wires them), and no command does: they use :mod:`devcluster.control.client`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import grpc
import grpc.aio

from devcluster import defaults
from devcluster._proto import control_pb2 as pb
from devcluster._proto import control_pb2_grpc as pb_grpc
from devcluster.errors import DevclusterError, UnknownInstanceError, UsageError
from devcluster.schema import InstanceInfo
from devcluster.statedir import Layout

# sockaddr_un holds 108 bytes; pytest's tmp dirs easily pass that.
_MAX_SOCKET_PATH = 100
T = TypeVar("T")


def bind_path(where: Layout) -> Path:
    """Where to bind the state dir's socket: a name of this run beside it
    (``private/control-PID.sock``, ``private/control.sock`` a symlink to it), or a short
    path in a private tmp dir.

    grpc unlinks its socket's path when the server stops, whoever's file is there by
    then: a name of our own means an old supervisor never deletes a newer run's socket.
    """
    path = where.socket
    own = where.bound_socket(os.getpid())
    if len(str(own)) <= _MAX_SOCKET_PATH:
        return own
    base = tempfile.gettempdir()
    if len(base) > 40:  # a $TMPDIR that long leaves no room for the socket's name
        base = "/tmp"
    short_dir = Path(base) / f"devcluster-{os.getuid()}"
    short_dir.mkdir(mode=0o700, exist_ok=True)
    st = short_dir.lstat()
    if not short_dir.is_dir() or short_dir.is_symlink() or st.st_uid != os.getuid() \
            or st.st_mode & 0o077:
        # Someone else made (or opened up) that name: use a fresh private dir instead.
        short_dir = Path(tempfile.mkdtemp(prefix="devcluster-", dir=base))
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]
    return short_dir / f"{digest}-{os.getpid()}.sock"



class ReloadProgress(Protocol):
    """One line of a reload's progress (devcluster.supervisor.reload.Progress)."""

    kind: str
    instance: str
    text: str


class ReloadOutcome(Protocol):
    """What a reload did (devcluster.supervisor.reload.ReloadResult)."""

    def to_dict(self) -> dict[str, Any]: ...


class Supervised(Protocol):
    """What the control plane needs of a supervisor (:class:`devcluster.supervisor.runtime.Supervisor`
    satisfies it; :mod:`devcluster.daemon` hands one over). Verbs raise
    UnknownInstanceError for a name the cluster does not have, UsageError for a bad value.
    """

    @property
    def procfile(self) -> Path: ...

    @property
    def state_dir(self) -> Path: ...

    async def infos(self) -> list[InstanceInfo]: ...

    async def act(self, verb: str, names: Sequence[str], all_: bool = False, *,
                  signal_name: str = "", wait: bool = False, timeout: float = ...,
                  who: str = "") -> tuple[list[InstanceInfo], list[str]]: ...

    async def scale(self, counts: dict[str, int], *, wait: bool = False, timeout: float = ...,
                    who: str = "") -> list[InstanceInfo]: ...

    async def wait_settled(self, timeout: float) -> bool: ...

    async def down(self, grace: float | None = None, who: str = "") -> list[InstanceInfo]: ...

    async def reload(self, names: Sequence[str] = (), all_: bool = False, *, who: str = "",
                     progress: Callable[[Any], None] | None = None) -> ReloadOutcome: ...


def to_pb(info: InstanceInfo) -> pb.Instance:
    """The schema's instance on the wire (an unknown value is an unset optional field)."""
    values = {k: v for k, v in info.to_dict().items() if v is not None and k != "uptime_s"}
    return pb.Instance(**values)



class _Servicer(pb_grpc.ControlServicer):
    def __init__(self, sup: Supervised) -> None:
        self.sup = sup

    async def _aborting(self, context: grpc.aio.ServicerContext, call: Awaitable[T]) -> T:
        """Await ``call``; a user mistake becomes the gRPC status the client maps back."""
        try:
            return await call
        except UnknownInstanceError as e:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(e))
        except UsageError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except DevclusterError as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        raise AssertionError("unreachable: abort raises")

    async def Ps(self, request: pb.PsRequest, context: grpc.aio.ServicerContext) -> pb.PsReply:
        infos = await self.sup.infos()
        return pb.PsReply(instances=[to_pb(i) for i in infos], supervisor_pid=os.getpid(),
                          procfile=str(self.sup.procfile), state_dir=str(self.sup.state_dir))

    async def WaitReady(self, request: pb.WaitReadyRequest,
                        context: grpc.aio.ServicerContext) -> pb.PsReply:
        await self.sup.wait_settled(request.timeout or defaults.CONTROL_WAIT)
        return await self.Ps(pb.PsRequest(), context)

    async def Down(self, request: pb.DownRequest, context: grpc.aio.ServicerContext) -> pb.DownReply:
        # proto3 has no unset double: a negative grace means "the cluster's default".
        infos = await self.sup.down(request.grace if request.grace >= 0 else None,
                                    who=request.who or "control client")
        return pb.DownReply(instances=[to_pb(i) for i in infos])

    async def _act(self, request: pb.ActionRequest, context: grpc.aio.ServicerContext,
                   verb: str) -> pb.ActionReply:
        infos, unchanged = await self._aborting(context, self.sup.act(
            verb, list(request.names), request.all, signal_name=request.signal,
            wait=request.wait, timeout=request.timeout or defaults.CONTROL_WAIT,
            who=request.who))
        return pb.ActionReply(instances=[to_pb(i) for i in infos], unchanged=unchanged)

    async def Kill(self, request: pb.ActionRequest, context: grpc.aio.ServicerContext) -> pb.ActionReply:
        return await self._act(request, context, "kill")

    async def Stop(self, request: pb.ActionRequest, context: grpc.aio.ServicerContext) -> pb.ActionReply:
        return await self._act(request, context, "stop")

    async def Start(self, request: pb.ActionRequest, context: grpc.aio.ServicerContext) -> pb.ActionReply:
        return await self._act(request, context, "start")

    async def Restart(self, request: pb.ActionRequest,
                      context: grpc.aio.ServicerContext) -> pb.ActionReply:
        return await self._act(request, context, "restart")

    async def Pause(self, request: pb.ActionRequest, context: grpc.aio.ServicerContext) -> pb.ActionReply:
        return await self._act(request, context, "pause")

    async def Resume(self, request: pb.ActionRequest,
                     context: grpc.aio.ServicerContext) -> pb.ActionReply:
        return await self._act(request, context, "resume")

    async def Scale(self, request: pb.ScaleRequest, context: grpc.aio.ServicerContext) -> pb.ActionReply:
        counts = dict(request.counts)
        if any(n < 0 for n in counts.values()):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "scale counts must be 0 or more")
        try:
            infos = await self.sup.scale(counts, wait=request.wait,
                                         timeout=request.timeout or defaults.CONTROL_WAIT,
                                         who=request.who)
        except UnknownInstanceError as e:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"unknown process type {e.name!r}; types: {', '.join(e.known)}")
        return pb.ActionReply(instances=[to_pb(i) for i in infos])


    async def Reload(self, request: pb.ReloadRequest,
                     context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ReloadEvent]:
        events: asyncio.Queue[ReloadProgress] = asyncio.Queue()
        # Its own task: the reload goes on (shielded in the supervisor) if we are cancelled.
        task = asyncio.ensure_future(self.sup.reload(
            list(request.names), request.all, who=request.who or "control client",
            progress=events.put_nowait))
        while not task.done() or not events.empty():
            getter = asyncio.ensure_future(events.get())
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                continue
            event = getter.result()
            yield pb.ReloadEvent(kind=event.kind, instance=event.instance, text=event.text)
        outcome = await self._aborting(context, task)
        result = reload_result_to_pb(outcome.to_dict(), await self.sup.infos())
        yield pb.ReloadEvent(kind="result", text="", result=result)


def reload_result_to_pb(data: dict[str, Any], infos: Sequence[InstanceInfo]) -> pb.ReloadResult:
    """A reload's result dict on the wire (with every instance as it is after it)."""
    steps = [pb.ReloadStep(**{k: v for k, v in step.items() if v is not None})
             for step in data["reloaded"]]
    return pb.ReloadResult(
        reloaded=steps, started=data["started"], stopped=data["stopped"],
        unchanged=data["unchanged"], failed=data["failed"], error=data["error"],
        usage_error=data["usage_error"], log=data["log"], instances=[to_pb(i) for i in infos])



class ControlServer:
    """Serves ``devcluster.Control`` on the state dir's socket (0600, dir 0700)."""

    def __init__(self, sup: Supervised, where: Layout) -> None:
        self.path = where.socket
        self.bound = bind_path(where)
        self._servicer = _Servicer(sup)
        self.server = self._new_server()
        self._inode: int | None = None

    def _new_server(self) -> grpc.aio.Server:
        server = grpc.aio.server()
        # The generated registration is untyped: called through its known signature.
        register = cast(Callable[[_Servicer, grpc.aio.Server], None],
                        pb_grpc.add_ControlServicer_to_server)
        register(self._servicer, server)
        return server

    def _leads_to_ours(self, path: Path) -> bool:
        try:
            return os.stat(path).st_ino == self._inode
        except OSError:
            return False

    def missing(self) -> bool:
        """The socket's path no longer leads to our socket (its directory was deleted)."""
        return not self._leads_to_ours(self.path)

    async def restore(self) -> None:
        """Make the socket reachable again: re-link it, or bind a fresh server."""
        if not self._leads_to_ours(self.bound):
            # Stop the old server first: its shutdown unlinks the bound path.
            old, self.server = self.server, self._new_server()
            await old.stop(0.5)
            await self.start()
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._link()

    def _link(self) -> None:
        target = self.bound.name if self.bound.parent == self.path.parent else self.bound
        self.path.symlink_to(target)

    async def start(self) -> None:
        for p in {self.path, self.bound}:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()  # we hold the state dir's lock: any socket here is dead
        old = os.umask(0o177)
        try:
            self.server.add_insecure_port(f"unix:{self.bound}")
            await self.server.start()
        finally:
            os.umask(old)
        os.chmod(self.bound, 0o600)
        self._inode = os.stat(self.bound).st_ino
        self._link()

    async def stop(self, remove: bool = True) -> None:
        """Stop serving (grpc unlinks our own bound socket); remove the link to it if it
        is still ours (``remove``): never another run's."""
        ours = remove and self._leads_to_ours(self.path)
        await self.server.stop(1.0)
        with contextlib.suppress(OSError):
            if ours:
                self.path.unlink()
            self.bound.unlink()

