"""The ADS server: any gRPC client with a bootstrap file follows the registry over xDS.

``envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources``,
state of the world, on grpc.aio on a loopback TCP port. The decisions are in
devcluster.xds.cache (the snapshot cache and the per-stream protocol) and
devcluster.xds.resources (what a registry snapshot means in xDS); this module only moves
them to and from the wire, and feeds the cache from a registry.

The supervisor, which already watches the registry, calls :meth:`XdsServer.update` with
every snapshot (from any thread); a standalone process uses :func:`serve`, which watches
any :class:`~devcluster.registry.base.Registry` (file or etcd) itself::

    async with serve(open_registry(".devcluster")) as xds:    # doctest: +SKIP
        write_bootstrap("bootstrap.json", xds.port)
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from devcluster.registry.base import Registry
from devcluster.registry.inotify import WatchStop
from devcluster.registry.record import Snapshot
from devcluster.xds.cache import Changes, Nack, Request, Response, SnapshotCache, Stream
from devcluster.xds.resources import TYPE_URLS, Options, build

log = logging.getLogger(__name__)


def _request(message: Any) -> Request:
    error = message.error_detail.message if message.HasField("error_detail") else None
    return Request(type_url=message.type_url, names=frozenset(message.resource_names),
                   version_info=message.version_info, response_nonce=message.response_nonce,
                   error=error)


def _response(response: Response) -> Any:
    return discovery_pb2.DiscoveryResponse(
        version_info=response.version_info, nonce=response.nonce, type_url=response.type_url,
        resources=response.resources)


class XdsServer:
    """An ADS server serving the resources of the last registry snapshot it was given.

    >>> xds = XdsServer()                                   # doctest: +SKIP
    >>> port = await xds.start()                            # doctest: +SKIP
    >>> xds.update(registry.snapshot())                     # doctest: +SKIP
    """

    def __init__(self, options: Options | None = None) -> None:
        self._options = options or Options()
        self._cache = SnapshotCache()
        self._snapshot: Snapshot | None = None
        self._streams: dict[Stream, asyncio.Queue[Response | None]] = {}
        self._nacks: set[Nack] = set()
        self._server: grpc.aio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._following = True
        self.port = 0

    def __repr__(self) -> str:
        where = f"127.0.0.1:{self.port}" if self.port else "not started"
        return f"<XdsServer {where} streams={len(self._streams)} versions={self.versions()}>"

    @property
    def cache(self) -> SnapshotCache:
        return self._cache

    @property
    def options(self) -> Options:
        return self._options

    def lagging(self, revision: int | None) -> tuple[int, int]:
        """(connected streams, streams that have not yet applied registry ``revision``).

        A stream has applied it once this server serves a snapshot of that revision or
        later and the stream has answered (ACKed, or NACKed: it will not change its mind)
        every response sent to it since: what a stopping instance waits for
        (devcluster.supervisor.drain). None: an unknown revision, every stream. Call it on
        the server's loop."""
        streams = list(self._streams)  # one step: a moment's view from another thread too
        if revision is None or self._snapshot is None or self._snapshot.revision < revision:
            return len(streams), len(streams)
        return len(streams), sum(1 for stream in streams if stream.waiting())

    def versions(self) -> dict[str, str]:
        """The current version of every resource type (short type names)."""
        return {url.rsplit(".", 1)[-1]: self._cache.version(url) for url in TYPE_URLS}

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (0: a free port); return the port."""
        self._loop = asyncio.get_running_loop()
        server = grpc.aio.server()
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(_Ads(self), server)
        self.port = server.add_insecure_port(f"{host}:{port}")
        if not self.port:
            raise OSError(f"xDS server cannot listen on {host}:{port}")
        await server.start()
        self._server = server
        log.info("xDS server listening on %s:%d", host, self.port)
        return self.port

    async def stop(self, grace: float | None = 0.5) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    def update(self, snapshot: Snapshot) -> None:
        """Serve ``snapshot`` from now on (unless :meth:`stop_following` was called). Safe
        to call from any thread."""
        self._call(self._apply, snapshot, None)

    def stop_following(self) -> None:
        """Keep serving the snapshot of now: later :meth:`update` s are ignored."""
        self._following = False

    def set_options(self, options: Options) -> None:
        """Rebuild with new ``options`` (a fault set or cleared). Safe from any thread."""
        self._call(self._apply, None, options)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None or _running_loop() is loop:
            fn(*args)
        else:
            loop.call_soon_threadsafe(fn, *args)

    def _apply(self, snapshot: Snapshot | None, options: Options | None) -> None:
        # On the loop (or before it runs): each argument replaces its own current value
        # only, so an update and a set_options from two threads never undo each other.
        if snapshot is not None:
            if not self._following:
                return
            self._snapshot = snapshot
        if options is not None:
            self._options = options
        if self._snapshot is None:
            return
        changes = self._cache.set(build(self._snapshot, self._options))
        if changes:
            log.debug("registry revision %d: versions %s", self._snapshot.revision, self.versions())
            self._push(changes)

    def _push(self, changes: Changes) -> None:
        for stream, queue in self._streams.items():
            for response in stream.on_change(changes):
                queue.put_nowait(response)

    def _nacked(self, nack: Nack, node: str) -> None:
        if nack not in self._nacks:  # once per (type, version, error), however many clients
            self._nacks.add(nack)
            log.warning("xDS client %s rejected %s version %s: %s", node or "?",
                        nack.type_url.rsplit(".", 1)[-1], nack.version, nack.error)

    async def stream(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """One ADS stream: requests in, responses out, until the client goes."""
        stream = Stream(self._cache)
        queue: asyncio.Queue[Response | None] = asyncio.Queue()
        self._streams[stream] = queue

        async def read() -> None:
            node = ""
            try:
                async for message in requests:
                    if message.HasField("node"):
                        node = message.node.id
                    response, nack = stream.on_request(_request(message))
                    if nack is not None:
                        self._nacked(nack, node)
                    if response is not None:
                        queue.put_nowait(response)
            finally:
                queue.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await queue.get()) is not None:
                yield _response(item)
        finally:
            del self._streams[stream]
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await reader


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _Ads(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(self, server: XdsServer) -> None:
        self._server = server

    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        # grpc.aio wants an async generator function here, not one returning a generator.
        async for response in self._server.stream(request_iterator):
            yield response


def _watch(registry: Registry, server: XdsServer, stop: threading.Event) -> None:
    try:
        for snapshot in registry.watch(stop):
            server.update(snapshot)
    except Exception:  # the server keeps serving the last snapshot; say why it froze
        log.exception("xDS server stopped following %r", registry)


@contextlib.asynccontextmanager
async def serve(registry: Registry, host: str = "127.0.0.1", port: int = 0,
                options: Options | None = None,
                until: asyncio.Event | None = None) -> AsyncIterator[XdsServer]:
    """An :class:`XdsServer` on ``host:port`` that follows ``registry`` until exit, or
    until ``until`` is set (a supervisor's whole-cluster shutdown: its clients have
    nowhere left to go, and rebuilding the resources at each of its writes cost it CPU
    while its instances were stopping).

    The registry is watched in a thread of its own (``Registry.watch`` blocks), so it
    works with every backend; the first snapshot is served before this yields.
    """
    server = XdsServer(options)
    server.update(registry.snapshot())
    await server.start(host, port)
    stop = WatchStop()
    watcher = threading.Thread(target=_watch, args=(registry, server, stop),
                               name="xds-registry-watch", daemon=True)
    watcher.start()
    def unfollow(_: object) -> None:
        server.stop_following()
        stop.set()

    ending = asyncio.ensure_future(until.wait()) if until is not None else None
    if ending is not None:
        ending.add_done_callback(unfollow)
    try:
        yield server
    finally:
        if ending is not None:
            ending.cancel()
        stop.set()
        # ADS streams never end by themselves: a grace period would only be waited out.
        await server.stop(0)
        await asyncio.to_thread(watcher.join, 5.0)


@dataclass
class Running:
    """An xDS server running in a thread of its own (see :func:`serve_in_thread`)."""

    server: XdsServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return self.server.port


@contextlib.contextmanager
def serve_in_thread(registry: Registry, host: str = "127.0.0.1", port: int = 0,
                    options: Options | None = None) -> Iterator[Running]:
    """:func:`serve` on an event loop in a background thread, for synchronous callers."""
    started = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        try:
            async with serve(registry, host, port, options) as server:
                box["server"], box["done"] = server, asyncio.Event()
                box["loop"] = asyncio.get_running_loop()
                started.set()
                await box["done"].wait()
        except BaseException as e:
            box["error"] = e
            raise
        finally:
            started.set()

    thread = threading.Thread(target=asyncio.run, args=(main(),), name="xds-server", daemon=True)
    thread.start()
    started.wait()
    if "server" not in box:
        thread.join()
        raise RuntimeError(f"xDS server did not start: {box.get('error')!r}") from box.get("error")
    try:
        yield Running(box["server"], thread)
    finally:
        box["loop"].call_soon_threadsafe(box["done"].set)
        thread.join(10)
