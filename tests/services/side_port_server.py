"""A gRPC greeter that opens an HTTP side listener (metrics, admin) first, and its gRPC
port later, on a port of its own choosing (it ignores ``$PORT``), as a server that
starts a Prometheus exporter before its gRPC server does.

``python tests/services/side_port_server.py [--grpc-after S]``. It prints
``side listening on P`` for the HTTP port, then ``grpc listening on P``; it stops on
SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from devcluster._proto import helloworld_pb2_grpc
from devcluster.greeter.server import Greeter


class _Metrics(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"requests_total 0\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


async def serve(grpc_after: float) -> None:
    side = ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    threading.Thread(target=side.serve_forever, daemon=True).start()
    print(f"side listening on {side.server_address[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await asyncio.sleep(grpc_after)  # the gRPC server comes up after the side listener
    server = grpc.aio.server()
    helloworld_pb2_grpc.add_GreeterServicer_to_server(
        Greeter(os.environ.get("DEVCLUSTER_INSTANCE", "side")), server)
    checks = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    port = server.add_insecure_port("127.0.0.1:0")  # not $PORT: found by the scan
    await server.start()
    await checks.set("", health_pb2.HealthCheckResponse.SERVING)
    print(f"grpc listening on {port}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop(0.5)
        side.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--grpc-after", type=float, default=0.5)
    asyncio.run(serve(parser.parse_args().grpc_after))


if __name__ == "__main__":
    main()
