"""devcluster.server's instance-header interceptor on a real grpc.aio server: every kind of
handler keeps working, the health service's Watch (a coroutine that writes with
``context.write``, not an async generator) included; once it was broken by the wrapper
("'async for' requires an object with __aiter__ method, got coroutine")."""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from devcluster.server import INSTANCE_HEADER, AioInstanceHeaderInterceptor


def test_health_check_and_watch_through_the_interceptor() -> None:
    async def scenario() -> None:
        server = grpc.aio.server(interceptors=[AioInstanceHeaderInterceptor("api.1")])
        servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                check = stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert (await check).status == health_pb2.HealthCheckResponse.SERVING
                assert (INSTANCE_HEADER, "api.1") in list(await check.initial_metadata())
                watch = stub.Watch(health_pb2.HealthCheckRequest(), timeout=5)
                first = await watch.read()
                assert first.status == health_pb2.HealthCheckResponse.SERVING
                assert (INSTANCE_HEADER, "api.1") in list(await watch.initial_metadata())
                await servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
                assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
                watch.cancel()
        finally:
            await server.stop(None)

    asyncio.run(scenario())
