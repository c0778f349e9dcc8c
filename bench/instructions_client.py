"""The client side of ``bench.instructions``: ``WARMUP + N`` SayHello calls, then exit.

``python -m bench.instructions_client ours STATE_DIR N`` (a sync ``BalancedChannel`` on
service ``server``) or ``... native ADDR,ADDR,... N`` (one channel with grpc's
``round_robin``). Kept apart from ``bench.instructions`` so that the process an
instruction counter watches imports only what the calls need.
"""

from __future__ import annotations

import sys
from pathlib import Path
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


def main(argv: list[str] | None = None) -> int:
    side, target, calls = (sys.argv[1:] if argv is None else argv)
    request = helloworld_pb2.HelloRequest(name="bench")
    with channel(side, target) as ch:
        say = helloworld_pb2_grpc.GreeterStub(ch).SayHello
        for _ in range(WARMUP + int(calls)):
            say(request, timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
