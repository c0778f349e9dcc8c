"""Both balanced channels behind one test-facing API, so one test body checks both.

``open_client(driver, service, registry, **options)`` gives a :class:`Client`
over a :class:`BalancedChannel` (``driver="sync"``) or an
:class:`AioBalancedChannel` run on an event loop in a thread (``"aio"``). Test
code stays plain and blocking either way: ``say()`` makes one unary call,
``streams()`` one call of each streaming shape, ``load()`` keeps calls in flight
in the background. Every call's CallInfo is recorded with the time it arrived.

>>> with open_client("aio", "server", registry) as client:     # doctest: +SKIP
...     client.say()
('Hello world from server1', 'server1')
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import grpc
import pytest

from devcluster._proto import helloworld_pb2, helloworld_pb2_grpc
from devcluster.client import AioBalancedChannel, BalancedChannel, CallInfo, served_by
from devcluster.client.calls import header_instance

T = TypeVar("T")

#: The drivers every behaviour test runs against.
DRIVERS = ("sync", "aio")

#: ``pytestmark = BOTH`` runs every test of a module against both drivers.
BOTH = pytest.mark.parametrize("driver", DRIVERS)


def req(name: str = "world") -> helloworld_pb2.HelloRequest:
    return helloworld_pb2.HelloRequest(name=name)


class Client:
    """One balanced channel of either flavour, driven from plain blocking code."""

    driver = ""

    def __init__(self) -> None:
        self.calls: list[tuple[float, CallInfo]] = []
        self.channel: Any = None

    def record(self, info: CallInfo) -> None:
        """The channel's ``on_call``."""
        self.calls.append((time.monotonic(), info))

    @property
    def infos(self) -> list[CallInfo]:
        return [info for _, info in list(self.calls)]

    def served(self, name: str, after: float = 0.0) -> int:
        """Calls ``name`` answered that were reported after ``after``."""
        return sum(1 for t, i in list(self.calls) if i.ok and i.instance == name and t > after)

    def sent_and_served(self, name: str, after: float) -> int:
        """Calls ``name`` answered that started after ``after`` (a reply already on its way
        when ``after`` came is reported later, but was not served after it)."""
        return sum(1 for t, i in list(self.calls)
                   if i.ok and i.instance == name and t - i.latency_ms / 1000 > after)

    def failed(self, after: float = 0.0) -> list[CallInfo]:
        return [i for t, i in list(self.calls) if not i.ok and t > after]

    def instance(self, name: str) -> Any:
        return next(i for i in self.channel.balancer.instances() if i.name == name)

    def shares(self, n: int, timeout: float = 2.0) -> Counter[str]:
        """``n`` calls one after the other: who served how many."""
        return Counter(self.order(n, timeout))

    def order(self, n: int, timeout: float = 2.0) -> list[str]:
        """``n`` calls one after the other: who served each, in order."""
        return [self.say(timeout=timeout)[1] or "?" for _ in range(n)]

    def say(self, name: str = "world", timeout: float | None = 2.0,
            metadata: Any = None) -> tuple[str, str | None]:
        """One SayHello: ``(reply text, instance that served it)``; raises grpc.RpcError."""
        raise NotImplementedError

    def streams(self) -> tuple[list[bytes], bytes, list[bytes]]:
        """One call of each streaming shape on the in-process echo service."""
        raise NotImplementedError

    def load(self, concurrency: int = 1, timeout: float = 1.0,
             pause: float = 0.001) -> contextlib.AbstractContextManager[None]:
        """Keep ``concurrency`` callers calling until the block ends (failures recorded)."""
        raise NotImplementedError


