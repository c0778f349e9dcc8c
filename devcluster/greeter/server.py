"""A grpc.aio Greeter: SayHello, health, reflection, instance header, graceful stop.

``python -m devcluster.greeter --port 50051 --name server1`` (defaults: ``$PORT`` and
``$DEVCLUSTER_INSTANCE``). On SIGINT/SIGTERM it reports NOT_SERVING, waits (briefly)
for its clients to move to other instances, stops accepting calls, lets in-flight calls
finish within ``--grace`` seconds, and exits 0. With
``DEVCLUSTER_REUSEPORT=1`` (devcluster sets it) it hands its port over to its
replacement during ``devcluster reload`` without failing a call (devcluster.handoff).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import cast

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from devcluster import handoff
from devcluster._proto import helloworld_pb2, helloworld_pb2_grpc
from devcluster.exiting import exit_now
from devcluster.server import AioInstanceHeaderInterceptor, instance_name

#: Request metadata a caller may send to make one call slow (tests of graceful stop).
DELAY_HEADER = "devcluster-delay-ms"


class Greeter(helloworld_pb2_grpc.GreeterServicer):
    """Replies ``Hello <name> from <instance>`` and logs each call."""

    def __init__(self, instance: str, delay: float = 0.0) -> None:
        self.instance = instance
        self.delay = delay

    async def SayHello(
        self, request: helloworld_pb2.HelloRequest, context: grpc.aio.ServicerContext
    ) -> helloworld_pb2.HelloReply:
        print(f"Received: {request.name}", flush=True)
        delay = self.delay
        for key, value in context.invocation_metadata() or ():
            if key == DELAY_HEADER:
                delay = max(delay, float(value) / 1000)
        if delay:
            await asyncio.sleep(delay)
        return helloworld_pb2.HelloReply(message=f"Hello {request.name} from {self.instance}")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    env_port = os.environ.get("PORT")
    parser = argparse.ArgumentParser(prog="python -m devcluster.greeter", description=__doc__)
    parser.add_argument("--port", type=int, default=int(env_port) if env_port else None,
                        help="port to listen on (default: $PORT)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--name", default=instance_name(),
                        help="instance name in replies (default: $DEVCLUSTER_INSTANCE)")
    # Finish in-flight calls a little before devcluster's own SIGKILL deadline.
    grace = 0.8 * float(os.environ.get("DEVCLUSTER_GRACE") or 6.25)
    parser.add_argument("--grace", type=float, default=grace,
                        help="seconds in-flight calls get to finish on SIGINT/SIGTERM "
                             "(default: 0.8 x $DEVCLUSTER_GRACE, else 5)")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait in each call")
    args = parser.parse_args(argv)
    if args.port is None:
        parser.error("no port: pass --port P or set $PORT")
    if not args.name:
        args.name = f"greeter-{args.port}"
    return args


async def serve(args: argparse.Namespace, exit_when_stopped: bool = False) -> int:
    """Serve until SIGINT/SIGTERM, then stop gracefully.

    ``exit_when_stopped`` (the command line): once the graceful stop returned, the
    process exits at once (``os._exit`` after flushing), skipping the interpreter's
    teardown of grpc and asyncio (20-40 ms): a reload waits for the old process to be
    gone before it replaces the next instance, and a stop's caller waits for its exit."""
    server = grpc.aio.server(interceptors=[AioInstanceHeaderInterceptor(args.name)],
                             options=handoff.server_options())
    # The generated registration is untyped: called through its known signature.
    register = cast(Callable[[Greeter, grpc.aio.Server], None],
                    helloworld_pb2_grpc.add_GreeterServicer_to_server)
    register(Greeter(args.name, args.delay), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (helloworld_pb2.DESCRIPTOR.services_by_name["Greeter"].full_name,
         health.SERVICE_NAME, reflection.SERVICE_NAME),
        server,
    )
    address = f"{args.host}:{args.port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as e:
        print(f"greeter: cannot listen on {address} ({e}); is the port in use?", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # grpc's HealthServicer says SERVING for "" from the start: not before we are ready.
    await health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    # A replacement during `devcluster reload` steers new connections to itself *before*
    # it says SERVING: the supervisor then switches the registry and stops the old
    # process, and a connection the kernel still gave the old listener would be reset.
    handoff.take_over(bound)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("helloworld.Greeter", health_pb2.HealthCheckResponse.SERVING)
    print(f"{args.name} listening on {args.host}:{bound}", flush=True)
    try:
        await stop.wait()
    finally:
        print(f"{args.name} stopping (grace {args.grace:g}s)", flush=True)
        await health_servicer.enter_graceful_shutdown()
        await handoff.hand_over(server.stop, bound, args.grace)
        print(f"{args.name} stopped", flush=True)
    if exit_when_stopped:
        exit_now(0)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m devcluster.greeter``."""
    return asyncio.run(serve(_parse(argv), exit_when_stopped=True))
