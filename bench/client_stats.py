"""What publishing client statistics costs a client (goal: under 1% of its throughput).

``python -m bench.client_stats [--seconds 4] [--rounds 4]`` starts three greeters,
registers them in a throw-away registry, and measures the same BalancedChannel with
``on_call=None`` (off) and with a :class:`~devcluster.client.stats.StatsPublisher`'s
``on_call`` (on), in alternating rounds (ABBA), sequentially and with grpc.aio at 64
calls in flight. calls/s on a 2-core machine shared with other work moves by a few
percent from round to round, so the figure to trust is the direct one: the CPU of one
``on_call`` (timed alone, a million calls) against the CPU of one balanced call.
Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.client_throughput import REQUEST, Result, greeters, run_aio, run_sync
from devcluster._proto import helloworld_pb2_grpc
from devcluster.client import CallInfo
from devcluster.client.aio import AioBalancedChannel
from devcluster.client.channel import BalancedChannel
from devcluster.client.stats import StatsPublisher
from devcluster.registry.file import FileRegistry
from devcluster.registry.record import Record, State

#: off: no on_call; noop: an on_call that does nothing (what the channel pays to build a
#: CallInfo per call, whoever listens); on: the publisher's on_call.
SIDES = ("off", "noop", "on")


def _noop(info: CallInfo) -> None:
    return None


def on_call_cost_ns(state_dir: Path, n: int = 1_000_000) -> float:
    """CPU nanoseconds of one ``StatsPublisher.on_call`` (its timer thread running)."""
    infos = [CallInfo(i, f"server{i % 3 + 1}", "127.0.0.1:1", True, "OK", 0.5)
             for i in range(300)]
    with StatsPublisher(state_dir) as stats:
        record = stats.on_call
        start = time.process_time()
        for i in range(n):
            record(infos[i % 300])
        return (time.process_time() - start) / n * 1e9


def sync_rounds(state_dir: Path, seconds: float, rounds: int) -> dict[str, list[Result]]:
    out: dict[str, list[Result]] = {k: [] for k in SIDES}
    stats = StatsPublisher(state_dir)
    channels = {"off": BalancedChannel("server", state_dir),
                "noop": BalancedChannel("server", state_dir, on_call=_noop),
                "on": BalancedChannel("server", state_dir, on_call=stats.on_call)}
    try:
        calls = {k: functools.partial(helloworld_pb2_grpc.GreeterStub(ch).SayHello, REQUEST,
                                      timeout=5) for k, ch in channels.items()}
        for i in range(rounds):
            for key in SIDES if i % 2 == 0 else SIDES[::-1]:
                result = Result()
                run_sync(calls[key], seconds, result)
                out[key].append(result)
    finally:
        for ch in channels.values():
            ch.close()
        stats.close()
    return out


def aio_rounds(state_dir: Path, seconds: float, rounds: int) -> dict[str, list[Result]]:
    out: dict[str, list[Result]] = {k: [] for k in SIDES}

    async def go() -> None:
        stats = StatsPublisher(state_dir)
        channels = {"off": AioBalancedChannel("server", state_dir),
                    "noop": AioBalancedChannel("server", state_dir, on_call=_noop),
                    "on": AioBalancedChannel("server", state_dir, on_call=stats.on_call)}
        try:
            calls = {k: functools.partial(helloworld_pb2_grpc.GreeterStub(ch).SayHello,
                                          REQUEST, timeout=5) for k, ch in channels.items()}
            for i in range(rounds):
                for key in SIDES if i % 2 == 0 else SIDES[::-1]:
                    result = Result()
                    await run_aio(calls[key], seconds, result)
                    out[key].append(result)
        finally:
            for ch in channels.values():
                await ch.close()
            stats.close()

    asyncio.run(go())
    return out


def summarise(mode: str, rounds: dict[str, list[Result]]) -> list[str]:
    rate = {k: statistics.median(r.rate for r in rs) for k, rs in rounds.items()}
    cpu = {k: statistics.median(r.cpu_us for r in rs) for k, rs in rounds.items()}
    return [f"{mode}: calls/s off {rate['off']:,.0f}, noop on_call {rate['noop']:,.0f}, "
            f"publisher {rate['on']:,.0f} (publisher vs noop "
            f"{(rate['on'] / rate['noop'] - 1) * 100:+.2f}%); CPU us/call off {cpu['off']:.1f}, "
            f"noop {cpu['noop']:.1f}, publisher {cpu['on']:.1f} (publisher vs noop "
            f"{(cpu['on'] / cpu['noop'] - 1) * 100:+.2f}%)"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.client_stats",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per side and round")
    parser.add_argument("--rounds", type=int, default=4, help="ABBA rounds (default 4)")
    args = parser.parse_args(argv)
    with greeters() as started, tempfile.TemporaryDirectory(prefix="devcluster-bench-") as tmp:
        state_dir = Path(tmp) / ".devcluster"
        FileRegistry(state_dir).reset(
            Record(name, "server", address, state=State.SERVING, pid=pid, started_at=t)
            for name, address, pid, t in started)
        cost = on_call_cost_ns(state_dir)
        lines = summarise("sequential", sync_rounds(state_dir, args.seconds, args.rounds))
        aio = aio_rounds(state_dir, args.seconds, args.rounds)
        lines += summarise("grpc.aio x64", aio)
        per_call_us = statistics.median(r.cpu_us for r in aio["off"])
    print(f"on_call alone: {cost:.0f} ns CPU per call")
    for line in lines:
        print(line)
    print(f"direct estimate: {cost / 1000:.2f} us of {per_call_us:.0f} us CPU per call "
          f"(aio, the cheapest calls) = {cost / 10 / per_call_us:.2f}% of throughput "
          f"(goal < 1%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