class SyncClient(Client):
    driver = "sync"

    def __init__(self, service: str | None, registry: Any, **options: Any) -> None:
        super().__init__()
        self.channel = BalancedChannel(service, registry, on_call=self.record, **options)
        self.stub = helloworld_pb2_grpc.GreeterStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def say(self, name: str = "world", timeout: float | None = 2.0,
            metadata: Any = None) -> tuple[str, str | None]:
        reply, call = self.stub.SayHello.with_call(req(name), timeout=timeout, metadata=metadata)
        return reply.message, served_by(call)

    def streams(self) -> tuple[list[bytes], bytes, list[bytes]]:
        ch = self.channel
        return (list(ch.unary_stream("/test.Echo/Split")(b"abc", timeout=2)),
                ch.stream_unary("/test.Echo/Join")(iter([b"a", b"b"]), timeout=2),
                list(ch.stream_stream("/test.Echo/Each")(iter([b"a", b"b"]), timeout=2)))

    @contextlib.contextmanager
    def load(self, concurrency: int = 1, timeout: float = 1.0,
             pause: float = 0.001) -> Iterator[None]:
        stop = threading.Event()

        def caller() -> None:
            while not stop.is_set():
                with contextlib.suppress(grpc.RpcError):  # recorded by on_call
                    self.stub.SayHello(req(), timeout=timeout)
                if pause:
                    stop.wait(pause)

        threads = [threading.Thread(target=caller, daemon=True) for _ in range(concurrency)]
        for t in threads:
            t.start()
        try:
            yield
        finally:
            stop.set()
            for t in threads:
                t.join(5)


class AioClient(Client):
    driver = "aio"

    def __init__(self, service: str | None, registry: Any, **options: Any) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

        async def make() -> AioBalancedChannel:
            return AioBalancedChannel(service, registry, on_call=self.record, **options)

        try:
            self.channel = self.run(make())
        except BaseException:
            self._stop_loop()
            raise
        self.stub = helloworld_pb2_grpc.GreeterStub(self.channel)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coro`` on the channel's loop; its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()

    def close(self) -> None:
        try:
            self.run(self.channel.close())
        finally:
            self._stop_loop()

    def say(self, name: str = "world", timeout: float | None = 2.0,
            metadata: Any = None) -> tuple[str, str | None]:
        async def one() -> tuple[str, str | None]:
            call = self.stub.SayHello(req(name), timeout=timeout, metadata=metadata)
            reply = await call
            return reply.message, header_instance(await call.initial_metadata()) or call.instance

        return self.run(one())

    def streams(self) -> tuple[list[bytes], bytes, list[bytes]]:
        ch = self.channel

        async def each() -> tuple[list[bytes], bytes, list[bytes]]:
            split = [m async for m in ch.unary_stream("/test.Echo/Split")(b"abc", timeout=2)]
            joined = await ch.stream_unary("/test.Echo/Join")(iter([b"a", b"b"]), timeout=2)
            upper = [m async for m in ch.stream_stream("/test.Echo/Each")(
                iter([b"a", b"b"]), timeout=2)]
            return split, joined, upper

        return self.run(each())

    @contextlib.contextmanager
    def load(self, concurrency: int = 1, timeout: float = 1.0,
             pause: float = 0.001) -> Iterator[None]:
        stop = threading.Event()

        async def caller() -> None:
            while not stop.is_set():
                with contextlib.suppress(grpc.RpcError):  # recorded by on_call
                    await self.stub.SayHello(req(), timeout=timeout)
                await asyncio.sleep(pause)

        async def callers() -> None:
            await asyncio.gather(*(caller() for _ in range(concurrency)))

        running = asyncio.run_coroutine_threadsafe(callers(), self.loop)
        try:
            yield
        finally:
            stop.set()
            running.result(10)


@contextlib.contextmanager
def open_client(driver: str, service: str | None, registry: Any,
                **options: Any) -> Iterator[Client]:
    """A :class:`Client` of ``driver`` (``sync`` or ``aio``), closed at the end."""
    client: SyncClient | AioClient = (SyncClient if driver == "sync" else AioClient)(
        service, registry, **options)
    try:
        yield client
    finally:
        client.close()
