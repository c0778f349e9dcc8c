"""Server-side helpers for instances started by devcluster.

:class:`InstanceHeaderInterceptor` adds the initial-metadata header
``devcluster-instance: <name>`` to every response, so a client learns which
instance served a call for any service, not only Greeter::

    server = grpc.server(pool, interceptors=[InstanceHeaderInterceptor("server1")])
    # or, for grpc.aio:
    server = grpc.aio.server(interceptors=[AioInstanceHeaderInterceptor("server1")])
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

__all__ = [
    "INSTANCE_HEADER",
    "AioInstanceHeaderInterceptor",
    "InstanceHeaderInterceptor",
    "instance_name",
]

#: The response header naming the instance that served a call.
INSTANCE_HEADER = "devcluster-instance"


def instance_name(default: str = "") -> str:
    """The instance name devcluster gave this process (``$DEVCLUSTER_INSTANCE``)."""
    return os.environ.get("DEVCLUSTER_INSTANCE") or os.environ.get("PS") or default


def _wrap(handler: grpc.RpcMethodHandler, header: tuple[tuple[str, str], ...]) -> Any:
    """Return ``handler`` with each behaviour sending ``header`` before anything else."""

    def unary(behaviour: Callable[..., Any]) -> Callable[..., Any]:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            context.send_initial_metadata(header)
            return behaviour(request, context)

        return call

    def streaming(behaviour: Callable[..., Any]) -> Callable[..., Any]:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            context.send_initial_metadata(header)
            yield from behaviour(request, context)

        return call

    return _rebuild(handler, unary, streaming)


def _rebuild(handler: grpc.RpcMethodHandler, unary: Any, streaming: Any) -> Any:
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            unary(handler.unary_unary), handler.request_deserializer, handler.response_serializer)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            streaming(handler.unary_stream), handler.request_deserializer,
            handler.response_serializer)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            unary(handler.stream_unary), handler.request_deserializer,
            handler.response_serializer)
    return grpc.stream_stream_rpc_method_handler(
        streaming(handler.stream_stream), handler.request_deserializer,
        handler.response_serializer)


class InstanceHeaderInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]  # grpc: untyped
    """Adds ``devcluster-instance: <name>`` to the initial metadata of every response."""

    def __init__(self, name: str | None = None) -> None:
        self._header = ((INSTANCE_HEADER, name or instance_name("unknown")),)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        return None if handler is None else _wrap(handler, self._header)


def _wrap_aio(handler: grpc.RpcMethodHandler, header: tuple[tuple[str, str], ...]) -> Any:
    def unary(behaviour: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.send_initial_metadata(header)
            return await behaviour(request, context)

        return call

    def streaming(behaviour: Callable[..., Any]) -> Callable[..., Any]:
        if not inspect.isasyncgenfunction(behaviour):
            # grpc.aio also takes a coroutine that writes with `context.write()` (the
            # health service's Watch does): it must stay one, not become a generator.
            return unary(behaviour)

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.send_initial_metadata(header)
            async for item in behaviour(request, context):
                yield item

        return call

    return _rebuild(handler, unary, streaming)


class AioInstanceHeaderInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # untyped
    """The :class:`InstanceHeaderInterceptor` for ``grpc.aio`` servers."""

    def __init__(self, name: str | None = None) -> None:
        self._header = ((INSTANCE_HEADER, name or instance_name("unknown")),)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        return None if handler is None else _wrap_aio(handler, self._header)
