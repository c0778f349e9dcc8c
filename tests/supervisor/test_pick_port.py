"""Which listening port is an instance's address: the one that speaks HTTP/2 as gRPC
does, waiting (bounded) for it when a side listener opened first (issue 26 item 12).
Real listeners: a grpc.aio server, an HTTP/1 server, a socket that never answers."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc.aio
import pytest

from devcluster.supervisor.health import pick_port, speaks_h2


@asynccontextmanager
async def grpc_port() -> AsyncIterator[int]:
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(0)


@contextmanager
def http_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextmanager
def silent_port() -> Iterator[int]:
    """Listens, never accepts, never answers (the backlog takes the connection)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(4)
        yield sock.getsockname()[1]


def test_only_a_grpc_server_answers_the_http2_preface() -> None:
    async def main() -> tuple[bool, bool, bool, float]:
        async with grpc_port() as g:
            with http_port() as h, silent_port() as s:
                began = time.monotonic()
                answers = await speaks_h2(g), await speaks_h2(h), await speaks_h2(s, 0.2)
                return (*answers, time.monotonic() - began)

    grpc_says, http_says, silent_says, took = asyncio.run(main())
    assert (grpc_says, http_says, silent_says) == (True, False, False)
    assert took < 2.0


def test_a_grpc_port_opened_after_a_side_listener_is_waited_for() -> None:
    async def main() -> tuple[int, int, float]:
        with http_port() as side:
            seen = [side]
            began = time.monotonic()
            waiting = asyncio.ensure_future(pick_port([side], 0, lambda: seen, wait=5.0))
            await asyncio.sleep(0.3)
            async with grpc_port() as g:
                seen.append(g)
                picked = await waiting
                return picked, g, time.monotonic() - began

    picked, grpc_side, took = asyncio.run(main())
    assert picked == grpc_side
    assert took < 2.0, f"{took:.2f} s: found long after the port opened"


@pytest.mark.parametrize("wait", [0.0, 0.3])
def test_without_a_grpc_port_the_lowest_is_picked_within_the_wait(wait: float) -> None:
    async def main() -> tuple[int, int, float]:
        with http_port() as side:
            began = time.monotonic()
            picked = await pick_port([side], 0, lambda: [side], wait=wait)
            return picked, side, time.monotonic() - began

    picked, side, took = asyncio.run(main())
    assert picked == side
    assert wait <= took < wait + 1.0


def test_the_given_port_wins_and_a_lone_grpc_port_is_picked_at_once() -> None:
    async def main() -> tuple[int, int, int, float]:
        async with grpc_port() as g:
            with http_port() as side:
                given = await pick_port([side, g], side, lambda: [side, g], wait=5.0)
                began = time.monotonic()
                lone = await pick_port([g], 0, lambda: [g], wait=5.0)
                return given, side, lone - g, time.monotonic() - began

    given, side, lone_offset, took = asyncio.run(main())
    assert given == side and lone_offset == 0
    assert took < 0.5
    print(f"a lone gRPC port picked in {took * 1000:.1f} ms")
