"""The client side of ``bench.instructions``: ``WARMUP + N`` SayHello calls, then exit.

``python -m bench.instructions_client ours STATE_DIR N`` (a sync ``BalancedChannel`` on
service ``server``) or ``... native ADDR,ADDR,... N`` (one channel with grpc's
``round_robin``). With ``--opcodes`` it counts instead, in-process, the Python bytecodes
the calling thread executes in the ``N`` calls, per function, and prints them as JSON.
Kept apart from ``bench.instructions`` so that the process an
instruction counter watches imports only what the calls need.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

import grpc

from devcluster._proto import helloworld_pb2, helloworld_pb2_grpc

WARMUP = 50  # calls before the counted ones: connections up, caches filled


def channel(side: str, target: str) -> Any:
    """The channel of ``side`` (``ours`` or ``native``) on ``target``."""
    if side == "ours":
        from devcluster.client.channel import BalancedChannel

        return BalancedChannel("server", Path(target))
    if side == "native":
        return grpc.insecure_channel("ipv4:" + target,
                                     options=[("grpc.lb_policy_name", "round_robin")])
    raise ValueError(f"unknown side {side!r}; choose ours or native")


def opcodes(say: Any, request: Any, calls: int) -> Counter[str]:
    """Bytecodes the calling thread executes in ``calls`` calls, per function."""
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
        for _ in range(calls):
            say(request, timeout=30)
    finally:
        sys.settrace(None)
    return seen


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    counting = args[:1] == ["--opcodes"]
    side, target, calls = args[counting:]
    request = helloworld_pb2.HelloRequest(name="bench")
    with channel(side, target) as ch:
        say = helloworld_pb2_grpc.GreeterStub(ch).SayHello
        for _ in range(WARMUP + (0 if counting else int(calls))):
            say(request, timeout=30)
        if counting:
            print(json.dumps(opcodes(say, request, int(calls))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
