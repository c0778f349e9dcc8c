"""The control plane's client: what ``ps``, ``kill``, ``scale``, ``down``, ``reload``...
send to the supervisor of a state dir over its unix socket.

Only grpc's sync API and the generated stubs: the commands that talk to the supervisor
import this, not the aio server (:mod:`devcluster.control.server`), which only the
daemon needs (issue 25: a command pays for what it uses).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc

from devcluster import defaults
from devcluster._proto import control_pb2 as pb
from devcluster._proto import control_pb2_grpc as pb_grpc
from devcluster.errors import DevclusterError, NoClusterError, UnknownInstanceError, UsageError
from devcluster.schema import InstanceInfo, uptime

R = TypeVar("R")


def from_pb(inst: pb.Instance, now: float | None = None) -> InstanceInfo:
    """An instance off the wire, in the one schema (uptime as of ``now``)."""
    def opt(name: str) -> Any:
        return getattr(inst, name) if inst.HasField(name) else None

    return InstanceInfo(
        name=inst.name, service=inst.service, process_type=inst.process_type,
        state=inst.state, pid=opt("pid"), address=opt("address"), port=opt("port"),
        weight=opt("weight"), enabled=opt("enabled"), restarts=inst.restarts,
        uptime_s=uptime(inst.state, opt("started_at"), now), cpu_percent=opt("cpu_percent"),
        rss_bytes=opt("rss_bytes"), uss_bytes=opt("uss_bytes"), last_exit=opt("last_exit"),
        started_at=opt("started_at"),
        # A map has no presence: the metadata is known when the registry was read.
        metadata=dict(inst.metadata) if inst.HasField("weight") else None,
        ready=opt("ready"), fault=opt("fault"))


def reload_result_dict(result: pb.ReloadResult) -> dict[str, Any]:
    """The JSON shape of a reload (``reload --json``, ``Cluster.reload``)."""
    def step(s: pb.ReloadStep) -> dict[str, Any]:
        return {"name": s.name, "old_pid": s.old_pid if s.HasField("old_pid") else None,
                "new_pid": s.new_pid if s.HasField("new_pid") else None,
                "old_address": s.old_address, "new_address": s.new_address,
                "same_port": s.same_port, "ready_ms": s.ready_ms, "total_ms": s.total_ms}

    failed = result.failed if result.HasField("failed") else None
    error = result.error if result.HasField("error") else None
    return {"ok": failed is None and error is None, "reloaded": [step(s) for s in result.reloaded],
            "started": list(result.started), "stopped": list(result.stopped),
            "unchanged": list(result.unchanged), "failed": failed, "error": error,
            "usage_error": result.usage_error, "log": list(result.log),
            "instances": [as_dict(i) for i in result.instances]}

def _unknown(message: str) -> UnknownInstanceError:
    error = UnknownInstanceError.__new__(UnknownInstanceError)
    Exception.__init__(error, message)
    return error


#: How long a client waits for the socket of a supervisor that holds the lock but is
#: still starting (it binds the socket after cleaning stale state, ~0.1-0.5 s).
_STARTING_WAIT = 10.0


def _wait_for_socket(path: Path, pid: int, state_dir: Path) -> None:
    """A supervisor is starting (lock held, no socket yet): wait for its socket, so
    ``down`` right after ``up -d`` stops it instead of saying "no cluster"."""
    import time

    from devcluster.statedir import running_pid

    deadline = time.monotonic() + _STARTING_WAIT
    # Polls: the socket's creation in another process gives us no event to wait on. The
    # pid changes once: `up -d` locks the dir, then its daemon takes the lock over.
    while not path.exists() and running_pid(state_dir) is not None \
            and time.monotonic() < deadline:
        time.sleep(0.02)


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
        pid = running_pid(state_dir)
        if pid is not None and not path.exists():
            _wait_for_socket(path, pid, state_dir)
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
        # The generated stub is untyped; _call and _stream check what its methods return.
        self.stub: object = cast(Callable[[grpc.Channel], object], pb_grpc.ControlStub)(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, request: object, reply: type[R],
              timeout: float | None = None) -> R:
        """One unary call of the untyped stub, its reply checked to be a ``reply``."""
        try:
            answer = getattr(self.stub, method)(request, timeout=timeout or self.timeout)
        except grpc.RpcError as e:
            raise _mapped(e, method, self.state_dir) from None
        if not isinstance(answer, reply):
            raise DevclusterError(f"control call {method} answered a {type(answer).__name__}, "
                                  f"not a {reply.__name__}")
        return answer

    def ps(self) -> pb.PsReply:
        """Every instance (``.instances``) and the cluster's Procfile (``.procfile``)."""
        return self._call("Ps", pb.PsRequest(), pb.PsReply)

    def wait_ready(self, timeout: float) -> pb.PsReply:
        """:meth:`ps` once every instance settled (or ``timeout`` passed)."""
        return self._call("WaitReady", pb.WaitReadyRequest(timeout=timeout), pb.PsReply, timeout + 5)

    def down(self, grace: float | None = None) -> pb.DownReply:
        wait = (defaults.GRACE if grace is None else grace) * 3 + 30
        request = pb.DownRequest(grace=-1.0 if grace is None else grace, who=_who())
        return self._call("Down", request, pb.DownReply, wait)

    def act(self, verb: str, names: list[str], all_: bool = False, signal: str = "",
            wait: bool = True, timeout: float = defaults.CONTROL_WAIT,
            who: str | None = None) -> pb.ActionReply:
        """``verb`` is one of kill, stop, start, restart, pause, resume; ``who`` names the
        asker in the cluster's timeline (default: this process)."""
        request = pb.ActionRequest(names=names, all=all_, signal=signal, wait=wait,
                                   timeout=timeout, who=who or _who())
        return self._call(verb.capitalize(), request, pb.ActionReply, timeout + 30)

    def reload(self, names: Sequence[str] = (), all_: bool = False,
               on_progress: Callable[[str, str, str], None] | None = None) -> dict[str, Any]:
        """Rolling reload; ``on_progress(kind, instance, text)`` for each step as it goes.
        Returns :func:`reload_result_dict` (check ``ok``)."""
        request = pb.ReloadRequest(names=list(names), all=all_, who=_who())
        for event in self._stream("Reload", request):
            if event.HasField("result"):
                return reload_result_dict(event.result)
            if on_progress is not None:
                on_progress(event.kind, event.instance, event.text)
        raise DevclusterError("the supervisor ended the reload without a result; see "
                              "`devcluster logs`")

    def _stream(self, method: str, request: object) -> Iterator[pb.ReloadEvent]:
        """A server stream (no deadline: a rolling reload takes as long as it takes),
        its errors mapped as :meth:`_call` maps them."""
        try:
            for event in getattr(self.stub, method)(request):
                if not isinstance(event, pb.ReloadEvent):
                    raise DevclusterError(f"control call {method} streamed a "
                                          f"{type(event).__name__}, not a ReloadEvent")
                yield event
        except grpc.RpcError as e:
            raise _mapped(e, method, self.state_dir) from None

    def scale(self, counts: dict[str, int], wait: bool = True,
              timeout: float = defaults.CONTROL_WAIT, who: str | None = None) -> pb.ActionReply:
        request = pb.ScaleRequest(counts=counts, wait=wait, timeout=timeout, who=who or _who())
        return self._call("Scale", request, pb.ActionReply, timeout + 30)


def _mapped(e: grpc.RpcError, method: str, state_dir: Path) -> DevclusterError:
    """A control call's gRPC error as the DevclusterError it stands for."""
    code = e.code() if isinstance(e, grpc.Call) else None
    details = e.details() if isinstance(e, grpc.Call) else str(e)
    if code == grpc.StatusCode.NOT_FOUND:  # a well-formed name the cluster lacks
        return _unknown(details)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return UsageError(details)
    if code == grpc.StatusCode.FAILED_PRECONDITION:  # the supervisor's own message
        return DevclusterError(details)
    if code == grpc.StatusCode.UNAVAILABLE:
        return NoClusterError(f"no cluster answers in {state_dir} ({details}); "
                              "start one with `devcluster up`")
    return DevclusterError(f"control call {method} failed: {details}")


def as_dict(inst: pb.Instance) -> dict[str, Any]:
    """The JSON shape of one instance (``ps --json``): :class:`InstanceInfo`'s."""
    return from_pb(inst).to_dict()
