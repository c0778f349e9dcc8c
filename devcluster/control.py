"""The control plane: ``devcluster.Control`` over a unix socket in the state dir.

:class:`ControlServer` runs inside the supervisor and calls it; the supervisor never
calls back. :class:`ControlClient` is what the CLI, the Python API and scripts use.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from devcluster._proto import control_pb2 as pb
from devcluster._proto import control_pb2_grpc as pb_grpc
from devcluster.errors import DevclusterError, NoClusterError, UnknownInstanceError, UsageError
from devcluster.instance import DRAIN_DELAY, Instance
from devcluster.process import parse_signal
from devcluster.registry import Record, State

# sockaddr_un holds 108 bytes; pytest's tmp dirs easily pass that.
_MAX_SOCKET_PATH = 100
_DEFAULT_WAIT = 30.0


def bind_path(path: Path) -> Path:
    """Where to bind ``path``'s socket: itself, or a short path in a private tmp dir."""
    if len(str(path)) <= _MAX_SOCKET_PATH:
        return path
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
    return short_dir / f"{digest}.sock"


class _Servicer(pb_grpc.ControlServicer):
    def __init__(self, sup: Any) -> None:
        self.sup = sup

    def _instances(self, chosen: Iterable[Instance]) -> list[pb.Instance]:
        records = self.sup.registry.snapshot().records  # one read for all of them
        return [self._instance(i, records.get(i.name)) for i in chosen]

    def _instance(self, inst: Instance, rec: Record | None) -> pb.Instance:
        cpu, rss, uss = inst.stats()
        return pb.Instance(
            name=inst.name, service=inst.spec.service, state=inst.state.value,
            pid=inst.pid or 0, address=inst.address, weight=rec.weight if rec else 1,
            enabled=rec.enabled if rec else True, restarts=inst.restarts,
            started_at=inst.started_at or 0.0, cpu_percent=cpu, rss_bytes=rss, uss_bytes=uss,
            last_exit=inst.last_exit, process_type=inst.spec.process_type, port=inst.port)

    async def Ps(self, request: pb.PsRequest, context: grpc.aio.ServicerContext) -> pb.PsReply:
        return pb.PsReply(instances=self._instances(self.sup.instances.values()),
                          supervisor_pid=os.getpid(), procfile=str(self.sup.settings.procfile),
                          state_dir=str(self.sup.settings.state_dir))

    async def WaitReady(self, request: pb.WaitReadyRequest,
                        context: grpc.aio.ServicerContext) -> pb.PsReply:
        await self.sup.wait_settled(request.timeout or _DEFAULT_WAIT)
        return await self.Ps(pb.PsRequest(), context)

    async def Down(self, request: pb.DownRequest, context: grpc.aio.ServicerContext) -> pb.DownReply:
        asyncio.get_running_loop().create_task(
            # proto3 has no unset double: a negative grace means "the cluster's default".
            self.sup.shutdown(request.grace if request.grace >= 0 else None,
                              who=request.who or "control client"))
        await self.sup.done.wait()
        return pb.DownReply(instances=self._instances(self.sup.instances.values()))

    async def _act(self, request: pb.ActionRequest, context: grpc.aio.ServicerContext, verb: str,
                   act: Callable[[Instance], Awaitable[bool] | bool],
                   wanted: Callable[[Instance], bool] | None = None) -> pb.ActionReply:
        try:
            chosen = self.sup.select(request.names, request.all)
        except UnknownInstanceError as e:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(e))
        targets = "--all" if request.all else " ".join(request.names)
        self.sup.sink.system(f"{verb} {targets} (asked by {request.who or 'a control client'})")
        unchanged: list[str] = []

        async def one(inst: Instance) -> None:
            result = act(inst)
            changed = await result if asyncio.iscoroutine(result) else result
            if not changed:
                unchanged.append(inst.name)
            elif wanted is not None and request.wait:
                await inst.wait_until(wanted, request.timeout or _DEFAULT_WAIT)

        await asyncio.gather(*(one(i) for i in chosen))
        return pb.ActionReply(instances=self._instances(chosen), unchanged=unchanged)

    async def Kill(self, request: pb.ActionRequest, context: grpc.aio.ServicerContext) -> pb.ActionReply:
        try:
            sig = parse_signal(request.signal or "SIGKILL")
        except UsageError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return await self._act(request, context, f"kill ({sig.name})", lambda i: i.kill(sig))

    async def Stop(self, request: pb.ActionRequest, context: grpc.aio.ServicerContext) -> pb.ActionReply:
        return await self._act(request, context, "stop", lambda i: i.stop(drain=DRAIN_DELAY))

    async def Start(self, request: pb.ActionRequest, context: grpc.aio.ServicerContext) -> pb.ActionReply:
        return await self._act(request, context, "start", lambda i: i.start(by_command=True),
                               lambda i: i.settled)

    async def Restart(self, request: pb.ActionRequest,
                      context: grpc.aio.ServicerContext) -> pb.ActionReply:
        async def restart(inst: Instance) -> bool:
            await inst.stop(drain=DRAIN_DELAY)
            return inst.start(by_command=True)

        return await self._act(request, context, "restart", restart, lambda i: i.settled)

    async def Pause(self, request: pb.ActionRequest, context: grpc.aio.ServicerContext) -> pb.ActionReply:
        return await self._act(request, context, "pause", lambda i: i.pause())

    async def Resume(self, request: pb.ActionRequest,
                     context: grpc.aio.ServicerContext) -> pb.ActionReply:
        return await self._act(request, context, "resume", lambda i: i.resume())

    async def Scale(self, request: pb.ScaleRequest, context: grpc.aio.ServicerContext) -> pb.ActionReply:
        counts = dict(request.counts)
        if any(n < 0 for n in counts.values()):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "scale counts must be 0 or more")
        self.sup.sink.system(f"scale {counts} (asked by {request.who or 'a control client'})")
        try:
            changed = await self.sup.scale(counts)
        except UnknownInstanceError as e:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"unknown process type {e.name!r}; types: {', '.join(e.known)}")
        if request.wait:
            for inst in changed:
                if inst.name in self.sup.instances:
                    await inst.wait_until(lambda i: i.settled, request.timeout or _DEFAULT_WAIT)
        mine = [i for i in self.sup.instances.values() if i.spec.process_type in counts]
        return pb.ActionReply(instances=self._instances(mine))


