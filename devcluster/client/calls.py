"""What a balanced call tells its caller: CallInfo, served_by, the balancer's errors.

>>> reply, call = stub.SayHello.with_call(request, timeout=1)   # doctest: +SKIP
>>> served_by(call)                                             # doctest: +SKIP
'server2'
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
import grpc.aio

from devcluster.errors import DevclusterError
from devcluster.server import INSTANCE_HEADER


@dataclass(frozen=True)
class CallInfo:
    """What happened to one call through a balanced channel (given to ``on_call``).

    ``instance`` is the name the server gave in its ``devcluster-instance`` header,
    else the registry name of the instance called; ``retried`` lists the attempts
    that failed before the last one, as ``(instance, code name)``; ``message`` is
    the error details for a failed call and empty for a successful one;
    ``response`` is the reply message of a successful unary call.

    >>> CallInfo(1, "server1", "127.0.0.1:50051", True, "OK", 0.7).retried
    []
    """

    seq: int
    instance: str
    address: str
    ok: bool
    code: str
    latency_ms: float
    retried: list[tuple[str, str]] = field(default_factory=list)
    message: str = ""
    response: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (without the response)."""
        return {
            "seq": self.seq, "instance": self.instance, "address": self.address,
            "ok": self.ok, "code": self.code, "latency_ms": round(self.latency_ms, 3),
            "retried": [list(r) for r in self.retried], "message": self.message,
        }


class BalancedRpcError(grpc.aio.AioRpcError, grpc.Call, DevclusterError):  # type: ignore[misc]
    """A call failed in the balancer itself, before or between attempts.

    It is a ``grpc.RpcError`` and a ``grpc.Call`` (``code()``, ``details()``) for the
    sync API, a ``grpc.aio.AioRpcError`` for asyncio, and a DevclusterError for the CLI.
    """

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        grpc.aio.AioRpcError.__init__(self, code, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                      details)

    def __str__(self) -> str:
        return f"{self.code().name}: {self.details()}"

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float | None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False


class NoUsableInstanceError(BalancedRpcError):
    """No instance could take a call before its deadline: ``UNAVAILABLE``.

    Its details name every known instance and why it cannot serve, e.g.
    ``no usable instance of service 'server': server1 killed, server2 disabled``.
    """

    def __init__(self, details: str) -> None:
        super().__init__(grpc.StatusCode.UNAVAILABLE, details)


def header_instance(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The ``devcluster-instance`` value in ``metadata``, if any."""
    for key, value in metadata or ():
        if key == INSTANCE_HEADER:
            return value if isinstance(value, str) else value.decode()
    return None


def served_by(call: Any) -> str | None:
    """Which instance served ``call`` (the second item of ``with_call``).

    The server's ``devcluster-instance`` header, else the address the balanced
    channel sent the call to, else None.

    >>> reply, call = stub.SayHello.with_call(request)  # doctest: +SKIP
    >>> served_by(call)                                  # doctest: +SKIP
    'server2'
    """
    name = header_instance(call.initial_metadata())
    return name if name is not None else getattr(call, "address", None)


class GrpcCall(Protocol):
    """The ``grpc.Call`` methods devcluster uses, typed (grpc ships no types)."""

    def initial_metadata(self) -> Any: ...
    def trailing_metadata(self) -> Any: ...
    def code(self) -> grpc.StatusCode: ...
    def details(self) -> str: ...
    def is_active(self) -> bool: ...
    def time_remaining(self) -> float | None: ...
    def cancel(self) -> bool: ...
    def add_callback(self, callback: Callable[[], None]) -> bool: ...


class BalancedCall(grpc.Call):  # type: ignore[misc]  # grpc ships no types
    """The ``grpc.Call`` of a finished balanced call, plus where it went.

    ``instance`` is the registry name of the instance called and ``address`` its
    address; everything else is the sub-channel's call.
    """

    __slots__ = ("_call", "address", "instance")

    def __init__(self, call: grpc.Call, instance: str, address: str) -> None:
        self._call: GrpcCall = call
        self.instance = instance
        self.address = address

    def __repr__(self) -> str:
        return f"<BalancedCall {self.instance} {self.address} {self._call.code()}>"

    def initial_metadata(self) -> Any:
        return self._call.initial_metadata()

    def trailing_metadata(self) -> Any:
        return self._call.trailing_metadata()

    def code(self) -> grpc.StatusCode:
        return self._call.code()

    def details(self) -> str:
        return self._call.details()

    def is_active(self) -> bool:
        return self._call.is_active()

    def time_remaining(self) -> float | None:
        return self._call.time_remaining()

    def cancel(self) -> bool:
        return self._call.cancel()

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return self._call.add_callback(callback)
