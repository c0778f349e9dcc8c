"""A test-only gRPC server of ``echo.Echo`` (tests/protos/echo.proto), a service devcluster
knows nothing about: its types are compiled at start-up from the .proto (grpcio-tools).

``python tests/services/echo_server.py [--port P] [--no-reflection] [--ready-after S]``
(default port: ``$PORT``). Health: "" is SERVING at once; ``echo.Echo`` turns SERVING
``--ready-after`` seconds after start (a named service that is slow to get ready).
Sends the ``devcluster-instance`` header; stops gracefully on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "protos"))

from devcluster.server import AioInstanceHeaderInterceptor, instance_name

protos, services = grpc.protos_and_services("echo.proto")
SERVICE = "echo.Echo"


class Echo(services.EchoServicer):  # type: ignore[misc,name-defined]
    def __init__(self, name: str) -> None:
        self.name = name

    async def Say(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        reply = protos.SayReply(text=request.text * max(1, request.times), instance=self.name)
        reply.at.GetCurrentTime()
        return reply

    async def Count(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        for i in range(max(1, request.times)):
            yield protos.SayReply(text=f"{request.text}{i}", instance=self.name)


async def serve(args: argparse.Namespace) -> None:
    name = instance_name(f"echo-{args.port}")
    server = grpc.aio.server(interceptors=[AioInstanceHeaderInterceptor(name)],
                             options=[("grpc.so_reuseport", 0)])
    services.add_EchoServicer_to_server(Echo(name), server)
    checks = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    if args.reflection:
        reflection.enable_server_reflection(
            (protos.DESCRIPTOR.services_by_name["Echo"].full_name, health.SERVICE_NAME,
             reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    await server.start()
    await checks.set("", health_pb2.HealthCheckResponse.SERVING)
    await checks.set(SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
    print(f"{name} listening on 127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if not await _wait(stop, args.ready_after):
            await checks.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
            print(f"{name} ready ({SERVICE} SERVING)", flush=True)
            await stop.wait()
    finally:
        await checks.enter_graceful_shutdown()
        await server.stop(1.0)


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 0))
    parser.add_argument("--no-reflection", dest="reflection", action="store_false")
    parser.add_argument("--ready-after", type=float, default=0.0)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