class ControlServer:
    """Serves ``devcluster.Control`` on the state dir's socket (0600, dir 0700)."""

    def __init__(self, sup: Any, path: Path) -> None:
        self.path = path
        self.bound = bind_path(path)
        self.server = grpc.aio.server()
        pb_grpc.add_ControlServicer_to_server(_Servicer(sup), self.server)

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
        if self.bound != self.path:
            self.path.symlink_to(self.bound)

    async def stop(self) -> None:
        await self.server.stop(1.0)
        for p in {self.path, self.bound}:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def _who() -> str:
    return f"pid {os.getpid()}"


class ControlClient:
    """Talks to the supervisor of ``state_dir``; raises NoClusterError when none runs.

    >>> ControlClient(Path(".devcluster")).ps()   # doctest: +SKIP
    """

    def __init__(self, state_dir: Path, timeout: float = 10.0) -> None:
        from devcluster.statedir import running_pid, socket_path

        self.state_dir = state_dir
        self.timeout = timeout
        path = socket_path(state_dir)
        if running_pid(state_dir) is None or not (path.exists() or path.is_symlink()):
            raise NoClusterError(
                f"no cluster running in {state_dir}; start one with `devcluster up`")
        target = os.path.realpath(path)
        try:
            owner = os.stat(target).st_uid
        except FileNotFoundError:
            raise NoClusterError(f"no cluster running in {state_dir} (its control socket "
                                 "is gone); start one with `devcluster up`") from None
        if owner != os.getuid():
            # Whoever owns the socket gets our commands: never talk to someone else's.
            raise DevclusterError(f"control socket {target} belongs to uid {owner}, not you "
                                  f"(uid {os.getuid()}); refusing to use it")
        self.channel = grpc.insecure_channel(f"unix:{target}")
        self.stub = pb_grpc.ControlStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        try:
            return getattr(self.stub, method)(request, timeout=timeout or self.timeout)
        except grpc.RpcError as e:
            code = e.code() if isinstance(e, grpc.Call) else None
            details = e.details() if isinstance(e, grpc.Call) else str(e)
            if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise UsageError(details) from None
            if code == grpc.StatusCode.UNAVAILABLE:
                raise NoClusterError(f"no cluster answers in {self.state_dir} ({details}); "
                                     "start one with `devcluster up`") from None
            raise DevclusterError(f"control call {method} failed: {details}") from None

    def ps(self) -> pb.PsReply:
        return self._call("Ps", pb.PsRequest())

    def wait_ready(self, timeout: float) -> pb.PsReply:
        return self._call("WaitReady", pb.WaitReadyRequest(timeout=timeout), timeout + 5)

    def down(self, grace: float | None = None) -> pb.DownReply:
        wait = (5.0 if grace is None else grace) * 3 + 30
        request = pb.DownRequest(grace=-1.0 if grace is None else grace, who=_who())
        return self._call("Down", request, wait)

    def act(self, verb: str, names: list[str], all_: bool = False, signal: str = "",
            wait: bool = True, timeout: float = _DEFAULT_WAIT) -> pb.ActionReply:
        """``verb`` is one of kill, stop, start, restart, pause, resume."""
        request = pb.ActionRequest(names=names, all=all_, signal=signal, wait=wait,
                                   timeout=timeout, who=_who())
        return self._call(verb.capitalize(), request, timeout + 30)

    def scale(self, counts: dict[str, int], wait: bool = True,
              timeout: float = _DEFAULT_WAIT) -> pb.ActionReply:
        request = pb.ScaleRequest(counts=counts, wait=wait, timeout=timeout, who=_who())
        return self._call("Scale", request, timeout + 30)


def as_dict(inst: pb.Instance) -> dict[str, Any]:
    """The JSON shape of one instance (``ps --json``)."""
    import time

    running = inst.state in {s.value for s in State if s.running}
    return {
        "name": inst.name, "service": inst.service, "process_type": inst.process_type,
        "state": inst.state, "pid": inst.pid or None, "address": inst.address or None,
        "port": inst.port or None, "weight": inst.weight, "enabled": inst.enabled,
        "restarts": inst.restarts,
        "uptime_s": round(time.time() - inst.started_at, 3) if running and inst.started_at else 0.0,
        "cpu_percent": round(inst.cpu_percent, 1), "rss_bytes": inst.rss_bytes,
        "uss_bytes": inst.uss_bytes, "last_exit": inst.last_exit or None,
        "started_at": inst.started_at or None,
    }
