"""The client side of ``bench.instructions``: ``WARMUP + N`` SayHello calls, then exit.

``python -m bench.instructions_client ours STATE_DIR N`` (a sync ``BalancedChannel`` on
service ``server``) or ``... native ADDR,ADDR,... N`` (one channel with grpc's
``round_robin``); ``ours_aio`` and ``native_aio`` are the same two with ``grpc.aio``
(an ``AioBalancedChannel``, a native ``grpc.aio`` channel), the calls awaited one after
the other: one in flight, so the count does not depend on how calls interleave. With
``--opcodes`` it counts instead, in-process, the Python bytecodes the calling thread
(the event loop's, for aio) executes in the ``N`` calls, per function, and prints them
as JSON. Kept apart from ``bench.instructions`` so that the process an instruction
counter watches imports only what the calls need.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import grpc

from devcluster._proto import helloworld_pb2, helloworld_pb2_grpc

WARMUP = 50  # calls before the counted ones: connections up, caches filled
ROUND_ROBIN = [("grpc.lb_policy_name", "round_robin")]


def channel(side: str, target: str) -> Any:
    """The channel of ``side`` (``ours``, ``native``, ``ours_aio``, ``native_aio``) on
    ``target``; an aio one must be made inside the running loop."""
    if side == "ours":
        from devcluster.client.channel import BalancedChannel

        return BalancedChannel("server", Path(target))
    if side == "native":
        return grpc.insecure_channel("ipv4:" + target, options=ROUND_ROBIN)
    if side == "ours_aio":
        from devcluster.client.aio import AioBalancedChannel

        return AioBalancedChannel("server", Path(target))
    if side == "native_aio":
        from grpc import aio

        return aio.insecure_channel("ipv4:" + target, options=ROUND_ROBIN)
    raise ValueError(f"unknown side {side!r}; choose ours, native, ours_aio or native_aio")


@contextmanager
def opcodes() -> Iterator[Counter[str]]:
    """Count the bytecodes the calling thread executes inside the block, per function."""
    seen: Counter[str] = Counter()

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "call":
            frame.f_trace_opcodes = True
            frame.f_trace_lines = False
        elif event == "opcode":
            code = frame.f_code
            seen[f"{Path(code.co_filename).name}:{code.co_qualname}"] += 1
        return trace

    sys.settrace(trace)
    try:
        yield seen
    finally:
        sys.settrace(None)


def run_sync(side: str, target: str, calls: int, counting: bool) -> Counter[str] | None:
    """Warm up, then ``calls`` sequential calls (counted with ``counting``)."""
    request = helloworld_pb2.HelloRequest(name="bench")
    with channel(side, target) as ch:
        say: Callable[..., Any] = helloworld_pb2_grpc.GreeterStub(ch).SayHello
        for _ in range(WARMUP + (0 if counting else calls)):
            say(request, timeout=30)
        if not counting:
            return None
        with opcodes() as seen:
            for _ in range(calls):
                say(request, timeout=30)
        return seen


async def run_aio(side: str, target: str, calls: int, counting: bool) -> Counter[str] | None:
    """The same with grpc.aio: each call awaited before the next starts."""
    request = helloworld_pb2.HelloRequest(name="bench")
    ch = channel(side, target)
    try:
        say: Callable[..., Any] = helloworld_pb2_grpc.GreeterStub(ch).SayHello
        for _ in range(WARMUP + (0 if counting else calls)):
            await say(request, timeout=30)
        if not counting:
            return None
        with opcodes() as seen:
            for _ in range(calls):
                await say(request, timeout=30)
        return seen
    finally:
        await ch.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    counting = args[:1] == ["--opcodes"]
    side, target, calls = args[counting:]
    if side.endswith("_aio"):
        seen = asyncio.run(run_aio(side, target, int(calls), counting))
    else:
        seen = run_sync(side, target, int(calls), counting)
    if seen is not None:
        print(json.dumps(seen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
